"""A bridge process killed (SIGKILL) mid-work and restarted on the same database loses
nothing and creates no second ticket."""

from __future__ import annotations

import pytest

from harness import Bridge
from helpers import wait_for


@pytest.fixture
def bridge(tmp_path):
    b = Bridge(tmp_path)
    yield b
    b.stop()


def hitl_tickets(bridge: Bridge, review_id: str) -> list[dict]:
    return [t for t in bridge.tickets() if f"hitl-{review_id}" in (t["fields"].get("labels") or [])]


def test_kill_between_upstream_create_and_commit_makes_one_ticket(bridge):
    bridge.start_process()
    jira = bridge.emulators["jira"].emulator
    # Jira stores the issue, then holds its answer: the bridge dies before it hears back.
    jira.settings.write_delay_ms = 5000
    review = bridge.submit()
    wait_for(lambda: hitl_tickets(bridge, review["id"]), what="the emulator to store the issue")
    bridge.kill()
    jira.settings.write_delay_ms = 0

    bridge.start_process()
    opened = bridge.wait_ticket(review["id"])
    assert opened["status"] == "open"
    tickets = hitl_tickets(bridge, review["id"])
    assert len(tickets) == 1
    assert opened["ticket"]["key"] == tickets[0]["key"]

    bridge.act("jira", tickets[0]["key"], "approve")
    bridge.wait_status(review["id"], "approved")
    wait_for(lambda: bridge.callbacks_for(review["id"]), what="callback after restart")


def test_kill_while_the_agent_is_down_delivers_after_restart(bridge):
    bridge.start_process()
    bridge.callbacks.status = 503  # the agent is down
    review = bridge.submit()
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    bridge.act("jira", key, "approve")
    bridge.wait_review(review["id"], lambda r: r["delivery"]["attempts"] >= 1 and r["delivery"]["state"] == "pending",
                       what="a failed delivery attempt")
    bridge.kill()
    bridge.callbacks.status = 200
    bridge.start_process()
    delivered = bridge.wait_review(review["id"], lambda r: r["delivery"]["state"] == "delivered", timeout=30, what="delivery")
    assert delivered["delivery"]["attempts"] >= 2
    ids = {hit.headers["webhook-id"] for hit in bridge.callbacks_for(review["id"])}
    assert ids == {f"msg_{review['id']}"}


# ----- more kill points, and SIGTERM ----------------------------------------------------
# These run the bridge as ``hitl-bridge serve`` through procs.Proc, which restarts it on
# the same port: webhooks an emulator is still retrying reach the new process.

import json  # noqa: E402
import time  # noqa: E402

from sqlalchemy import select  # noqa: E402

from bridge.db import Database  # noqa: E402
from bridge.models import Job, Review  # noqa: E402
from procs import Proc  # noqa: E402


def configure_worker(bridge: Bridge, **changes) -> None:
    bridge.worker_settings = bridge.worker_settings.model_copy(update=changes)
    bridge.settings = bridge.settings.model_copy(update={"worker": bridge.worker_settings})


def serve(bridge: Bridge) -> Proc:
    proc = Proc(bridge.config_file(), bridge.tmp_path / "bridge.log").start()
    bridge._wire(proc.url)
    return proc


def assert_delivered_once_per_id(bridge: Bridge, review_id: str) -> list:
    hits = bridge.callbacks_for(review_id)
    assert hits, "the decision never reached the agent"
    assert {hit.headers["webhook-id"] for hit in hits} == {f"msg_{review_id}"}
    assert len({json.loads(hit.body)["status"] for hit in hits}) == 1
    return hits


def test_kill_during_the_callback_delivers_again_with_the_same_webhook_id(bridge):
    proc = serve(bridge)
    try:
        review = bridge.submit()
        key = bridge.wait_ticket(review["id"])["ticket"]["key"]
        bridge.callbacks.delay = 8  # the agent has the request but has not answered yet
        bridge.act("jira", key, "approve")
        wait_for(lambda: bridge.callbacks_for(review["id"]), what="the callback to reach the agent")
        proc.kill()
        bridge.callbacks.delay = 0
        proc.start()
        delivered = bridge.wait_review(review["id"], lambda r: r["delivery"]["state"] == "delivered", timeout=30, what="delivery")
        assert delivered["status"] == "approved"
        assert len(assert_delivered_once_per_id(bridge, review["id"])) >= 2
        assert len(hitl_tickets(bridge, review["id"])) == 1
    finally:
        proc.kill()


def test_kill_during_the_post_back_posts_the_reply_exactly_once(bridge):
    origin = next(t for t in bridge.tickets() if t["display"].startswith("SUP"))
    draft = "Hi Carol, we have refunded your order A-100. Sorry for the trouble!"
    proc = serve(bridge)
    jira = bridge.emulators["jira"].emulator
    try:
        review = bridge.submit(action_requests=[{"name": "reply", "args": {"body": draft}}],
                               origin={"connection": "jira", "ticket_id": origin["key"]})
        key = bridge.wait_ticket(review["id"])["ticket"]["key"]
        jira.settings.write_delay_ms = 8_000  # Jira stores the reply, then holds its answer
        bridge.act("jira", key, "approve")
        wait_for(lambda: draft in [c["body"] for c in bridge.ticket("jira", origin["key"])["comments"]],
                 timeout=15, what="the reply to be stored on the origin ticket")
        proc.kill()
        jira.settings.write_delay_ms = 0
        proc.start()
        posted = bridge.wait_review(review["id"], lambda r: r["postback"]["state"] == "delivered", timeout=30, what="post-back")
        assert posted["postback"]["attempts"] >= 2
        bridge.wait_review(review["id"], lambda r: r["delivery"]["state"] == "delivered", timeout=30, what="delivery")
        assert [c["body"] for c in bridge.ticket("jira", origin["key"])["comments"]].count(draft) == 1
        assert_delivered_once_per_id(bridge, review["id"])
        assert len(hitl_tickets(bridge, review["id"])) == 1
    finally:
        proc.kill()


