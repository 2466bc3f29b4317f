"""A real LangGraph server (``langgraph dev`` from langgraph-cli[inmem]) serving
tests/langgraph_app, and helpers to drive its agent and read what its tools did."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
from langgraph_sdk import get_sync_client

from connectors.emulators.base import free_socket
from helpers import wait_for

APP = Path(__file__).resolve().parent / "langgraph_app"
LANGGRAPH = Path(sys.executable).with_name("langgraph")


@dataclass
class LangGraphServer:
    url: str
    process: subprocess.Popen
    tool_log: Path
    log: Path

    @property
    def client(self):
        return get_sync_client(url=self.url, api_key=None)

    def tool_runs(self, marker: str) -> list[dict[str, Any]]:
        """What the tools ran with, for calls whose arguments mention ``marker``."""
        if not self.tool_log.exists():
            return []
        return [r for line in self.tool_log.read_text().splitlines() if marker in line for r in [json.loads(line)]]

    def assistant(self, graph: str = "agent") -> str:
        """A fresh assistant, so a test's bridge watches only its own threads."""
        return self.client.assistants.create(graph_id=graph, name=f"{graph}-{uuid.uuid4().hex[:8]}")["assistant_id"]

    def start_run(self, assistant_id: str, tool_calls: list[dict[str, Any]], *, metadata: dict | None = None) -> str:
        """A new thread whose agent asks for ``tool_calls``; returns once the thread paused."""
        client = self.client
        thread = client.threads.create(metadata=metadata or {})
        script = json.dumps({"tool_calls": tool_calls})
        client.runs.wait(thread["thread_id"], assistant_id, input={"messages": [{"role": "user", "content": script}]})
        return thread["thread_id"]

    def thread(self, thread_id: str) -> dict[str, Any]:
        return self.client.threads.get(thread_id)

    def wait_done(self, thread_id: str, *, timeout: float = 20) -> dict[str, Any]:
        """Wait until the thread ran to its end; returns its values."""
        def done():
            thread = self.thread(thread_id)
            return thread["status"] == "idle" and not thread.get("interrupts") and thread
        return wait_for(done, timeout=timeout, what=f"thread {thread_id} to finish")["values"]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)


def start_langgraph(tmp: Path, *, timeout: float = 60) -> LangGraphServer:
    """``langgraph dev`` on a free port, from a copy of the app (it writes state beside it).
    Raises with the server's log if it does not come up."""
    app = tmp / "langgraph_app"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__", ".langgraph_api"))
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    log = tmp / "langgraph.log"
    tool_log = tmp / "tool_runs.jsonl"
    env = {**os.environ, "HITL_TEST_TOOL_LOG": str(tool_log), "LANGSMITH_TRACING": "false", "LANGCHAIN_TRACING_V2": "false",
           "PYTHONUNBUFFERED": "1"}
    for name in ("LANGSMITH_API_KEY", "LANGCHAIN_API_KEY", "LANGGRAPH_API_KEY"):
        env.pop(name, None)
    process = subprocess.Popen(
        [str(LANGGRAPH), "dev", "--no-browser", "--no-reload", "--port", str(port), "--host", "127.0.0.1"],
        cwd=app, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    server = LangGraphServer(url=f"http://127.0.0.1:{port}", process=process, tool_log=tool_log, log=log)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise AssertionError(f"langgraph dev exited with {process.returncode}:\n{log.read_text()[-6000:]}")
        try:
            if httpx2.get(f"{server.url}/ok", timeout=2).status_code == 200:
                return server
        except httpx2.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise AssertionError(f"langgraph dev did not answer on {server.url} within {timeout}s:\n{log.read_text()[-6000:]}")
        time.sleep(0.2)


def ai_texts(values: dict[str, Any]) -> list[str]:
    return [m["content"] for m in values.get("messages", []) if m.get("type") == "ai" and m.get("content")]


def tool_messages(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in values.get("messages", []) if m.get("type") == "tool"]
