"""Upstream faults: a circuit breaker per connection, and the dead-letter list with
``hitl-bridge jobs list|retry|discard``, audited."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from bridge.breaker import CircuitBreakers, CircuitOpenError
from bridge.cli import app as cli
from bridge.db import Database
from bridge.models import AuditEvent, Job
from connectors.emulators.base import Fault
from harness import Bridge
from helpers import wait_for

ROUTES = """
routes:
  - {name: jira-queue, when: "metadata.queue == 'jira'", mapping: jira_review}
  - {name: servicenow-queue, when: "metadata.queue == 'servicenow'", mapping: servicenow_review}
"""


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_and_lets_one_trial_through():
    clock = Clock()
    breakers = CircuitBreakers(threshold=3, cooldown_seconds=10, clock=clock)
    breakers.failed("jira")
    breakers.failed("jira")
    breakers.succeeded("jira")  # not consecutive: starts again
    for _ in range(3):
        breakers.check("jira")
        breakers.failed("jira")
    assert breakers.state("jira") == "open"
    with pytest.raises(CircuitOpenError) as raised:
        breakers.check("jira")
    assert 9 <= raised.value.retry_after <= 10
    breakers.check("servicenow")  # other connections are not affected
    clock.now += 10
    breakers.check("jira")  # the trial
    with pytest.raises(CircuitOpenError):
        breakers.check("jira")  # only one at a time
    breakers.failed("jira")
    assert breakers.state("jira") == "open"
    clock.now += 10
    breakers.check("jira")
    breakers.succeeded("jira")
    assert breakers.state("jira") == "closed"
    breakers.check("jira")


@pytest.fixture
def two_systems(tmp_path):
    bridge = Bridge(tmp_path, vendors=("jira", "servicenow"), routes=ROUTES,
                    worker={"breaker_threshold": 3, "breaker_cooldown_seconds": 3}).start()
    yield bridge
    bridge.stop()


def test_a_broken_connection_opens_its_circuit_and_does_not_hold_up_the_others(two_systems):
    bridge = two_systems
    jira = bridge.emulators["jira"].emulator
    jira.settings.faults = [Fault(status=503, times=1000)]
    fault = jira.settings.faults[0]
    stuck = [bridge.submit(metadata={"queue": "jira"}) for _ in range(4)]
    wait_for(lambda: 1000 - fault.times >= 3, what="three failures from Jira")
    other = bridge.submit(metadata={"queue": "servicenow"})
    opened = bridge.wait_ticket(other["id"])  # ServiceNow is not held up
    assert opened["ticket"]["connection"] == "servicenow"
    time.sleep(1.0)
    # Open circuit: Jira saw the failing calls that opened it (threads already in flight
    # included) and none since; the held jobs kept their attempts.
    assert 1000 - fault.times <= 3 + bridge.worker_settings.concurrency
    db = Database(bridge.database_url)
    with db.transaction() as session:
        attempts = [j.attempts for j in session.execute(select(Job).where(Job.kind == "create_ticket")).scalars()
                    if j.review_id != other["id"]]
    db.dispose()
    assert sum(attempts) <= 3 + bridge.worker_settings.concurrency
    # Jira recovers: after the cool-down a trial call closes the circuit and all go through.
    jira.settings.faults = []
    for review in stuck:
        assert bridge.wait_ticket(review["id"])["status"] == "open"
    for review in stuck:
        assert len([t for t in jira.list_tickets() if f"hitl-{review['id']}" in (t["fields"].get("labels") or [])]) == 1


def test_a_first_attempt_creates_the_ticket_without_searching_and_a_retry_finds_it(tmp_path):
    """Jira's search down (it also lags behind new issues on Jira Cloud) does not hold up new
    tickets: only an attempt that may have made the ticket already looks for it. Then the
    first attempt stores the issue but never hears back; the retry finds it: one ticket."""
    bridge = fault_bridge(tmp_path, ("jira",), timeout_seconds=1.0)
    try:
        jira = bridge.emulators["jira"].emulator
        jira.settings.faults = [Fault(status=500, times=1000, path_prefix="/rest/api/2/search")]
        first = bridge.submit(metadata={"queue": "jira"})
        assert bridge.wait_ticket(first["id"])["status"] == "open"
        assert jira.settings.faults[0].times == 1000  # never searched

        jira.settings.faults = [Fault(late_ms=3000, method="POST", path_prefix="/rest/api/2/issue", times=1)]
        lost = bridge.submit(metadata={"queue": "jira"})
        opened = bridge.wait_ticket(lost["id"])
        tickets = [t for t in jira.list_tickets() if f"hitl-{lost['id']}" in (t["fields"].get("labels") or [])]
        assert [t["key"] for t in tickets] == [opened["ticket"]["key"]]
        assert "ticket.created" in bridge.audit_kinds(lost["id"])
    finally:
        bridge.stop()


def test_an_agent_that_asks_to_wait_until_a_date_is_called_back_then(tmp_path):
    """Retry-After may be an HTTP-date (RFC 9110) as well as seconds: the retry waits for it,
    not for the harness's 0.2 s backoff."""
    bridge = Bridge(tmp_path).start()
    try:
        review = bridge.submit()
        key = bridge.wait_ticket(review["id"])["ticket"]["key"]
        bridge.callbacks.status = 429
        later = datetime.now(timezone.utc) + timedelta(seconds=4)
        bridge.callbacks.headers = {"Retry-After": format_datetime(later, usegmt=True)}
        bridge.act("jira", key, "approve")
        wait_for(lambda: bridge.callbacks_for(review["id"]), what="the first callback")
        bridge.callbacks.status, bridge.callbacks.headers = 200, {}
        bridge.wait_review(review["id"], lambda r: r["delivery"]["state"] == "delivered", what="the retried callback")
        first, second = bridge.callbacks_for(review["id"])[:2]
        assert second.at - first.at > 2.5
        assert bridge.review(review["id"])["delivery"]["attempts"] == 2
    finally:
        bridge.stop()


