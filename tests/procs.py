"""Bridge processes for multi-process and crash tests: ``hitl-bridge serve`` (API, with or
without its worker) and ``hitl-bridge worker``, all on one config file and database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx2

from connectors.emulators.base import free_socket
from helpers import wait_for

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    return port


class Proc:
    """One bridge process; ``start()`` again after ``kill()`` reuses its port."""

    def __init__(self, config: Path, log: Path, *, kind: str = "serve", worker: bool = True, port: int | None = None):
        self.config, self.log, self.kind, self.worker = config, log, kind, worker
        self.port = port or (free_port() if kind == "serve" else None)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, wait: bool = True) -> "Proc":
        command = [sys.executable, "-m", "bridge.cli", self.kind, "--config", str(self.config)]
        if self.kind == "serve":
            command += ["--port", str(self.port)] + ([] if self.worker else ["--no-worker"])
        self.process = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"),
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        """Until the process answers ready; fails at once, with its log's end, if it exits
        (for example when another test's server took its port: then whatever answers on
        the port must not be taken for it)."""
        if self.kind == "serve":
            wait_for(lambda: self._alive() and _ready(self.url), timeout=timeout, what=f"{self.log.name} to become ready")

    def _alive(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise AssertionError(f"{self.log.name} exited with {self.process.returncode} before it was ready:\n{tail}")
        return True

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def terminate(self, timeout: float = 30) -> int | None:
        if self.process is None:
            return None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        self.process = None
        return code


def _ready(url: str) -> bool:
    try:
        return httpx2.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx2.HTTPError:
        return False
