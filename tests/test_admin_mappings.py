"""Admins change mappings safely: validation errors name file, line, field and reason; every
save is a version (author, time, diff, full text); If-Match stops lost updates; any version
can be restored; saves reload without a restart; reviews already open are not affected."""

from __future__ import annotations

import shutil

import httpx2
import pytest
import yaml

from bridge import file_schema
from bridge.app import create_app
from bridge.runtime import Runtime
from connectors.emulators.base import serve
from harness import KEYS, ROOT, Bridge
from helpers import wait_for


@pytest.fixture
def bridge(tmp_path):
    b = Bridge(tmp_path).start()
    yield b
    b.stop()


def read(bridge, name="jira_review"):
    with bridge.client("admin") as client:
        response = client.get(f"/v1/mappings/{name}")
    assert response.status_code == 200, response.text
    return response.json()["yaml"], response.headers["ETag"]


def put(bridge, text, etag, name="jira_review"):
    headers = {"Content-Type": "application/yaml"} | ({"If-Match": etag} if etag else {})
    with bridge.client("admin") as client:
        return client.put(f"/v1/mappings/{name}", content=text.encode(), headers=headers)


def test_validation_errors_name_file_line_field_and_reason(bridge):
    text, etag = read(bridge)
    broken = text.replace("    Rejected: reject", "    Rejected: maybe")
    line = broken.splitlines().index("    Rejected: maybe") + 1
    response = put(bridge, broken, etag)
    assert response.status_code == 422
    detail = response.json()["error"]["details"][0]
    assert detail == {"file": "jira_review.yaml", "line": line, "field": "decision.values.Rejected",
                      "reason": "Input should be 'approve', 'reject' or 'respond'"}
    assert (bridge.mappings_dir / "jira_review.yaml").read_text() == text  # nothing written

    with bridge.client("admin") as client:
        checked = client.post("/v1/mappings/jira_review/validate", content=broken.encode()).json()
        assert checked["valid"] is False and checked["problems"][0]["line"] == line
        assert "-    Rejected: reject" in checked["diff"] and "+    Rejected: maybe" in checked["diff"]
        template = text.replace("summary: \"[AI review] {{ review.title", "summary: \"[AI review] {{ review.title +")
        problem = client.post("/v1/mappings/jira_review/validate", content=template.encode()).json()["problems"][0]
        assert problem["field"] == "ticket.fields.summary" and "does not compile" in problem["reason"]
        assert problem["line"] == template.splitlines().index(next(l for l in template.splitlines() if "summary:" in l)) + 1
        unknown = client.post("/v1/mappings/jira_review/validate", content=text.replace("connection: jira", "connection: jiraa").encode()).json()
        assert unknown["problems"][0]["field"] == "connection" and unknown["problems"][0]["line"] == 5
        assert client.post("/v1/mappings/jira_review/validate", content=text.encode()).json()["valid"] is True


def test_saves_are_versions_with_author_diff_and_text_and_restore_works(bridge):
    original, etag = read(bridge)
    changed = original.replace("labels: [ai-review]", "labels: [ai-review, refunds]")
    response = put(bridge, changed, etag)
    assert response.status_code == 200, response.text
    saved = response.json()
    assert saved["number"] == 2 and response.headers["ETag"] == saved["etag"] != etag
    on_disk = (bridge.mappings_dir / "jira_review.yaml").read_text()
    assert on_disk == changed and on_disk.startswith("# How a review becomes a Jira issue")  # comments kept

    with bridge.client("admin") as client:
        history = client.get("/v1/mappings/jira_review/versions").json()["items"]
        assert [(v["number"], v["author"], v["action"]) for v in history] == [(2, "api_key:admin", "save"), (1, "disk", "baseline")]
        v2 = client.get("/v1/mappings/jira_review/versions/2").json()
        assert v2["text"] == changed and "+    labels: [ai-review, refunds]" in v2["diff"]
        assert client.get("/v1/mappings/jira_review/versions/1").json()["text"] == original
        for number in ("0", "-6735966827691700393", "2147483648"):  # none, and past PostgreSQL's integer
            refused = client.get(f"/v1/mappings/jira_review/versions/{number}")
            assert refused.status_code == 422 and "number" in refused.text, refused.text

        restored = client.post("/v1/mappings/jira_review/versions/1/restore", headers={"If-Match": saved["etag"]})
        assert restored.status_code == 200, restored.text
        assert restored.json()["number"] == 3 and restored.json()["etag"] == etag
        assert (bridge.mappings_dir / "jira_review.yaml").read_text() == original
        top = client.get("/v1/mappings/jira_review/versions").json()["items"][0]
        assert (top["action"], top["restored_from"]) == ("restore", 1)
        trail = client.get("/v1/audit").json()["items"]
    kinds = [(e["kind"], e["actor"]) for e in trail]
    assert ("mapping.changed", "api_key:admin") in kinds and ("mapping.restored", "api_key:admin") in kinds


