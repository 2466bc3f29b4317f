"""LangSmith end to end over real HTTP: runs traced with the real ``langsmith`` SDK into the
LangSmith emulator; the bridge reads them, routes the reviews to the Jira emulator, and
writes each decision back as feedback (and corrections as dataset examples), all through
the SDK as well."""

from __future__ import annotations

import json
import time
import uuid

import httpx2
import pytest
from langsmith import Client, RunTree

from bridge.config import LangSmithSettings
from connectors.emulators.base import start_emulator
from connectors.emulators.langsmith import LangSmithEmulator
from harness import Bridge
from helpers import wait_for

INTAKE_SECRET = "intake-secret-for-tests-0123456789"
DATASET = "support-corrections"


class LangSmithBridge(Bridge):
    """The harness's bridge (Jira emulator), plus a LangSmith emulator it is configured for."""

    def __init__(self, tmp_path, **kwargs):
        super().__init__(tmp_path, **kwargs)
        self.langsmith = start_emulator(LangSmithEmulator(webhook_secret=INTAKE_SECRET))
        self.settings = self.settings.model_copy(update={"langsmith": LangSmithSettings(
            api_url=self.langsmith.url,
            api_key=self.langsmith.emulator.api_key,
            web_url="https://smith.example",
            corrections_dataset=DATASET,
            intake_secrets=["an-older-secret", INTAKE_SECRET],
            intake_metadata={"queue": "jira"},
        )})

    def _wire(self, url: str) -> None:
        super()._wire(url)
        self.langsmith.emulator.settings.webhook_url = f"{url}/v1/intake/langsmith?secret={INTAKE_SECRET}"

    def stop(self) -> None:
        super().stop()
        self.langsmith.stop()

    @property
    def ls(self) -> LangSmithEmulator:
        return self.langsmith.emulator


@pytest.fixture
def bridge(tmp_path):
    b = LangSmithBridge(tmp_path).start()
    yield b
    b.stop()


@pytest.fixture
def sdk(bridge) -> Client:
    return Client(api_url=bridge.langsmith.url, api_key=bridge.ls.api_key, auto_batch_tracing=False)


def trace_run(sdk: Client, *, question: str = "Can I get a refund for order A-100?", outputs: dict | None = None,
              tags: list[str] | None = None) -> RunTree:
    """An agent run with one tool call, traced with the SDK as an agent would."""
    root = RunTree(name="support-agent", run_type="chain", inputs={"question": question}, ls_client=sdk,
                   project_name="support", tags=tags or ["production"], extra={"metadata": {"customer_tier": "gold"}})
    root.post()
    tool = root.create_child(name="lookup_order", run_type="tool", inputs={"order_id": "A-100"})
    tool.post()
    tool.end(outputs={"status": "delivered", "amount": 750})
    tool.patch()
    root.end(outputs=outputs if outputs is not None else {"answer": "Refund $750 to order A-100.", "confidence": 0.42})
    root.patch()
    return root


def submit_run(bridge: Bridge, run_id, **hints) -> dict:
    with bridge.client() as client:
        response = client.post("/v1/reviews", json={"langsmith": {"run_id": str(run_id)}, **hints})
    assert response.status_code == 201, response.text
    return response.json()


def feedback_on(sdk: Client, run_id) -> list:
    return list(sdk.list_feedback(run_ids=[str(run_id)]))


def test_review_from_a_run_id_carries_inputs_outputs_tools_and_trace_link(bridge, sdk):
    root = trace_run(sdk)
    review = submit_run(bridge, root.id)
    assert review["status"] == "queued"
    assert review["request"]["action_requests"] == []
    opened = bridge.wait_ticket(review["id"])
    # The confidence came from the run's outputs, and routing used it.
    assert opened["route"]["name"] == "low-confidence"
    request = opened["request"]
    assert request["confidence"] == 0.42
    assert request["input"] == {"question": "Can I get a refund for order A-100?"}
    assert request["action_requests"][0]["name"] == "support-agent"
    assert request["action_requests"][0]["args"]["answer"] == "Refund $750 to order A-100."
    assert request["metadata"]["customer_tier"] == "gold" and request["metadata"]["tags"] == ["production"]
    trace_url = request["langsmith"]["trace_url"]
    assert trace_url.startswith("https://smith.example/o/") and str(root.id) in trace_url
    assert opened["title"] == "Review the output of support-agent"

    description = bridge.ticket("jira", opened["ticket"]["key"])["description"]
    for expected in ("Can I get a refund for order A-100?", "Refund $750 to order A-100.", "lookup_order", trace_url):
        assert expected in description, expected