def test_dead_jobs_are_listed_retried_and_discarded_from_the_command_line(tmp_path):
    bridge = Bridge(tmp_path).start()
    try:
        bridge.callbacks.status = 410  # the agent says Gone: permanent, dead at once
        reviews = [bridge.submit() for _ in range(2)]
        for review in reviews:
            key = bridge.wait_ticket(review["id"])["ticket"]["key"]
            bridge.act("jira", key, "approve")
        for review in reviews:
            bridge.wait_review(review["id"], lambda r: r["delivery"]["state"] == "dead", what="a dead delivery")
        config = str(bridge.config_file())
        runner = CliRunner()
        listed = runner.invoke(cli, ["jobs", "list", "--json", "--config", config])
        assert listed.exit_code == 0, listed.output
        dead = [json.loads(line) for line in listed.stdout.splitlines()]
        assert {row["review_id"] for row in dead} == {r["id"] for r in reviews}
        assert all(row["kind"] == "deliver_decision" and "410" in row["last_error"] for row in dead)
        by_review = {row["review_id"]: row["id"] for row in dead}

        bridge.callbacks.status = 200
        retried = runner.invoke(cli, ["jobs", "retry", str(by_review[reviews[0]["id"]]), "--config", config])
        assert retried.exit_code == 0, retried.output
        bridge.wait_review(reviews[0]["id"], lambda r: r["delivery"]["state"] == "delivered", what="delivery after retry")
        discarded = runner.invoke(cli, ["jobs", "discard", "--all", "--config", config])
        assert discarded.exit_code == 0 and "discarded: 1" in discarded.output
        again = runner.invoke(cli, ["jobs", "retry", str(by_review[reviews[1]["id"]]), "--config", config])
        assert again.exit_code == 1  # no longer in the dead-letter list
        assert runner.invoke(cli, ["jobs", "list", "--json", "--config", config]).stdout.strip() == ""
        assert len(bridge.callbacks_for(reviews[1]["id"])) == 1  # discarded: not delivered again

        db = Database(bridge.database_url)
        with db.transaction() as session:
            kinds = [(e.kind, e.review_id, e.actor) for e in session.execute(select(AuditEvent)).scalars()]
        db.dispose()
        assert ("job.retried", reviews[0]["id"]) in [(k, r) for k, r, _ in kinds]
        assert ("job.discarded", reviews[1]["id"]) in [(k, r) for k, r, _ in kinds]
        assert all(actor.startswith("cli") for k, _, actor in kinds if k.startswith("job.") and k != "job.dead")
        verified = runner.invoke(cli, ["audit", "verify", "--config", config])
        assert verified.exit_code == 0, verified.output
    finally:
        bridge.stop()


def test_a_rate_limit_pauses_the_connection_without_counting_a_failure():
    clock = Clock()
    breakers = CircuitBreakers(threshold=3, cooldown_seconds=30, clock=clock)
    breakers.hold("jira", 2)
    with pytest.raises(CircuitOpenError) as raised:
        breakers.check("jira")
    assert raised.value.retry_after <= 2  # the vendor's Retry-After, not the 30 s cool-down
    clock.now += 2
    breakers.check("jira")  # one trial after the pause
    breakers.succeeded("jira")
    assert breakers.state("jira") == "closed"


# ----- timeouts, refused connections, slow responses -----------------------------------
# End to end through an in-process bridge; the emulators' switches make the faults:
# ``Fault(hang_ms=...)`` holds a request past the connection's timeout without serving it,
# ``Fault(late_ms=...)`` serves it (the ticket is stored) and holds the answer past it,
# ``refuse_connections()`` takes the system off its port, ``latency_ms`` slows every call.

