"""Governance (issue 9), the admin side: API keys in the database (scopes, expiry, revocation,
rate limits), audit export, route statistics against a scripted mix of decisions, content
policy detectors in route conditions, and retention that keeps `audit verify` passing."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor

import httpx2
import pytest
from sqlalchemy import delete, insert, select, update
from typer.testing import CliRunner

from bridge.cli import app
from bridge.db import Database
from bridge.models import AuditContent, Review
from harness import Bridge
from helpers import wait_for

ROUTES = """
routes:
  - {name: compliance, when: "policy.pii", mapping: jira_review}
  - {name: hedging, when: "policy.hedging or not policy.schema_ok", mapping: jira_review}
  - {name: big-refunds, when: "policy.max_amount > 1000", mapping: jira_review}
  - {name: canary, when: "metadata.queue == 'canary'", mapping: jira_review, sample: 0.999999}
  - {name: shadowed, when: "metadata.queue == 'shadow'", mapping: jira_review, mode: shadow}
"""


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    b = Bridge(tmp_path_factory.mktemp("governance_admin"), routes=ROUTES).start()
    b.config = b.config_file()
    yield b
    b.stop()


def cli(bridge, *args):
    result = CliRunner().invoke(app, [*args, "--config", str(bridge.config)])
    return result


def submit_with(bridge, key: str, **overrides):
    with httpx2.Client(base_url=bridge.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        return client.post("/v1/reviews", json=bridge.review_body(**overrides))


def plain(**overrides):
    """A review no policy route catches (no PII, no hedging, small amount)."""
    return {"metadata": {"queue": "none"}, "confidence": 0.99, "evidence": [], "langsmith": None,
            "action_requests": [{"name": "issue_refund", "args": {"order_id": "A-100", "amount": 50}}], **overrides}


# ----- API keys -------------------------------------------------------------------------


def new_key(bridge, name, *extra):
    result = cli(bridge, "keys", "create", name, *extra)
    assert result.exit_code == 0, result.output
    return result.output.split("key (shown once): ")[1].split()[0]


def test_keys_create_list_revoke_and_every_action_is_audited(bridge):
    key = new_key(bridge, "ci-agent", "--scope", "reviews:write", "--scope", "reviews:read")
    assert submit_with(bridge, key, **plain()).status_code == 201
    listed = [json.loads(line) for line in cli(bridge, "keys", "list").output.splitlines() if line.startswith("{")]
    mine = next(k for k in listed if k["name"] == "ci-agent")
    assert mine["state"] == "active" and "hash" not in mine and key not in json.dumps(listed)
    assert {"agent", "admin"} <= {k["name"] for k in listed if k["state"] == "config"}  # config keys keep working
    assert cli(bridge, "keys", "create", "ci-agent").exit_code == 1  # names are unique
    assert cli(bridge, "keys", "revoke", "ci-agent").exit_code == 0
    refused = submit_with(bridge, key, **plain())
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    with bridge.client("admin") as client:
        events = client.get("/v1/audit").json()["items"]
    admin = [(e["kind"], e["data"].get("name")) for e in events if e["kind"].startswith("admin.key")]
    assert ("admin.key_created", "ci-agent") in admin and ("admin.key_revoked", "ci-agent") in admin
    assert all(key not in json.dumps(e) for e in events)


def test_scopes_are_enforced_for_database_keys(bridge):
    reader = new_key(bridge, "reader-db", "--scope", "reviews:read")
    denied = submit_with(bridge, reader, **plain())
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "missing_scope"
    auditor = new_key(bridge, "siem", "--scope", "audit")
    with httpx2.Client(base_url=bridge.url, headers={"Authorization": f"Bearer {auditor}"}) as client:
        assert client.get("/v1/audit").status_code == 200
        assert client.get("/v1/reviews").status_code == 403
    assert cli(bridge, "keys", "create", "bad", "--scope", "root").exit_code == 1


def test_expired_key_is_refused(bridge):
    key = new_key(bridge, "short-lived", "--expires-in-days", "0.00001")  # under a second
    time.sleep(1.2)
    response = submit_with(bridge, key, **plain())
    assert response.status_code == 401 and response.json()["error"]["code"] == "expired_api_key"


def test_rate_limit_gives_a_clear_429_with_retry_after(bridge):
    key = new_key(bridge, "limited", "--rate-limit", "2")
    assert [submit_with(bridge, key, **plain()).status_code for _ in range(2)] == [201, 201]
    limited = submit_with(bridge, key, **plain())
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["retry-after"]) <= 120  # this minute is full: into the next one
    assert limited.json()["error"]["code"] == "rate_limited"
    assert "2 reviews a minute" in limited.json()["error"]["message"]
    other = new_key(bridge, "unlimited")
    assert submit_with(bridge, other, **plain()).status_code == 201  # per key, not global


def test_rate_window_slides_and_is_pruned(tmp_path):
    """The count lives in the database, a row per key and minute. A key allowed 2 a minute:
    the last 60 s are this minute's count plus the previous minute's weighted by its share
    still inside them, so a burst at the end of one minute is not followed by another at the
    start of the next (a fixed window let 3 through in 31 s here). Retry-After says when a
    submission would fit; a refused one is not counted; a key's first submission in a minute
    removes its minutes before the previous one."""
    from bridge.keys import RateLimitedError, count_submission
    from bridge.migrate import upgrade
    from bridge.models import RateWindow

    url = f"sqlite:///{tmp_path / 'rate.db'}"
    upgrade(url)
    db = Database(url)

    def submit(at: float, name: str = "k") -> None:
        with db.transaction() as session:
            count_submission(session, name, 2, now=at)

    def refused(at: float) -> int:
        with pytest.raises(RateLimitedError) as error:
            submit(at)
        return int(error.value.headers["Retry-After"])

    try:
        submit(120.0)
        submit(150.0)
        submit(150.0, name="other")  # per key
        assert refused(170.0) == 40 and refused(170.0) == 40  # this minute is full; next, the 2 weigh until 210
        assert refused(180.5) == 30  # a new minute, but 2 in the last 60 s (weighted: 1.98 + this one)
        submit(210.0)  # the previous minute's 2 weigh 1 now
        assert refused(211.0) == 29
        submit(240.0)  # previous minute: 1
        with db.transaction() as session:
            rows = {(r.key_name, r.window_start): r.count for r in session.execute(select(RateWindow)).scalars()}
        assert rows == {("k", 180): 1, ("k", 240): 1, ("other", 120): 1}
    finally:
        db.dispose()


def test_rate_limit_is_shared_by_every_instance(tmp_path):
    """Two ``hitl-bridge serve`` processes on one database, a key allowed 3 reviews a minute:
    of 8 submissions spread over both, exactly 3 are accepted, the rest get a 429."""
    from bridge.config import ApiKey, hash_api_key
    from procs import Proc

    limit, token = 3, "limited-key-0123456789"
    bridge = Bridge(tmp_path)
    limited = ApiKey(name="limited-shared", hash=hash_api_key(token), scopes=["reviews:write"], rate_limit_per_minute=limit)
    bridge.settings = bridge.settings.model_copy(update={"api_keys": [*bridge.settings.api_keys, limited]})
    config = bridge.config_file()
    servers = [Proc(config, tmp_path / f"serve{n}.log", worker=False) for n in range(2)]
    try:
        servers[0].start()  # migrates the database first
        servers[1].start()
        if time.time() % 60 > 45:  # all in one minute's window
            time.sleep(60.5 - time.time() % 60)

        def submit(n: int) -> httpx2.Response:
            with httpx2.Client(base_url=servers[n % 2].url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
                return client.post("/v1/reviews", json=bridge.review_body(**plain(title=f"Refund #{n}")))

        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(submit, range(limit + 5)))
        assert sorted(r.status_code for r in responses) == [201] * limit + [429] * 5
        assert [submit(0).status_code, submit(1).status_code] == [429, 429]  # on either instance
        for refused in (r for r in responses if r.status_code == 429):
            assert refused.json()["error"]["code"] == "rate_limited" and 1 <= int(refused.headers["retry-after"]) <= 120
            assert "may submit 3 reviews a minute" in refused.json()["error"]["message"]
    finally:
        for proc in servers:
            proc.terminate()
        bridge.stop()


# ----- the admin page with database keys ------------------------------------------------------


@contextmanager
def sign_in(bridge, key: str):
    """A browser that posted ``key`` to the sign-in form: (its client, the form's answer)."""
    with httpx2.Client(base_url=bridge.url, timeout=30) as client:
        yield client, client.post("/admin/login", data={"api_key": key})


def test_database_admin_key_signs_in_to_the_admin_page_until_revoked(bridge):
    key = new_key(bridge, "ops-admin", "--scope", "admin")
    with sign_in(bridge, key) as (browser, answer):
        assert answer.status_code == 303 and answer.headers["location"] == "/admin"
        page = browser.get("/admin")
        assert page.status_code == 200 and "signed in with key <strong>ops-admin</strong>" in page.text
        assert browser.get("/v1/admin/queue").status_code == 200  # the session works for the page's API calls too
        assert cli(bridge, "keys", "revoke", "ops-admin").exit_code == 0
        after = browser.get("/admin")
        assert after.status_code == 303 and after.headers["location"] == "/admin/login"
        assert browser.get("/v1/admin/queue").status_code == 401
    with sign_in(bridge, key) as (_, again):
        assert again.status_code == 401 and "not an admin API key" in again.text


def test_expired_or_non_admin_database_keys_cannot_sign_in(bridge):
    agent = new_key(bridge, "page-agent", "--scope", "reviews:write")
    with sign_in(bridge, agent) as (browser, answer):
        assert answer.status_code == 401 and "not an admin API key" in answer.text
        assert "hitl_admin" not in browser.cookies
    short = new_key(bridge, "page-short", "--scope", "admin", "--expires-in-days", "0.00002")  # under 2 s
    with sign_in(bridge, short) as (browser, answer):
        assert answer.status_code == 303
        assert browser.get("/admin").status_code == 200
        time.sleep(2.0)
        assert browser.get("/admin").status_code == 303  # the session ends with the key
    with sign_in(bridge, short) as (_, late):
        assert late.status_code == 401 and "expired" in late.text


def test_a_forged_session_cookie_is_sent_to_sign_in_whatever_it_holds(bridge):
    """"²".isdigit() is true and int("²") raises: an expiry like that was a 500."""
    for forged in ("ops-admin.\u00b2.sig", "ops-admin.99999999999.sig", "no-dots", "a.b.c.d"):
        cookie = [(b"cookie", f"hitl_admin={forged}".encode("latin-1"))]  # as sent: HTTP headers are bytes
        with httpx2.Client(base_url=bridge.url, timeout=30, headers=cookie) as browser:
            page = browser.get("/admin")
            assert page.status_code == 303 and page.headers["location"] == "/admin/login", forged
            assert browser.get("/v1/admin/queue").status_code == 401, forged


# ----- content policy detectors -----------------------------------------------------------


def test_policy_detectors_route_reviews(bridge):
    pii = bridge.submit(**plain(action_requests=[{"name": "reply", "args": {"body": "Call me on +1 415-555-0132"}}]))
    hedge = bridge.submit(**plain(action_requests=[{"name": "reply", "args": {"body": "It will probably arrive Monday."}}]))
    schema = bridge.submit(**plain(action_requests=[{"name": "issue_refund", "args": {"amount": "lots"},
                                                     "args_schema": {"type": "object", "properties": {"amount": {"type": "number"}}}}]))
    big = bridge.submit(**plain(action_requests=[{"name": "issue_refund", "args": {"order_id": "A-1", "amount": 2500}}]))
    calm = bridge.submit(**plain(action_requests=[{"name": "reply", "args": {"body": "Your refund was issued today."}}]))
    assert [r["route"]["name"] for r in (pii, hedge, schema, big, calm)] == ["compliance", "hedging", "hedging", "big-refunds", None]
    assert calm["status"] == "auto_approved"


# ----- route statistics ---------------------------------------------------------------------


def test_stats_match_a_scripted_mix_of_decisions(bridge):
    # canary (enforce, sampled): approve, approve, edit, reject, and one left open.
    # shadowed: the agent went ahead; humans approve twice and reject once.
    script = [("canary", "approve"), ("canary", "approve"), ("canary", "edit"), ("canary", "reject"), ("canary", None),
              ("shadow", "approve"), ("shadow", "reject"), ("shadow", "approve")]
    reviews = []
    for queue, action in script:
        review = bridge.submit(**plain(metadata={"queue": queue}))
        key = bridge.wait_ticket(review["id"])["ticket"]["key"]
        if action == "edit":
            bridge.act("jira", key, "edit", '{"order_id": "A-100", "amount": 10}', user="bob")
        elif action:
            bridge.act("jira", key, action, "No." if action == "reject" else None, user="bob")
        reviews.append((review["id"], queue, action))
    for review_id, queue, action in reviews:
        if action and queue == "canary":
            bridge.wait_status(review_id, {"approve": "approved", "edit": "edited", "reject": "rejected"}[action])
        elif action:
            bridge.wait_review(review_id, lambda r: r["shadow_decision"] is not None, what="shadow decision")
    with bridge.client("admin") as client:
        response = client.get("/v1/stats/routes")
        assert client.get("/v1/stats/routes", headers={"Authorization": "Bearer agent-key-0123456789"}).status_code == 403
    assert response.status_code == 200
    stats = {r["route"]: r for r in response.json()["routes"]}
    canary, shadow = stats["canary"], stats["shadowed"]
    assert canary["mode"] == "enforce" and canary["sample"] == 0.999999
    assert canary["volume"] == 5 and canary["decided"] == 4
    assert canary["decision_mix"] == {"approve": 2, "edit": 1, "reject": 1, "pending": 1}
    assert canary["agreement_rate"] == 0.5
    assert shadow["mode"] == "shadow" and shadow["volume"] == 3 and shadow["decided"] == 3
    assert shadow["decision_mix"] == {"approve": 2, "reject": 1}
    assert shadow["agreement_rate"] == round(2 / 3, 4)
    ttd = canary["time_to_decision_seconds"]
    assert 0 < ttd["median"] <= ttd["p90"] < 60
    assert stats["compliance"]["configured"] and stats["compliance"]["agreement_rate"] is None  # configured, nothing decided
    assert response.json()["days"] == 30

    # An approved review submitted 40 days ago counts only in a window that reaches back to it.
    db = Database(bridge.database_url)
    try:
        with db.transaction() as session:
            row = session.execute(select(Review.__table__).where(Review.id == reviews[0][0])).mappings().one()
            old_id = f"rev_{int((time.time() - 40 * 86400) * 1000):012x}{'0' * 16}"
            session.execute(insert(Review.__table__).values({**row, "id": old_id, "idempotency_key": None, "ticket_key": None}))
    finally:
        db.dispose()
    with bridge.client("admin") as client:
        recent, wider = client.get("/v1/stats/routes"), client.get("/v1/stats/routes", params={"days": 60})
        refused = client.get("/v1/stats/routes", params={"days": 0})
    assert {r["route"]: r for r in recent.json()["routes"]}["canary"]["decision_mix"]["approve"] == 2
    canary = {r["route"]: r for r in wider.json()["routes"]}["canary"]
    assert canary["volume"] == 6 and canary["decision_mix"]["approve"] == 3
    assert refused.status_code == 422 and "days" in refused.text


# ----- audit export and retention -------------------------------------------------------------


def test_audit_export_writes_json_lines_with_hashes(bridge, tmp_path):
    out = tmp_path / "audit.jsonl"
    result = cli(bridge, "audit", "export", "--out", str(out))
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines and [e["id"] for e in lines] == sorted(e["id"] for e in lines)
    assert all(lines[i]["prev_hash"] == lines[i - 1]["hash"] for i in range(1, len(lines)))
    submitted = next(e for e in lines if e["kind"] == "review.submitted")
    assert submitted["data"]["title"]  # content merged back for the SIEM
    after = cli(bridge, "audit", "export", "--after", str(lines[-2]["id"]))
    assert [json.loads(x)["id"] for x in after.stdout.splitlines()] == [lines[-1]["id"]]


def test_purge_removes_content_and_audit_verify_still_passes(bridge):
    secret_reason = "Customer's private note: their daughter's birthday is 2 May."
    review = bridge.submit(**plain(metadata={"queue": "canary"}, reasoning=secret_reason))
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    bridge.act("jira", key, "reject", "Not with this private note", user="bob")
    bridge.wait_status(review["id"], "rejected")
    wait_for(lambda: len(bridge.callbacks_for(review["id"])) == 1, what="callback")
    time.sleep(0.3)
    assert cli(bridge, "audit", "verify").exit_code == 0
    purge = cli(bridge, "retention", "purge", "--older-than-days", "0.000001")
    assert purge.exit_code == 0 and "purged" in purge.output
    purged = bridge.review(review["id"])
    assert purged["title"] == "(purged)" and purged["status"] == "rejected"
    assert purged["decision"]["decisions"][0]["type"] == "reject" and purged["decision"]["decisions"][0]["message"] is None
    assert secret_reason not in json.dumps(purged)
    with bridge.client("admin") as client:
        events = client.get("/v1/audit", params={"review_id": review["id"]}).json()["items"]
    assert "review.purged" in [e["kind"] for e in events]
    assert "Not with this private note" not in json.dumps(events)
    verify = cli(bridge, "audit", "verify")
    assert verify.exit_code == 0, verify.output


def test_content_tampering_and_removal_without_purge_are_caught(bridge):
    review = bridge.submit(**plain(metadata={"queue": "canary"}, title="Refund order A-7"))
    bridge.wait_ticket(review["id"])
    db = Database(bridge.database_url)
    try:
        with db.transaction() as session:
            found = session.execute(select(AuditContent).where(AuditContent.review_id == review["id"])).scalars().first()
            event_id, salt, original = found.event_id, found.salt, dict(found.content)
            session.execute(update(AuditContent).where(AuditContent.event_id == event_id).values(content={"title": "Refund order A-8"}))
        bad = cli(bridge, "audit", "verify")
        assert bad.exit_code == 1 and "does not match its digest" in bad.output
        with db.transaction() as session:
            session.execute(update(AuditContent).where(AuditContent.event_id == event_id).values(content=original))
        assert cli(bridge, "audit", "verify").exit_code == 0
        with db.transaction() as session:
            session.execute(delete(AuditContent).where(AuditContent.event_id == event_id))
        gone = cli(bridge, "audit", "verify")
        assert gone.exit_code == 1 and "removed without a purge" in gone.output
        with db.transaction() as session:
            session.add(AuditContent(event_id=event_id, review_id=review["id"], salt=salt, content=original))
        assert cli(bridge, "audit", "verify").exit_code == 0
    finally:
        db.dispose()