def test_confidence_from_feedback_and_a_confident_run_is_auto_approved(bridge, sdk):
    unsure = trace_run(sdk, outputs={"answer": "Refund it."})
    sdk.create_feedback(unsure.id, "confidence", score=0.3, trace_id=unsure.id, session_id=bridge.ls.runs[str(unsure.id)]["session_id"])
    sure = trace_run(sdk, outputs={"answer": "Refund it.", "confidence": 0.97})
    unsure_review, sure_review = submit_run(bridge, unsure.id), submit_run(bridge, sure.id)
    assert bridge.wait_ticket(unsure_review["id"])["request"]["confidence"] == 0.3
    decided = bridge.wait_status(sure_review["id"], "auto_approved")
    assert decided["request"]["confidence"] == 0.97 and decided["ticket"] is None
    # No human decided: nothing is written back as human feedback.
    assert [f.key for f in feedback_on(sdk, sure.id)] == []


def test_hints_win_over_the_run(bridge, sdk):
    root = trace_run(sdk)
    review = submit_run(bridge, root.id, title="Check this refund", metadata={"queue": "jira", "customer_tier": "silver"})
    opened = bridge.wait_ticket(review["id"])
    assert opened["route"]["name"] == "jira-queue"
    assert opened["title"] == "Check this refund"
    assert opened["request"]["metadata"]["customer_tier"] == "silver"


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        ({"action_requests": [{"name": "x"}]}, "title"),
        ({"title": "x"}, "action_requests"),
        ({"title": "x", "langsmith": {"trace_url": "https://smith.example/r/1"}}, "langsmith.run_id"),
    ],
)
def test_title_and_actions_are_optional_only_for_a_run(bridge, body, mentions):
    with bridge.client() as client:
        response = client.post("/v1/reviews", json=body)
    assert response.status_code == 422, response.text
    assert mentions in response.json()["error"]["message"]


def test_unreadable_run_fails_the_review_with_a_reason(bridge):
    review = submit_run(bridge, uuid.uuid4())
    failed = bridge.wait_status(review["id"], "failed")
    assert failed["error"]["code"] == "langsmith_run_unreadable"


def intake_reviews(bridge: Bridge, run_ids: list[str]) -> list[dict]:
    with bridge.client("reader") as client:
        items = client.get("/v1/reviews", params={"limit": 200}).json()["items"]
    return [r for r in items if (r["request"].get("langsmith") or {}).get("run_id") in run_ids]


def test_automation_webhook_gives_one_review_per_run_even_when_sent_twice(bridge, sdk):
    run_ids = [str(trace_run(sdk, question=f"Question {n}").id) for n in range(3)]
    first = bridge.ls.fire_rule(run_ids)
    wait_for(lambda: first.status == 202, what="first rule webhook accepted")
    assert len(json.loads(first.response)["created"]) == 3
    second = bridge.ls.fire_rule(run_ids)
    wait_for(lambda: second.status == 202, what="second rule webhook accepted")
    assert json.loads(second.response) == {"created": [], "duplicate": json.loads(first.response)["created"], "invalid": []}
    assert "secret=" in first.url  # the secret travelled in the query string, as LangSmith advises

    found = intake_reviews(bridge, run_ids)
    assert sorted(r["request"]["langsmith"]["run_id"] for r in found) == sorted(run_ids)
    for review in found:
        opened = bridge.wait_ticket(review["id"])
        assert opened["route"]["name"] == "jira-queue"
        assert opened["request"]["input"]["question"].startswith("Question ")
    assert len(intake_reviews(bridge, run_ids)) == 3