# The first POST under these paths after a review is submitted is its ticket's creation.
CREATE_PATHS = {
    "jira": "/rest/api/2/issue",
    "servicenow": "/api/now/",
    "zendesk": "/api/v2/tickets.json",
    "salesforce": "/services/data/",
}
DELIVERED = "reached the agent"  # the bridge's comment on the ticket once the agent has the decision


def fault_bridge(tmp_path, vendors: tuple[str, ...], *, timeout_seconds: float = 1.0) -> Bridge:
    """A bridge whose connections give up on a call after ``timeout_seconds``."""
    routes = "routes:\n" + "".join(
        f"  - {{name: {v}-queue, when: \"metadata.queue == '{v}'\", mapping: {v}_review}}\n" for v in vendors)
    bridge = Bridge(tmp_path, vendors=vendors, routes=routes,
                    worker={"breaker_threshold": 3, "breaker_cooldown_seconds": 2})
    for name, conn in bridge.settings.connections.items():
        bridge.settings.connections[name] = conn.model_copy(update={"timeout_seconds": timeout_seconds})
    return bridge.start()


def titled(bridge: Bridge, vendor: str, title: str) -> list[dict]:
    return [t for t in bridge.tickets(vendor) if title in (t["title"] or "")]


def jobs_of(bridge: Bridge, review_id: str, kind: str | None = None) -> list[Job]:
    db = Database(bridge.database_url)
    try:
        with db.transaction() as session:
            query = select(Job).where(Job.review_id == review_id)
            return list(session.execute(query.where(Job.kind == kind) if kind else query).scalars())
    finally:
        db.dispose()


def cli_jobs(bridge: Bridge, state: str) -> list[dict]:
    listed = CliRunner().invoke(cli, ["jobs", "list", "--state", state, "--json", "--config", str(bridge.config_file())])
    assert listed.exit_code == 0, listed.output
    return [json.loads(line) for line in listed.stdout.splitlines()]


def metric(bridge: Bridge, name: str, **labels: str) -> float:
    """A sample's value on the bridge's /metrics (0 when it has none)."""
    from prometheus_client.parser import text_string_to_metric_families

    with bridge.client() as client:
        text = client.get("/metrics").text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_a_create_that_times_out_stays_queued_is_retried_and_makes_one_ticket_once_the_fault_clears(tmp_path):
    bridge = fault_bridge(tmp_path, ("jira",))
    try:
        jira = bridge.emulators["jira"].emulator
        # Jira holds each create past the bridge's 1 s timeout, then gives up (504): nothing stored.
        jira.settings.faults = [Fault(status=504, hang_ms=1500, times=1000, method="POST", path_prefix=CREATE_PATHS["jira"])]
        fault = jira.settings.faults[0]
        review = bridge.submit(title="Refund order T-1")
        failed = wait_for(lambda: [j for j in jobs_of(bridge, review["id"], "create_ticket")
                                   if j.attempts >= 2 and "ReadTimeout" in (j.last_error or "")],
                          timeout=20, what="a create job that timed out and was tried again")
        assert failed[0].state in ("pending", "running")
        assert bridge.review(review["id"])["status"] == "queued"
        assert bridge.review(review["id"])["ticket"] is None
        assert titled(bridge, "jira", "Refund order T-1") == []
        assert metric(bridge, "hitl_job_retries_total", kind="create_ticket") >= 1

        jira.settings.faults = []
        tried = 1000 - fault.times
        opened = bridge.wait_ticket(review["id"])
        assert opened["status"] == "open"
        tickets = titled(bridge, "jira", "Refund order T-1")
        assert [t["key"] for t in tickets] == [opened["ticket"]["key"]]
        assert jobs_of(bridge, review["id"], "create_ticket")[0].attempts >= tried + 1
        assert cli_jobs(bridge, "dead") == []
    finally:
        bridge.stop()


@pytest.mark.parametrize("vendor", ["jira", "servicenow", "zendesk", "salesforce"])
def test_a_create_whose_answer_comes_after_the_timeout_makes_one_ticket(tmp_path, vendor):
    """The system stores the ticket but answers after the bridge gave up: the retry finds
    the ticket by its review id instead of creating a second one."""
    bridge = fault_bridge(tmp_path, (vendor,))
    try:
        emulator = bridge.emulators[vendor].emulator
        emulator.settings.faults = [Fault(late_ms=2500, method="POST", path_prefix=CREATE_PATHS[vendor])]
        title = f"Refund order L-1 via {vendor}"
        review = bridge.submit(title=title, metadata={"queue": vendor})
        opened = bridge.wait_review(review["id"], lambda r: r["ticket"] is not None, timeout=30, what="the ticket")
        assert emulator.settings.faults[0].times == 0  # the late answer did happen
        assert opened["status"] == "open"
        tickets = titled(bridge, vendor, title)
        assert len(tickets) == 1, [t["key"] for t in tickets]
        assert tickets[0]["key"] == opened["ticket"]["key"]
        assert jobs_of(bridge, review["id"], "create_ticket")[0].attempts >= 2  # the first attempt timed out

        bridge.act(vendor, opened["ticket"]["key"], "approve")
        assert bridge.verified_callback(review["id"])["status"] == "approved"
        assert len(titled(bridge, vendor, title)) == 1
    finally:
        bridge.stop()