def test_if_match_prevents_lost_updates(bridge):
    text, etag = read(bridge)
    assert put(bridge, text.replace("Task", "Bug"), None).json()["error"]["code"] == "if_match_required"
    first = put(bridge, text.replace("labels: [ai-review]", "labels: [first]"), etag)
    assert first.status_code == 200
    second = put(bridge, text.replace("labels: [ai-review]", "labels: [second]"), etag)  # read before the first save
    assert second.status_code == 409 and second.json()["error"]["code"] == "stale_etag"
    assert "labels: [first]" in (bridge.mappings_dir / "jira_review.yaml").read_text()
    with bridge.client("admin") as client:
        stale_restore = client.post("/v1/mappings/jira_review/versions/1/restore", headers={"If-Match": etag})
    assert stale_restore.status_code == 409


def test_a_file_changed_on_disk_is_recorded_before_the_next_save(bridge):
    text, _ = read(bridge)
    put(bridge, text.replace("labels: [ai-review]", "labels: [api]"), read(bridge)[1])
    by_git = text.replace("labels: [ai-review]", "labels: [from-git]")
    (bridge.mappings_dir / "jira_review.yaml").write_text(by_git)  # a deploy or git pull
    response = put(bridge, by_git.replace("[from-git]", "[after]"), read(bridge)[1])
    assert response.json()["number"] == 4
    with bridge.client("admin") as client:
        history = client.get("/v1/mappings/jira_review/versions").json()["items"]
        assert [(v["number"], v["action"]) for v in history[:2]] == [(4, "save"), (3, "baseline")]
        assert client.get("/v1/mappings/jira_review/versions/3").json()["text"] == by_git


def test_merge_patch_edits_structurally_and_keeps_comments_and_order(bridge):
    text, etag = read(bridge)
    with bridge.client("admin") as client:
        response = client.patch("/v1/mappings/jira_review", json={"decision": {"values": {"Done": "approve"}}, "description": None},
                                headers={"If-Match": etag})
    assert response.status_code == 200, response.text
    after = (bridge.mappings_dir / "jira_review.yaml").read_text()
    assert after.splitlines()[:3] == text.splitlines()[:3]  # the header comment
    assert "description: Sandbox sample" not in after
    data = yaml.safe_load(after)
    assert list(data["decision"]["values"]) == ["Approved", "Rejected", "Responded", "Done"]
    assert list(data) == [k for k in yaml.safe_load(text) if k != "description"]
    assert data["ticket"]["fields"]["description"] == yaml.safe_load(text)["ticket"]["fields"]["description"]


def test_saving_reloads_without_restart_and_open_reviews_keep_their_mapping(bridge):
    before = bridge.submit()
    opened = bridge.wait_ticket(before["id"])
    text, etag = read(bridge)
    # The new mapping decides with other statuses and writes other summaries.
    changed = (text.replace("    Approved: approve\n", "    Done: approve\n")
               .replace('summary: "[AI review] {{', 'summary: "[Needs a human] {{'))
    saved = put(bridge, changed, etag).json()

    after = bridge.submit(title="Second refund")
    after_ticket = bridge.wait_ticket(after["id"])["ticket"]
    assert bridge.ticket("jira", after_ticket["key"])["title"] == "[Needs a human] Second refund"  # reloaded, no restart
    assert bridge.ticket("jira", opened["ticket"]["key"])["title"] == "[AI review] Refund $750 to order A-100"

    # The review opened before the change still decides by its own mapping ("Approved").
    bridge.act("jira", opened["ticket"]["key"], "approve", "Fine.")
    decided = bridge.wait_status(before["id"], "approved")
    assert decided["decision"]["decisions"][0]["type"] == "approve"
    with bridge.client("admin") as client:
        queue = client.get("/v1/admin/queue").json()
    versions = {r["id"]: r["mapping_version"] for route in queue["routes"] for r in route["reviews"]}
    assert versions[after["id"]] == saved["version"]


def test_routes_yaml_is_edited_the_same_way(bridge):
    text, etag = read(bridge, "routes")
    broken = text.replace("mapping: jira_review", "mapping: nowhere", 1)
    response = put(bridge, broken, etag, name="routes")
    assert response.status_code == 422
    detail = response.json()["error"]["details"][0]
    assert detail["field"] == "routes.0.mapping" and detail["line"] == broken.splitlines().index("    mapping: nowhere") + 1
    ok = put(bridge, text.replace("confidence < 0.8", "confidence < 0.5"), etag, name="routes")
    assert ok.status_code == 200 and ok.json()["version"] is None
    review = bridge.submit(confidence=0.6, metadata={})
    assert review["status"] == "auto_approved"  # the new routes apply at once


