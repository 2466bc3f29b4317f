"""Bad input is refused with a clear 4xx and changes nothing."""

from __future__ import annotations

import json
import time

import httpx2
import pytest

from connectors.signing import hmac_sha256_hex
from harness import KEYS, Bridge


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    b = Bridge(tmp_path_factory.mktemp("api")).start()
    yield b
    b.stop()


def review_count(bridge: Bridge) -> int:
    with bridge.client() as client:
        return len(client.get("/v1/reviews", params={"limit": 200}).json()["items"])


def error_of(response: httpx2.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and {"code", "message", "details"} <= set(body["error"])
    return body["error"]


@pytest.mark.parametrize(
    ("content", "status", "code", "mentions"),
    [
        (b'{"title": "x", "action_requests": [', 400, "malformed_json", "not valid JSON"),
        (json.dumps({"action_requests": [{"name": "x"}]}).encode(), 422, "invalid_request", "title"),
        (json.dumps({"title": "x", "action_requests": []}).encode(), 422, "invalid_request", "action_requests"),
        (json.dumps({"title": "x", "action_requests": [{"name": "t"}], "confidence": "high"}).encode(), 422, "invalid_request", "confidence"),
        (json.dumps({"title": "x", "action_requests": [{"name": "t"}], "confidence": 1.5}).encode(), 422, "invalid_request", "confidence"),
        (json.dumps({"title": "x", "action_requests": [{"name": "t"}], "allowed_decisions": ["maybe"]}).encode(), 422, "invalid_request", "allowed_decisions"),
        (json.dumps({"title": "x", "action_requests": [{"name": "t"}], "surprise": 1}).encode(), 422, "invalid_request", "surprise"),
        (json.dumps({"title": "a\u0000b", "action_requests": [{"name": "t"}]}).encode(), 422, "invalid_request", "NUL"),
        (json.dumps({"title": "x", "action_requests": [{"name": "t"}], "resume": {}}).encode(), 422, "invalid_request", "resume"),
        (json.dumps({"title": "x", "action_requests": [{"name": "t"}], "origin": {"connection": "nowhere", "ticket_id": "1"}}).encode(),
         400, "unknown_connection", "nowhere"),
    ],
)
def test_bad_review_bodies_are_refused_and_change_nothing(bridge, content, status, code, mentions):
    before = review_count(bridge)
    with bridge.client() as client:
        response = client.post("/v1/reviews", content=content, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    err = error_of(response)
    assert err["code"] == code
    assert mentions in err["message"] + json.dumps(err["details"])
    assert review_count(bridge) == before


def test_oversized_body_is_413(bridge):
    big = {"title": "x", "action_requests": [{"name": "t", "args": {"blob": "a" * 1_100_000}}]}
    with bridge.client() as client:
        response = client.post("/v1/reviews", json=big)
    assert response.status_code == 413 and error_of(response)["code"] == "body_too_large"


def test_keys_and_scopes(bridge):
    body = bridge.review_body()
    no_key = httpx2.post(f"{bridge.url}/v1/reviews", json=body)
    assert no_key.status_code == 401 and error_of(no_key)["code"] == "missing_api_key"
    wrong = httpx2.post(f"{bridge.url}/v1/reviews", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and error_of(wrong)["code"] == "invalid_api_key"
    with bridge.client("reader") as client:
        read_only = client.post("/v1/reviews", json=body)
        assert read_only.status_code == 403
        assert error_of(read_only)["details"]["required"] == "reviews:write"
        assert client.get("/v1/reviews").status_code == 200
        assert client.get("/v1/audit").status_code == 403


def test_unknown_review_and_bad_ids(bridge):
    with bridge.client() as client:
        missing = client.get("/v1/reviews/rev_" + "0" * 28)
        assert missing.status_code == 404 and error_of(missing)["code"] == "not_found"
        assert client.get("/v1/reviews/not-an-id").status_code == 422
        assert client.get("/v1/reviews", params={"cursor": "garbage"}).status_code == 400
        assert client.get("/v1/reviews", params={"limit": 0}).status_code == 422
        assert client.get(f"/v1/reviews/rev_{'0' * 28}/decision", params={"wait": 61}).status_code == 422
        # A NUL character where nothing validates it: PostgreSQL cannot store or compare it, a 422
        # saying so (was a 500); SQLite simply finds nothing.
        listed = client.get("/v1/reviews", params={"route": "a\x00b"})
        assert listed.status_code in (200, 422), listed.text
        if listed.status_code == 422:
            assert "NUL" in error_of(listed)["message"]
        else:
            assert listed.json()["items"] == []


def signed_jira(body: dict, secret: str) -> tuple[bytes, dict]:
    raw = json.dumps(body).encode()
    return raw, {"X-Hub-Signature": "sha256=" + hmac_sha256_hex(secret, raw), "Content-Type": "application/json",
                 "X-Atlassian-Webhook-Identifier": f"test-{time.time_ns()}"}


def jira_event(issue_id: str, *, timestamp_ms: int | None = None) -> dict:
    return {
        "timestamp": timestamp_ms or int(time.time() * 1000),
        "webhookEvent": "jira:issue_updated",
        "issue_event_type_name": "issue_generic",
        "user": {"accountId": "x"},
        "issue": {"id": issue_id, "key": f"HITL-{issue_id}", "fields": {}},
        "changelog": {"id": "1", "items": [{"field": "status", "fieldtype": "jira", "fieldId": "status",
                                              "from": "1", "fromString": "To Do", "to": "3", "toString": "Approved"}]},
    }


def test_webhooks_refuse_bad_signatures_stale_timestamps_and_unknown_tickets(bridge):
    secret = bridge.emulators["jira"].emulator.settings.webhook_secret
    review = bridge.submit()
    ticket = bridge.wait_ticket(review["id"])["ticket"]
    url = f"{bridge.url}/v1/webhooks/jira"

    raw, headers = signed_jira(jira_event(ticket["key"]), "not-the-secret")
    forged = httpx2.post(url, content=raw, headers=headers)
    assert forged.status_code == 401 and error_of(forged)["code"] == "invalid_webhook"

    raw, headers = signed_jira(jira_event(ticket["key"], timestamp_ms=int((time.time() - 3600) * 1000)), secret)
    stale = httpx2.post(url, content=raw, headers=headers)
    assert stale.status_code == 401 and "replay window" in error_of(stale)["message"]

    raw, headers = signed_jira(jira_event("999999"), secret)
    unknown = httpx2.post(url, content=raw, headers=headers)
    assert unknown.status_code == 404 and error_of(unknown)["code"] == "unknown_ticket"

    nowhere = httpx2.post(f"{bridge.url}/v1/webhooks/nowhere", content=b"{}")
    assert nowhere.status_code == 404 and error_of(nowhere)["code"] == "unknown_connection"

    # None of that decided anything: a valid, signed hint only makes the bridge look.
    raw, headers = signed_jira(jira_event(ticket["key"]), secret)
    hint = httpx2.post(url, content=raw, headers=headers)
    assert hint.status_code == 202 and hint.json()["accepted"] == 1
    time.sleep(0.5)
    assert bridge.review(review["id"])["status"] == "open"


def test_list_is_newest_first_and_paginates(bridge):
    ids = [bridge.submit(confidence=0.99, metadata={})["id"] for _ in range(5)]
    seen: list[str] = []
    cursor = None
    with bridge.client() as client:
        while True:
            params = {"limit": 2, "status": "auto_approved"} | ({"cursor": cursor} if cursor else {})
            page = client.get("/v1/reviews", params=params).json()
            seen += [item["id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
    assert seen[:5] == list(reversed(ids))
    assert len(seen) == len(set(seen))


def test_openapi_metrics_health(bridge):
    spec = httpx2.get(f"{bridge.url}/openapi.json").json()
    assert {"/v1/reviews", "/v1/reviews/{review_id}", "/v1/reviews/{review_id}/decision", "/v1/webhooks/{connection}"} <= set(spec["paths"])
    assert httpx2.get(f"{bridge.url}/healthz").json() == {"status": "ok"}
    ready = httpx2.get(f"{bridge.url}/readyz").json()
    assert ready["checks"] == {"database": "ok", "worker": "ok"}
    bridge.submit(confidence=0.99, metadata={})
    metrics = httpx2.get(f"{bridge.url}/metrics").text
    assert 'hitl_reviews_total{route="",status="auto_approved"}' in metrics
    assert "hitl_jobs" in metrics
    assert KEYS["agent"] not in metrics
