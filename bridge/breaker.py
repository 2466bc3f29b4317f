"""A circuit breaker per connection, so one broken ticket system does not slow the others.

After ``threshold`` consecutive ``RetryableError``s from one connection its circuit opens
for ``cooldown`` seconds: the worker reschedules that connection's jobs without calling it
(and without spending their attempts), while jobs for other connections run as usual.
When the cool-down ends one job is let through as a trial: success closes the circuit,
another failure opens it again. State is per worker process; each process learns alone.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from connectors.errors import RateLimitedError


class CircuitOpenError(RateLimitedError):
    """Raised instead of calling a connection whose circuit is open."""


@dataclass
class _Circuit:
    failures: int = 0
    open_until: float = 0.0
    trial: bool = False  # a half-open trial call is in flight


class CircuitBreakers:
    def __init__(self, *, threshold: int, cooldown_seconds: float, clock=time.monotonic):
        self.threshold, self.cooldown, self.clock = threshold, cooldown_seconds, clock
        self._circuits: dict[str, _Circuit] = {}
        self._lock = threading.Lock()

    def check(self, connection: str) -> None:
        """Raise ``CircuitOpenError`` (with the seconds left) unless a call may go ahead."""
        with self._lock:
            circuit = self._circuits.get(connection)
            if circuit is None or circuit.failures < self.threshold:
                return
            left = circuit.open_until - self.clock()
            if left <= 0 and not circuit.trial:
                circuit.trial = True
                return
            raise CircuitOpenError(
                f"circuit open after {circuit.failures} consecutive failures",
                retry_after=max(left, 0.5),
                operation=f"connection {connection}",
            )

    def hold(self, connection: str, seconds: float) -> None:
        """The system asked us to wait (429 with Retry-After): pause every job for it that
        long, without counting a failure; then one trial call, as after a cool-down."""
        with self._lock:
            circuit = self._circuits.setdefault(connection, _Circuit())
            circuit.failures = max(circuit.failures, self.threshold)
            circuit.open_until = max(circuit.open_until, self.clock() + seconds)
            circuit.trial = False

    def succeeded(self, connection: str) -> None:
        with self._lock:
            self._circuits.pop(connection, None)

    def failed(self, connection: str) -> bool:
        """Count a retryable failure; True when this one opened the circuit."""
        with self._lock:
            circuit = self._circuits.setdefault(connection, _Circuit())
            circuit.failures += 1
            circuit.trial = False
            if circuit.failures >= self.threshold:
                circuit.open_until = self.clock() + self.cooldown
                return True
            return False

    def state(self, connection: str) -> str:
        with self._lock:
            circuit = self._circuits.get(connection)
            if circuit is None or circuit.failures < self.threshold:
                return "closed"
            return "half_open" if circuit.trial or circuit.open_until <= self.clock() else "open"