def test_intake_refuses_a_wrong_secret_and_accepts_the_header(bridge, sdk):
    run_id = str(trace_run(sdk).id)
    body = json.dumps(bridge.ls.rule_payload([run_id]))
    url = f"{bridge.url}/v1/intake/langsmith"
    assert httpx2.post(url, content=body).status_code == 401
    refused = httpx2.post(f"{url}?secret=wrong", content=body)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_intake_secret"
    accepted = httpx2.post(url, content=body, headers={"X-Webhook-Secret": "an-older-secret"})
    assert accepted.status_code == 202 and len(accepted.json()["created"]) == 1
    bad = httpx2.post(url, content=b'{"runs": "nope"}', headers={"X-Webhook-Secret": INTAKE_SECRET})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_payload"


def decide_on_jira(bridge: Bridge, sdk: Client, action: str, body: str | None):
    root = trace_run(sdk)
    review = submit_run(bridge, root.id, metadata={"queue": "jira"})
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    bridge.act("jira", key, action, body)
    feedback = wait_for(lambda: feedback_on(sdk, root.id), timeout=20, what="feedback on the run")
    return root, bridge.review(review["id"]), feedback


@pytest.mark.parametrize(
    ("action", "body", "score", "value", "status"),
    [
        ("approve", "Checked the photos, fine.", 1, "approve", "approved"),
        ("reject", "Order was already refunded last week.", 0, "reject", "rejected"),
        ("edit", json.dumps({"answer": "Refund $500 to order A-100."}), 0.5, "edit", "edited"),
    ],
)
def test_each_decision_leaves_feedback_on_the_run(bridge, sdk, action, body, score, value, status):
    root, review, feedback = decide_on_jira(bridge, sdk, action, body)
    assert review["status"] == status
    assert len(feedback) == 1
    item = feedback[0]
    assert item.key == "human_review" and item.score == score and item.value == value
    assert str(item.run_id) == str(root.id) and str(item.trace_id) == str(root.id)
    source = item.feedback_source.metadata
    assert source["ticket_url"] == review["ticket"]["url"] and source["ticket_url"]
    assert source["reviewer_id"] and source["reviewer_id"] == (review["decision"]["reviewer"]["id"] or review["decision"]["reviewer"]["email"])
    assert source["hitl_bridge"]["review_id"] == review["id"]
    if action == "reject":
        assert item.comment == "Order was already refunded last week." and item.correction is None
    if action == "edit":
        assert item.correction == {"answer": "Refund $500 to order A-100."}
    else:
        assert not bridge.ls.examples
    # Exactly once: the job does not run again.
    assert len(feedback_on(sdk, root.id)) == 1


def test_an_edit_adds_exactly_one_example_to_the_corrections_dataset(bridge, sdk):
    assert not sdk.has_dataset(dataset_name=DATASET)
    root, review, _ = decide_on_jira(bridge, sdk, "edit", json.dumps({"answer": "Refund $500 to order A-100."}))
    examples = wait_for(lambda: list(sdk.list_examples(dataset_name=DATASET)), what="corrections example")
    assert len(examples) == 1
    example = examples[0]
    assert example.inputs == {"question": "Can I get a refund for order A-100?"}
    assert example.outputs == {"answer": "Refund $500 to order A-100."}
    assert example.metadata["agent_output"] == {"answer": "Refund $750 to order A-100.", "confidence": 0.42}
    assert example.metadata["review_id"] == review["id"]
    assert str(example.source_run_id) == str(root.id)
    # A second edit on another run goes to the same dataset, which is not created twice.
    decide_on_jira(bridge, sdk, "edit", json.dumps({"answer": "No refund."}))
    wait_for(lambda: len(list(sdk.list_examples(dataset_name=DATASET))) == 2, what="second example")
    assert [d["name"] for d in bridge.ls.datasets.values()] == [DATASET]


def test_feedback_arrives_after_a_langsmith_outage(bridge, sdk):
    root = trace_run(sdk)
    review = submit_run(bridge, root.id, metadata={"queue": "jira"})
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    with httpx2.Client() as client:  # LangSmith goes down: every API call answers 503
        client.post(f"{bridge.langsmith.url}/_emulator/config", json={"faults": [{"status": 503, "times": 1000}]})
    bridge.act("jira", key, "reject", "Not during an outage.")
    bridge.wait_status(review["id"], "rejected")
    wait_for(lambda: 1000 - bridge.ls.settings.faults[0].times >= 3, timeout=20, what="three failed attempts")
    assert not bridge.ls.feedback
    with httpx2.Client() as client:  # and comes back
        client.post(f"{bridge.langsmith.url}/_emulator/config", json={"faults": []})
    feedback = wait_for(lambda: feedback_on(sdk, root.id), timeout=20, what="feedback after the outage")
    assert len(feedback) == 1 and feedback[0].value == "reject" and feedback[0].comment == "Not during an outage."
    with bridge.client("admin") as client:
        events = client.get("/v1/audit", params={"review_id": review["id"]}).json()["items"]
    assert [e["kind"] for e in events].count("langsmith.feedback") == 1