def test_preview_shows_the_request_and_the_reviewers_view(bridge):
    review = bridge.submit()
    bridge.wait_ticket(review["id"])
    with bridge.client("admin") as client:
        stored = client.post("/v1/mappings/jira_review/preview", json={"review_id": review["id"]}).json()
        sample = client.post("/v1/mappings/jira_review/preview", json={}).json()
        draft_text = read(bridge)[0].replace("labels: [ai-review]", "labels: [draft]")
        draft = client.post("/v1/mappings/jira_review/preview", json={"yaml": draft_text}).json()
        broken = client.post("/v1/mappings/jira_review/preview", json={"yaml": "name: jira_review\n"})
    create = stored["requests"][0]
    assert (create["method"], create["url"]) == ("POST", f"{bridge.emulators['jira'].url}/rest/api/2/issue")
    assert create["body"]["fields"]["labels"] == ["ai-review", f"hitl-{review['id']}"]
    assert create["body"]["fields"]["summary"] == "[AI review] Refund $750 to order A-100"
    assert stored["review"] == {"id": review["id"], "source": "stored", "title": "Refund $750 to order A-100"}
    view = stored["reviewer_view"]
    assert view["title"] == "[AI review] Refund $750 to order A-100"
    assert "<th>Argument</th>" in view["body_html"] and "<td>order_id</td><td>A-100</td>" in view["body_html"]
    assert sample["review"]["source"] == "sample" and sample["comment"] is None
    assert draft["requests"][0]["body"]["fields"]["labels"][0] == "draft"
    assert broken.status_code == 422


def test_the_queue_lists_open_reviews_oldest_first_with_their_tickets(bridge):
    first = bridge.submit(title="First in")
    second = bridge.submit(title="Second in")
    tickets = {r["id"]: bridge.wait_ticket(r["id"])["ticket"] for r in (first, second)}
    with bridge.client("admin") as client:
        queue = client.get("/v1/admin/queue").json()
    [route] = queue["routes"]
    assert route["route"] == "jira-queue" and route["open"] == 2
    assert [r["id"] for r in route["reviews"]] == [first["id"], second["id"]]
    for row in route["reviews"]:
        assert row["status"] == "open" and row["mapping"] == "jira_review" and row["mapping_version"]
        assert row["ticket"] == {"display": tickets[row["id"]]["display"], "url": tickets[row["id"]]["url"]}
        assert row["age_seconds"] >= 0 and row["sla_left_seconds"] is None and row["expires_at"] is None
    assert route["oldest_age_seconds"] == route["reviews"][0]["age_seconds"]
    assert queue["failed"] == [] and queue["dead_jobs"] == []


def test_failed_review_is_retried_after_the_mapping_is_fixed(bridge):
    text, etag = read(bridge)
    put(bridge, text.replace("issuetype: {name: Task}", "issuetype: {name: Epic}"), etag)
    review = bridge.submit()
    failed = bridge.wait_status(review["id"], "failed")
    assert "issue type" in failed["error"]["message"].lower() or "issuetype" in failed["error"]["message"]
    with bridge.client("admin") as client:
        queue = client.get("/v1/admin/queue").json()
        assert [f["id"] for f in queue["failed"]] == [review["id"]]
        put(bridge, text, read(bridge)[1])
        retried = client.post(f"/v1/admin/reviews/{review['id']}/retry")
        assert retried.status_code == 200 and retried.json()["status"] == "queued"
        assert client.post(f"/v1/admin/reviews/{review['id']}/retry").status_code == 409
    bridge.wait_status(review["id"], "open")
    with bridge.client("admin") as client:
        trail = client.get("/v1/audit", params={"review_id": review["id"]}).json()["items"]
    assert any(e["kind"] == "review.retried" and e["actor"] == "api_key:admin" for e in trail)


def test_only_admins_and_the_session_needs_its_csrf_token(bridge):
    with bridge.client("agent") as client:
        assert client.get("/v1/mappings/jira_review").status_code == 403
        assert client.get("/v1/admin/queue").status_code == 403
    import httpx2

    from harness import KEYS

    with httpx2.Client(base_url=bridge.url, follow_redirects=False) as browser:
        assert browser.get("/admin").headers["location"] == "/admin/login"
        assert browser.post("/admin/login", data={"api_key": KEYS["agent"]}).status_code == 401
        login = browser.post("/admin/login", data={"api_key": KEYS["admin"]})
        assert login.status_code == 303 and "httponly" in login.headers["set-cookie"].lower()
        assert "samesite=strict" in login.headers["set-cookie"].lower()
        assert KEYS["admin"] not in login.headers["set-cookie"]
        text = browser.get("/v1/mappings/jira_review").json()["yaml"]
        etag = browser.get("/v1/mappings/jira_review").headers["ETag"]
        refused = browser.put("/v1/mappings/jira_review", content=text.encode(), headers={"If-Match": etag})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf_failed"
        page = browser.get("/admin/mappings/jira_review").text
        token = page.split('name="csrf-token" content="')[1].split('"')[0]
        accepted = browser.put("/v1/mappings/jira_review", content=text.encode(), headers={"If-Match": etag, "X-CSRF-Token": token})
        assert accepted.status_code == 200, accepted.text


