"""Running the bridge: the API (with or without its worker) and the worker alone."""

from __future__ import annotations

import signal
import threading
from typing import Annotated, Optional

import typer

from .common import ConfigOpt, open_runtime, read_settings

app = typer.Typer()


@app.command()
def serve(
    config: ConfigOpt = None,
    sandbox: Annotated[bool, typer.Option("--sandbox", help="No credentials: emulators, SQLite, a reviewer page.")] = False,
    host: str = "127.0.0.1",
    port: int = 8080,
    database: Annotated[Optional[str], typer.Option(help="Sandbox database file or URL.")] = None,
    worker: Annotated[bool, typer.Option(help="Run the worker in this process.")] = True,
) -> None:
    """Run the API (and, by default, the worker)."""
    import uvicorn

    from .. import logs
    from ..app import create_app

    info = None
    if sandbox:
        from .. import sandbox as sandbox_mod

        settings, info = sandbox_mod.build(host=host, port=port, database=database)
    else:
        settings = read_settings(config)
    settings = settings.model_copy(update={"run_worker": worker and settings.run_worker})
    logs.configure(settings.log_level)
    runtime = open_runtime(settings)
    application = create_app(settings, runtime=runtime)
    application.state.sandbox = info
    if info is not None:
        keys = info.api_keys
        typer.echo(
            f"\nhitl-bridge sandbox on http://{host}:{port}\n"
            f"  reviewer page : http://{host}:{port}/sandbox/ui\n"
            f"  sandbox facts : http://{host}:{port}/sandbox\n"
            f"  agent API key : {keys['agent']}\n"
            f"  admin API key : {keys['admin']}\n\n"
            "Submit a first review:\n"
            f"  curl -s -X POST http://{host}:{port}/v1/reviews -H 'Authorization: Bearer {keys['agent']}' "
            "-H 'Content-Type: application/json' -d '{\"title\": \"Refund $750 to order A-100\", "
            "\"action_requests\": [{\"name\": \"issue_refund\", \"args\": {\"order_id\": \"A-100\", \"amount\": 750}}], "
            "\"confidence\": 0.62, \"metadata\": {\"queue\": \"jira\"}}'\n",
            err=True,
        )
    try:
        uvicorn.run(application, host=host, port=port, log_config=None, access_log=False)
    finally:
        runtime.close()
        if info is not None:
            info.stop()


@app.command("worker")
def run_worker(config: ConfigOpt = None) -> None:
    """Run the worker alone (scale out next to API-only instances)."""
    from .. import logs, versions
    from ..migrate import upgrade
    from ..worker import Worker

    settings = read_settings(config)
    logs.configure(settings.log_level)
    if settings.auto_migrate:
        upgrade(settings.database_url)
    runtime = open_runtime(settings)
    stop_checkpoints = runtime.db.checkpoint_in_background()
    follower = versions.Follower(runtime, settings.mappings_follow_seconds).start()  # it routes LangSmith runs
    worker = Worker(runtime)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    worker.start()
    watcher = None
    if settings.langgraph:
        from ..watcher import InterruptWatcher

        watcher = InterruptWatcher(runtime)
        watcher.start()
    stop.wait()
    if watcher is not None:
        watcher.stop()
    worker.stop()
    follower.stop()
    stop_checkpoints()
    runtime.close()