def test_refused_connections_open_the_circuit_while_other_systems_flow_and_nothing_is_lost(tmp_path):
    bridge = fault_bridge(tmp_path, ("jira", "servicenow"))
    try:
        jira = bridge.emulators["jira"]
        jira.refuse_connections()  # Jira is down: nothing listens on its port
        stuck = [bridge.submit(title=f"Refund order R-{n}", metadata={"queue": "jira"}) for n in range(4)]
        held = wait_for(lambda: [row for row in cli_jobs(bridge, "pending") if "circuit open" in (row["last_error"] or "")],
                        timeout=20, what="jobs held by Jira's open circuit")
        assert {row["review_id"] for row in held} <= {r["id"] for r in stuck}
        unreachable = [j for r in stuck for j in jobs_of(bridge, r["id"]) if "unreachable" in (j.last_error or "")]
        assert unreachable or held  # some attempt saw the refusal before the circuit held the rest

        # ServiceNow is not held up: a review for it is decided and delivered meanwhile.
        other = bridge.submit(title="Refund order S-1", metadata={"queue": "servicenow"})
        key = bridge.wait_ticket(other["id"])["ticket"]["key"]
        bridge.act("servicenow", key, "approve")
        assert bridge.verified_callback(other["id"])["status"] == "approved"
        assert {bridge.review(r["id"])["status"] for r in stuck} == {"queued"}

        jira.accept_connections()  # back on the same URL: everything drains
        for n, review in enumerate(stuck):
            opened = bridge.wait_ticket(review["id"])
            assert [t["key"] for t in titled(bridge, "jira", f"Refund order R-{n}")] == [opened["ticket"]["key"]]
            bridge.act("jira", opened["ticket"]["key"], "approve")
        for review in stuck:
            assert bridge.verified_callback(review["id"])["status"] == "approved"
            assert {hit.headers["webhook-id"] for hit in bridge.callbacks_for(review["id"])} == {f"msg_{review['id']}"}
        assert cli_jobs(bridge, "dead") == []
        assert len(titled(bridge, "jira", "Refund order R-")) == len(stuck)
    finally:
        bridge.stop()


def test_slow_responses_below_the_timeout_complete_without_a_single_retry(tmp_path):
    bridge = fault_bridge(tmp_path, ("jira",), timeout_seconds=3.0)
    try:
        jira = bridge.emulators["jira"].emulator
        jira.settings.latency_ms = 250  # every call to Jira is slow, none past the timeout
        origin = next(t for t in bridge.tickets() if t["display"].startswith("SUP"))
        draft = "Hi Carol, your refund for order A-100 is on its way."
        reviews = [bridge.submit(title=f"Refund order W-{n}") for n in range(2)]
        reviews.append(bridge.submit(title="Reply to Carol", action_requests=[{"name": "reply", "args": {"body": draft}}],
                                     origin={"connection": "jira", "ticket_id": origin["key"]}))
        keys = [bridge.wait_ticket(r["id"])["ticket"]["key"] for r in reviews]
        for key in keys:
            bridge.act("jira", key, "approve")
        for review, key in zip(reviews, keys):
            bridge.wait_review(review["id"], lambda r: r["delivery"]["state"] == "delivered", timeout=30, what="delivery")
            bridge.wait_comment("jira", key, DELIVERED)
        bridge.wait_review(reviews[-1]["id"], lambda r: r["postback"]["state"] == "delivered", timeout=30, what="post-back")

        assert metric(bridge, "hitl_job_retries_total") == 0
        assert all(job.attempts == 1 for r in reviews for job in jobs_of(bridge, r["id"]))
        for n in range(2):
            assert len(titled(bridge, "jira", f"Refund order W-{n}")) == 1
        for key in keys:
            comments = bridge.comments("jira", key)
            assert len(comments) == len(set(comments)), comments  # no comment posted twice
        assert bridge.comments("jira", origin["key"]).count(draft) == 1
        assert all(len(bridge.callbacks_for(r["id"])) == 1 for r in reviews)
    finally:
        bridge.stop()