@pytest.mark.parametrize("kill_after", [0.0, 0.02, 0.1])
def test_kill_during_a_webhook_loses_no_decision(bridge, kill_after):
    """Killed while the reviewer's webhook is in flight or being handled: either the
    emulator retries it (not acknowledged) or the read-back job it wrote survives."""
    jira = bridge.emulators["jira"].emulator
    jira.settings.webhook_attempts = 60
    proc = serve(bridge)
    try:
        review = bridge.submit()
        key = bridge.wait_ticket(review["id"])["ticket"]["key"]
        bridge.act("jira", key, "approve")
        time.sleep(kill_after)
        proc.kill()
        proc.start()
        decided = bridge.wait_review(review["id"], lambda r: r["delivery"]["state"] == "delivered", timeout=60,
                                     what="the decision, delivered")
        assert decided["status"] == "approved"
        assert_delivered_once_per_id(bridge, review["id"])
        assert len(hitl_tickets(bridge, review["id"])) == 1
    finally:
        proc.kill()


def test_sigterm_finishes_the_job_in_hand(bridge):
    proc = serve(bridge)
    jira = bridge.emulators["jira"].emulator
    jira.settings.write_delay_ms = 1500
    review = bridge.submit()
    wait_for(lambda: hitl_tickets(bridge, review["id"]), what="the emulator to store the issue")
    started = time.monotonic()
    assert proc.terminate(timeout=30) in (0, -15)  # uvicorn re-raises SIGTERM after its graceful shutdown
    assert time.monotonic() - started < 10
    db = Database(bridge.database_url)
    with db.transaction() as session:
        row = session.get(Review, review["id"])
        assert row.status == "open" and row.ticket_key == hitl_tickets(bridge, review["id"])[0]["key"]
    db.dispose()


def test_sigterm_releases_a_job_it_cannot_finish_for_another_worker_at_once(bridge):
    configure_worker(bridge, lease_seconds=600, shutdown_grace_seconds=0.5)
    proc = serve(bridge)
    jira = bridge.emulators["jira"].emulator
    jira.settings.write_delay_ms = 8_000  # far past the grace
    review = bridge.submit()
    wait_for(lambda: hitl_tickets(bridge, review["id"]), what="the emulator to store the issue")
    started = time.monotonic()
    assert proc.terminate(timeout=30) in (0, -15)  # uvicorn re-raises SIGTERM after its graceful shutdown
    assert time.monotonic() - started < 10
    db = Database(bridge.database_url)
    with db.transaction() as session:
        job = session.execute(select(Job).where(Job.review_id == review["id"], Job.kind == "create_ticket")).scalar_one()
        assert (job.state, job.locked_until, job.attempts) == ("pending", None, 0)
    db.dispose()
    jira.settings.write_delay_ms = 0
    proc.start()
    started = time.monotonic()
    opened = bridge.wait_ticket(review["id"])  # long before the 600 s lease would have run out
    assert time.monotonic() - started < 15
    assert [t["key"] for t in hitl_tickets(bridge, review["id"])] == [opened["ticket"]["key"]]
    proc.kill()


def test_killing_the_worker_process_mid_callback_and_mid_post_back_loses_and_repeats_nothing(bridge):
    """API and worker as separate processes (``serve --no-worker`` + ``hitl-bridge worker``):
    the worker is killed while the agent holds the callback and while Jira holds its answer
    to the stored reply; the API keeps serving, and a new worker finishes both."""
    origin = next(t for t in bridge.tickets() if t["display"].startswith("SUP"))
    draft = "Hi Dana, the replacement for order A-100 ships today."
    config = bridge.config_file()
    worker = Proc(config, bridge.tmp_path / "worker.log", kind="worker").start(wait=False)
    api = Proc(config, bridge.tmp_path / "api.log", worker=False).start()  # both at once: they migrate in turn
    bridge._wire(api.url)
    jira = bridge.emulators["jira"].emulator
    try:
        review = bridge.submit(action_requests=[{"name": "reply", "args": {"body": draft}}],
                               origin={"connection": "jira", "ticket_id": origin["key"]})
        key = bridge.wait_ticket(review["id"])["ticket"]["key"]
        bridge.callbacks.delay = 8  # the agent has the callback but does not answer
        jira.settings.write_delay_ms = 8_000  # Jira stores the reply, then holds its answer
        bridge.act("jira", key, "approve")
        wait_for(lambda: bridge.callbacks_for(review["id"]), timeout=15, what="the callback to reach the agent")
        wait_for(lambda: draft in bridge.comments("jira", origin["key"]), timeout=15,
                 what="the reply to be stored on the origin ticket")
        worker.kill()
        bridge.callbacks.delay = 0
        jira.settings.write_delay_ms = 0

        during = bridge.review(review["id"])  # the API answers with no worker running
        assert during["status"] == "approved"
        assert during["delivery"]["state"] == "pending" and during["postback"]["state"] == "pending"

        worker.start()
        done = bridge.wait_review(review["id"], lambda r: r["delivery"]["state"] == "delivered"
                                  and r["postback"]["state"] == "delivered", timeout=30, what="delivery and post-back")
        assert done["status"] == "approved"
        assert len(assert_delivered_once_per_id(bridge, review["id"])) >= 2  # delivered again, same webhook-id
        assert bridge.comments("jira", origin["key"]).count(draft) == 1
        assert len(hitl_tickets(bridge, review["id"])) == 1
    finally:
        worker.kill()
        api.kill()
