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


class PortTaken(Exception):
    """The process could not bind its port: another server took it after it was picked."""


class Proc:
    """One bridge process; ``start()`` again after ``kill()`` reuses its port."""

    def __init__(self, config: Path | None, log: Path, *, kind: str = "serve", worker: bool = True,
                 port: int | None = None, options: tuple[str, ...] = ()):
        """``config`` None with ``options=("--sandbox", ...)``: the sandbox."""
        self.config, self.log, self.kind, self.worker, self.options = config, log, kind, worker, options
        self.port = port or (free_port() if kind == "serve" else None)
        self.process: subprocess.Popen | None = None
        self._ready_once = False  # until then, a port taken in the meantime is swapped for another
        self._log_from = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, wait: bool = True) -> "Proc":
        self._log_from = self.log.stat().st_size if self.log.exists() else 0
        command = [sys.executable, "-m", "bridge.cli", self.kind, *self.options]
        if self.config is not None:
            command += ["--config", str(self.config)]
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
        if self.kind != "serve":
            return
        for _ in range(5):
            try:
                wait_for(lambda: self._alive() and _ready(self.url) and _listens(self.process.pid, self.port),
                         timeout=timeout, what=f"{self.log.name} to become ready")
            except PortTaken:  # picked free, then taken by another test's server before the child bound it
                self.port = free_port()
                self.start(wait=False)
                continue
            self._ready_once = True
            return
        raise AssertionError(f"{self.log.name}: five ports taken in a row")

    def _alive(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            with open(self.log, "rb") as handle:
                handle.seek(self._log_from)
                tail = handle.read().decode(errors="replace")
            if not self._ready_once and "address already in use" in tail:
                raise PortTaken(self.port)
            raise AssertionError(f"{self.log.name} exited with {self.process.returncode} before it was ready:\n{tail[-2000:]}")
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


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds the socket listening on ``port`` (Linux's /proc): the
    bridge answering is this one, not another test's bridge that took the port after it
    was picked (this one then exits with "address already in use" and gets another)."""
    if not Path("/proc/net/tcp").exists():
        return True
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                listening.add(f"socket:[{fields[9]}]")
    try:
        return any(os.readlink(fd) in listening for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # it exited, or closed a descriptor while we looked
        return False


def _ready(url: str) -> bool:
    """Ready, and really a bridge: not another test's server that took the port, such as a
    ``helpers.Recorder``, which answers 200 to anything (then a submission got its
    ``{"ok": true}``: the ``KeyError: 'id'`` seen twice in CI in test_crash)."""
    try:
        response = httpx2.get(f"{url}/readyz", timeout=2)
        return response.status_code == 200 and "checks" in response.json()
    except (httpx2.HTTPError, ValueError):
        return False
