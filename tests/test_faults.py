"""Upstream faults: a circuit breaker per connection, and the dead-letter list with
``hitl-bridge jobs list|retry|discard``, audited."""

from __future__ import annotations

import json
import time

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
