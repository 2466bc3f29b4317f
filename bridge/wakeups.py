"""Wake-ups for the worker across processes: PostgreSQL's LISTEN/NOTIFY.

A new pending job's INSERT sends a NOTIFY from a trigger (migration 0005), and
``outbox.notify`` sends one for jobs made due again, in the transaction that writes them,
so it is delivered when (and only if) that transaction commits. Each worker process
LISTENs on a dedicated connection and sets the runtime's wake-up event, so a job written
by any instance is picked up within milliseconds. Polling stays as the fallback: while
the listening connection is down (database restart, network), the worker still finds
every job within its poll interval, and a reconnect wakes it once to catch up.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy.engine import make_url

from .db import is_postgres, normalize_url

log = logging.getLogger("bridge.wakeups")
CHANNEL = "hitl_bridge_jobs"


def conninfo(url: str) -> str:
    """The libpq form of a SQLAlchemy URL (psycopg itself takes ``postgresql://``)."""
    return make_url(normalize_url(url)).set(drivername="postgresql").render_as_string(hide_password=False)


class Listener:
    """One thread and one connection per process; calls ``wake()`` for each notification."""

    def __init__(self, url: str, wake: Callable[[], None], *, retry_seconds: float = 1.0,
                 listening: threading.Event | None = None):
        self.url, self.wake, self.retry_seconds = url, wake, retry_seconds
        self.listening = listening or threading.Event()  # set while notifications arrive
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def supported(url: str) -> bool:
        return is_postgres(url)

    def start(self) -> "Listener":
        self._thread = threading.Thread(target=self._run, name="job-listener", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def _run(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(conninfo(self.url), autocommit=True, connect_timeout=10) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    self.wake()  # catch up on whatever was written while we were not listening
                    while not self._stop.is_set():
                        for _ in connection.notifies(timeout=1.0, stop_after=1):
                            self.wake()
            except Exception as exc:  # fall back to polling until the database is back
                log.warning("wakeups.disconnected", extra={"error": f"{type(exc).__name__}: {exc}"[:300]})
            finally:
                self.listening.clear()
            self._stop.wait(self.retry_seconds)
