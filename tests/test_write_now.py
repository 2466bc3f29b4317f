"""On SQLite the API's event loop writes submissions and webhook acks itself when the write
lock is free (``Database.writing_now``). It must never wait for that lock: while another
writer holds it, the write waits in a thread, and the API keeps answering everyone else."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx2
import pytest

from bridge.db import Database
from harness import Bridge, TestDatabase
from helpers import wait_for

pytestmark = pytest.mark.skipif(TestDatabase.postgres_configured(), reason="the event loop writes itself on SQLite only")
HOLD_SECONDS = 2.0


@pytest.fixture
def bridge(tmp_path):
    b = Bridge(tmp_path).start()
    yield b
    b.stop()


@contextmanager
def another_process_writing(bridge: Bridge) -> Iterator[None]:
    """SQLite's write lock held by a connection of its own, as a CLI command or a worker
    process of its own would hold it (the bridge's in-process lock knows nothing of it)."""
    connection = sqlite3.connect(bridge.database_url.removeprefix("sqlite:///"), isolation_level=None)
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        connection.execute("ROLLBACK")
        connection.close()


@contextmanager
def a_worker_thread_writing(bridge: Bridge) -> Iterator[None]:
    """A write transaction of this process (as the worker's are) open for the block."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        db = Database(bridge.database_url)
        try:
            with db.transaction():
                held.set()
                release.wait(30)
        finally:
            db.dispose()

    thread = threading.Thread(target=hold)
    thread.start()
    assert held.wait(10)
    try:
        yield
    finally:
        release.set()
        thread.join(10)


def in_background(call) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(call()))
    thread.start()
    return thread, result


def assert_api_answers_while_held(bridge: Bridge, still_waiting) -> None:
    """Other requests are answered at once while the write waits for the lock."""
    deadline = time.monotonic() + HOLD_SECONDS / 2
    answered = 0
    with httpx2.Client(base_url=bridge.url, timeout=HOLD_SECONDS / 2) as client:
        while time.monotonic() < deadline:
            assert client.get("/healthz").status_code == 200  # a stalled loop times out here
            answered += 1
    assert answered > 1
    assert still_waiting(), "the write did not wait for the lock: the test proves nothing"


@pytest.mark.parametrize("holder", [another_process_writing, a_worker_thread_writing])
def test_a_submission_waits_for_the_write_lock_without_stalling_the_api(bridge, holder):
    with holder(bridge):
        writing, result = in_background(bridge.submit)
        time.sleep(0.2)  # the submission is in and waiting
        assert_api_answers_while_held(bridge, writing.is_alive)
    writing.join(30)
    review = result[0]
    assert review["status"] == "queued"
    assert bridge.wait_ticket(review["id"])["status"] == "open"


def test_a_webhook_waits_for_the_write_lock_without_stalling_the_api(bridge):
    review = bridge.submit()
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    deliveries = bridge.emulators["jira"].emulator.webhooks.deliveries
    with another_process_writing(bridge):
        bridge.act("jira", key, "approve")
        delivery = wait_for(lambda: deliveries and deliveries[-1], what="the emulator sending the webhook")
        time.sleep(0.2)  # the webhook is in and waiting
        assert_api_answers_while_held(bridge, lambda: delivery.status is None)
    assert bridge.wait_status(review["id"], "approved")["decision"]["reviewer"]["email"] == "alice@example.com"
    assert delivery.status == 202