def test_schema_is_generated_published_and_committed(bridge):
    for kind in file_schema.KINDS:
        committed = ROOT / "mappings" / "schema" / f"{kind}.schema.yaml"
        assert committed.read_text() == file_schema.as_yaml(kind), "run `hitl-bridge mappings schema --write`"
    with bridge.client("agent") as client:
        published = client.get("/v1/schema/mapping").json()
    assert published == yaml.safe_load((ROOT / "mappings" / "schema" / "mapping.schema.yaml").read_text())
    import jsonschema

    for path in (ROOT / "mappings").glob("*.yaml"):
        kind = "routes" if path.stem == "routes" else "mapping"
        jsonschema.validate(yaml.safe_load(path.read_text()), file_schema.schema(kind))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "x", "connection": "jira", "ticket": {}, "decision": {"values": {"A": "maybe"}}},
                            file_schema.schema("mapping"))


def test_a_save_on_one_instance_reaches_every_other(bridge, tmp_path):
    """Instances that share the database, each with its own mappings/ (one per host): a save
    on one is taken up by the others, which route and render with it; a file a deploy put
    on a host, which no save made, stays there."""
    host_b = tmp_path / "host-b"
    shutil.copytree(bridge.mappings_dir, host_b)
    rt_b = Runtime(bridge.settings.model_copy(update={"mappings_dir": host_b, "mappings_follow_seconds": 0.1}))
    b = serve(create_app(runtime=rt_b, start_worker=False), name="bridge-b")
    try:
        text, etag = read(bridge)
        changed = text.replace('summary: "[AI review] {{', 'summary: "[Needs a human] {{')
        saved = put(bridge, changed, etag).json()
        wait_for(lambda: rt_b.mappings["jira_review"].version == saved["version"], what="the save to reach instance B")
        assert (host_b / "jira_review.yaml").read_text() == changed
        with httpx2.Client(base_url=b.url, headers={"Authorization": f"Bearer {KEYS['agent']}"}) as client:
            response = client.post("/v1/reviews", json=bridge.review_body(title="Through B"))
        assert response.status_code == 201, response.text
        ticket = bridge.wait_ticket(response.json()["id"])["ticket"]
        assert bridge.ticket("jira", ticket["key"])["title"] == "[Needs a human] Through B"

        deployed = changed.replace("labels: [ai-review]", "labels: [deployed-on-b]")
        (host_b / "jira_review.yaml").write_text(deployed)  # a deploy on host B only
        again = put(bridge, changed.replace("[Needs a human]", "[Human]"), read(bridge)[1]).json()
        wait_for(lambda: rt_b.mapping_numbers.get("jira_review") == again["number"], what="instance B to look again")
        assert (host_b / "jira_review.yaml").read_text() == deployed
    finally:
        b.stop()
        rt_b.close()


def test_a_save_another_instance_cannot_load_leaves_it_as_it_was(tmp_path):
    """Instance B has no ServiceNow connection: a ServiceNow mapping saved on A is not taken up
    there (its files and mappings stay as they were), and B goes on serving."""
    a = Bridge(tmp_path, vendors=("jira", "servicenow")).start()
    host_b = tmp_path / "host-b"
    shutil.copytree(a.mappings_dir, host_b, ignore=shutil.ignore_patterns("servicenow_review.yaml"))
    settings_b = a.settings.model_copy(update={"mappings_dir": host_b, "mappings_follow_seconds": 0.1,
                                               "connections": {"jira": a.settings.connections["jira"]}})
    rt_b = Runtime(settings_b)
    b = serve(create_app(runtime=rt_b, start_worker=False), name="bridge-b")
    try:
        text, etag = read(a, "servicenow_review")
        saved = put(a, text.replace("[AI review]", "[Human]"), etag, "servicenow_review").json()
        wait_for(lambda: rt_b.mapping_numbers.get("servicenow_review") == saved["number"], what="instance B to look")
        assert not (host_b / "servicenow_review.yaml").exists() and set(rt_b.mappings) == {"jira_review"}
        with httpx2.Client(base_url=b.url, headers={"Authorization": f"Bearer {KEYS['agent']}"}) as client:
            assert client.post("/v1/reviews", json=a.review_body()).status_code == 201
    finally:
        b.stop()
        rt_b.close()
        a.stop()
