"""The API's routers, and how their use cases that write are run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi.concurrency import run_in_threadpool

from ..db import Database, WriterBusy

T = TypeVar("T")


async def run_write(db: Database, use_case: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``use_case(*args, **kwargs)``, which writes, right here on the event loop when it can
    write without waiting for anyone (``Database.writing_now``: SQLite, its writer free), else
    in the thread pool. A short SQLite write costs less CPU than the hop to a thread and back
    (intake at one request at a time: 0.56-0.66 x the bare insert with the hop, 0.73-0.75
    without, bench/README.md); anything that may wait, on a lock or the network, waits in a
    thread, never on the loop. ``use_case`` writes in one transaction: when another process
    holds SQLite's lock, that transaction fails before writing anything and the whole use
    case runs again in the pool."""
    with db.writing_now() as now:
        if now:
            try:
                return use_case(*args, **kwargs)
            except WriterBusy:
                pass  # another process holds SQLite's lock; nothing was written: wait in a thread
    return await run_in_threadpool(use_case, *args, **kwargs)
