"""The Python client against a real bridge: an answer lost on the way back (the bridge
stored the review, the agent never heard) is retried with the same Idempotency-Key, so
the agent gets its review and the reviewer sees one ticket, not two."""

from __future__ import annotations

import asyncio
import socket
import threading
from urllib.parse import urlsplit

import pytest

from bridge.client import AsyncBridgeClient, BridgeClient
from harness import KEYS, Bridge


class AnswerDroppingProxy:
    """A loopback TCP proxy in front of the bridge. On its first ``drop`` connections the
    request goes through and the bridge answers, but the proxy closes the agent's side
    instead of passing the answer on (a lost answer, after the bridge committed)."""

    def __init__(self, target: str, *, drop: int):
        parts = urlsplit(target)
        self.target = (parts.hostname, parts.port)
        self.drop, self.connections, self.dropped = drop, 0, 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                agent, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            dropping = self.dropped < self.drop
            self.dropped += dropping
            threading.Thread(target=self._serve, args=(agent, dropping), daemon=True).start()

    def _serve(self, agent: socket.socket, dropping: bool) -> None:
        bridge = socket.create_connection(self.target)
        threading.Thread(target=_pump, args=(agent, bridge), daemon=True).start()
        if dropping:
            bridge.recv(65536)  # the bridge's answer has begun: it has stored the review
            _hang_up(agent, bridge)
            return
        _pump(bridge, agent)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        _hang_up(source, sink)


def _hang_up(*sides: socket.socket) -> None:
    """Shut down, not just close: a pump blocked in ``recv`` on the socket wakes, and the
    peer sees the connection end. Either side may be gone already."""
    for side in sides:
        try:
            side.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        side.close()


@pytest.fixture
def bridge(tmp_path):
    b = Bridge(tmp_path).start()
    yield b
    b.stop()


def _reviews_titled(bridge: Bridge, title: str) -> list[dict]:
    with bridge.client() as client:
        page = client.get("/v1/reviews", params={"limit": 200}).json()
    return [r for r in page["items"] if r["title"] == title]


def test_a_lost_answer_is_retried_with_the_same_key_and_makes_one_review_and_one_ticket(bridge):
    proxy = AnswerDroppingProxy(bridge.url, drop=1)
    try:
        with BridgeClient(proxy.url, KEYS["agent"]) as client:
            review = client.submit(bridge.review_body(title="Refund after a lost answer"))
    finally:
        proxy.close()
    assert (proxy.dropped, proxy.connections) == (1, 2)  # the answer was lost once, then asked again
    assert [r["id"] for r in _reviews_titled(bridge, "Refund after a lost answer")] == [review.id]
    bridge.wait_ticket(review.id)
    assert len([t for t in bridge.tickets() if review.id in str(t["fields"].get("labels"))]) == 1


def test_the_async_client_retries_a_lost_answer_the_same_way(bridge):
    proxy = AnswerDroppingProxy(bridge.url, drop=2)

    async def submit():
        async with AsyncBridgeClient(proxy.url, KEYS["agent"]) as client:
            return await client.submit(bridge.review_body(title="Async refund after lost answers"))

    try:
        review = asyncio.run(submit())
    finally:
        proxy.close()
    assert (proxy.dropped, proxy.connections) == (2, 3)
    assert [r["id"] for r in _reviews_titled(bridge, "Async refund after lost answers")] == [review.id]


def test_without_retries_a_lost_answer_is_an_error_not_a_second_review(bridge):
    proxy = AnswerDroppingProxy(bridge.url, drop=1)
    try:
        with BridgeClient(proxy.url, KEYS["agent"], submit_attempts=1) as client:
            with pytest.raises(Exception) as raised:
                client.submit(bridge.review_body(title="Refund, one attempt"))
    finally:
        proxy.close()
    assert getattr(raised.value, "code", None) == "unreachable"
    assert len(_reviews_titled(bridge, "Refund, one attempt")) == 1  # stored once; the agent was told it failed