def test_a_reversal_changes_the_runs_verdict_and_its_correction(bridge, sdk):
    """One verdict per run, the last: an admin's reversal updates the run's feedback in place
    (not a second one averaged with the first), and the corrections dataset keeps only the
    correction that stands."""
    edit = json.dumps({"answer": "Refund $500 to order A-100."})
    root, review, _ = decide_on_jira(bridge, sdk, "edit", edit)
    wait_for(lambda: len(list(sdk.list_examples(dataset_name=DATASET))) == 1, what="the edit's example")
    action = review["decision"]["decisions"][0]["edited_action"]["name"]

    def reverse(decision: dict, reason: str) -> None:
        with bridge.client("admin") as client:
            response = client.post(f"/v1/reviews/{review['id']}/decision", json={"decisions": [decision], "reason": reason})
        assert response.status_code == 200, response.text

    reverse({"type": "reject", "message": "Refunds are paused for this customer."}, "Fraud review")
    wait_for(lambda: feedback_on(sdk, root.id)[0].value == "reject", timeout=20, what="the reversed verdict")
    [item] = feedback_on(sdk, root.id)
    assert item.score == 0 and item.correction is None and item.comment == "Refunds are paused for this customer."
    wait_for(lambda: not list(sdk.list_examples(dataset_name=DATASET)), what="the withdrawn correction removed")

    reverse({"type": "edit", "edited_action": {"name": action, "args": {"answer": "Refund $200 to order A-100."}}},
            "Partial refund agreed")
    example = wait_for(lambda: list(sdk.list_examples(dataset_name=DATASET)), timeout=20, what="the new correction")
    assert [e.outputs for e in example] == [{"answer": "Refund $200 to order A-100."}]
    [item] = feedback_on(sdk, root.id)
    assert item.value == "edit" and item.score == 0.5 and item.correction == {"answer": "Refund $200 to order A-100."}
    with bridge.client("admin") as client:
        trail = client.get("/v1/audit", params={"review_id": review["id"]}).json()["items"]
    sent = [e["data"] for e in trail if e["kind"] == "langsmith.feedback"]
    assert [(e["version"], e["already_there"], len(e["examples_removed"])) for e in sent] == [(1, False, 0), (2, True, 1), (3, True, 0)]


def test_a_decision_reversed_during_an_outage_reaches_langsmith_only_as_the_new_verdict(bridge, sdk):
    root = trace_run(sdk)
    review = submit_run(bridge, root.id, metadata={"queue": "jira"})
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    with httpx2.Client() as client:
        client.post(f"{bridge.langsmith.url}/_emulator/config", json={"faults": [{"status": 503, "times": 1000}]})
    bridge.act("jira", key, "reject", "Not during an outage.")
    bridge.wait_status(review["id"], "rejected")
    with bridge.client("admin") as client:
        response = client.post(f"/v1/reviews/{review['id']}/decision",
                               json={"decisions": [{"type": "approve"}], "reason": "Customer sent the receipt"})
    assert response.status_code == 200, response.text
    with httpx2.Client() as client:
        client.post(f"{bridge.langsmith.url}/_emulator/config", json={"faults": []})
    feedback = wait_for(lambda: feedback_on(sdk, root.id), timeout=20, what="feedback after the outage")
    wait_for(lambda: bridge.audit_kinds(review["id"]).count("langsmith.feedback") == 1, what="the feedback job's audit")
    time.sleep(1.0)  # the first version's job, if it were to write, would have by now
    assert bridge.audit_kinds(review["id"]).count("langsmith.feedback") == 1  # the first version's job stood down
    [item] = feedback_on(sdk, root.id)
    assert item.value == "approve" and item.score == 1 and feedback[0].id == item.id
