"""A connection's ``rate_limit_per_second`` paces the worker's calls under the vendor's API
limit: a backlog of tickets drains at that rate, with no 429 and no retried job."""

from __future__ import annotations

import re

import httpx2

from harness import Bridge


def test_a_backlog_drains_under_the_vendors_rate_limit_without_a_single_429(tmp_path):
    bridge = Bridge(tmp_path)
    jira = bridge.emulators["jira"].emulator
    jira.settings.rate_limit_per_second = 8
    jira.settings.rate_limit_burst = 8
    paced = bridge.settings.connections["jira"].model_copy(update={"rate_limit_per_second": 6})
    bridge.settings = bridge.settings.model_copy(update={"connections": {"jira": paced}})
    bridge.start()
    try:
        submitted = [bridge.submit(title=f"Refund #{n}") for n in range(8)]
        for review in submitted:
            assert bridge.wait_ticket(review["id"])["status"] == "open"
        metrics = httpx2.get(f"{bridge.url}/metrics").text
        retried = [line for line in metrics.splitlines() if re.match(r"hitl_job_retries_total\{.*\} [1-9]", line)]
        assert not retried, f"jobs were retried (the vendor answered 429): {retried}"
        labelled = [t for t in jira.list_tickets() if any(l.startswith("hitl-rev_") for l in t["fields"].get("labels") or [])]
        assert len(labelled) == 8
    finally:
        bridge.stop()
