"""`hitl-bridge doctor` against the emulators: the shipped mappings pass; each deliberately
broken mapping (one per kind of problem) is reported with its file and line."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from bridge import doctor
from harness import ROOT, Bridge

VENDORS = ("jira", "servicenow", "zendesk", "salesforce")


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    bridge = Bridge(tmp_path_factory.mktemp("doctor"), vendors=VENDORS, routes="routes: []\n")
    yield bridge
    bridge.stop()


def shipped(vendor: str) -> str:
    return (ROOT / "mappings" / f"{vendor}_review.yaml").read_text()


def problems_for(bridge: Bridge, vendor: str, text: str) -> list[doctor.Problem]:
    path = bridge.mappings_dir / f"{vendor}_review.yaml"
    path.write_text(text)
    try:
        report = next(r for r in doctor.run(bridge.settings) if r.name == vendor)
    finally:
        path.write_text(shipped(vendor))
    return report.problems


def line_of(text: str, fragment: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if fragment in line)


def test_the_shipped_mappings_pass(emulated):
    reports = doctor.run(emulated.settings)
    assert [(r.name, r.ok, r.problems) for r in reports] == [(v, True, []) for v in VENDORS]
    assert all(r.account for r in reports)


BROKEN = [
    # vendor, replace, with, the line's fragment, words in the message
    ("jira", "project: {key: HITL}", "project: {key: NOPE}", "project: {key: NOPE}", "no project 'NOPE'"),
    ("jira", "issuetype: {name: Task}", "issuetype: {name: Service Request}", "issuetype:", "no issue type 'Service Request'"),
    ("jira", "labels: [ai-review]", "labels: [ai-review]\n    customfield_99999: x", "customfield_99999", "no field 'customfield_99999'"),
    ("jira", "    Responded: respond", "    Answered: respond", "Answered: respond", "status 'Answered' is not in the workflow"),
    ("jira", "fields: {status: Cancelled}", "fields: {status: Withdrawn}", "fields: {status: Withdrawn}", "'Withdrawn'"),
    ("servicenow", "__table: u_ai_review", "__table: u_ai_reviews", "__table: u_ai_reviews", "no table 'u_ai_reviews'"),
    ("servicenow", "u_trace_url:", "u_trace_link:", "u_trace_link:", "no field 'u_trace_link'"),
    ("servicenow", "approval: requested", "approval: asked", "approval: asked", "'asked' is not a choice of u_ai_review.approval"),
    ("servicenow", "assignment_group: AI Review", "assignment_group: AI Reviewers", "assignment_group", "no 'AI Reviewers'"),
    ("servicenow", "    responded: respond", "    answered: respond", "answered: respond", "'answered' is not a choice"),
    ("zendesk", "edit_field: custom_fields.360000102", "edit_field: custom_fields.360009999", "edit_field", "no ticket field 360009999"),
    ("zendesk", "custom_fields: [{id: 360000102, value: null}]",
     "custom_fields: [{id: 360000102, value: null}, {id: 360000101, value: ai_decision_maybe}]", "custom_fields: [",
     "'ai_decision_maybe' is not an option"),
    ("zendesk", "additional_tags: [ai_review_pending]", "additional_tags: [ai_review_pending]\n    group_id: 999", "group_id", "no group 999"),
    ("zendesk", "    status: pending", "    status: pending", None, None),  # reply.fields are the origin's: not checked here
    ("zendesk", "additional_tags: [ai_review_pending]", "additional_tags: [ai_review_pending]\n    colour: red", "colour: red", "not a Zendesk ticket property"),
    ("salesforce", "Origin: AI Agent", "Origin: AI Agent\n    __object: Cases", "__object: Cases", "no object 'Cases'"),
    ("salesforce", "Origin: AI Agent", "Origin: AI Agent\n    Reason__c: x", "Reason__c", "no field 'Reason__c'"),
    ("salesforce", "    Rejected: reject", "    Declined: reject", "Declined: reject", "'Declined' is not a value of the Case.Status picklist"),
    ("salesforce", "fields: {status: Closed}", "fields: {status: Shut}", "fields: {status: Shut}", "'Shut' is not a value"),
]


@pytest.mark.parametrize("vendor, old, new, fragment, message", BROKEN, ids=[f"{b[0]}:{b[3] or 'none'}" for b in BROKEN])
def test_each_kind_of_problem_names_the_file_and_line(emulated, vendor, old, new, fragment, message):
    text = shipped(vendor)
    assert old in text
    broken = text.replace(old, new, 1)
    problems = problems_for(emulated, vendor, broken)
    if fragment is None:
        assert problems == []
        return
    assert len(problems) == 1, problems
    problem = problems[0]
    assert message in problem.message
    assert problem.file.endswith(f"{vendor}_review.yaml")
    assert problem.line == line_of(broken, fragment), (problem, broken.splitlines()[problem.line - 1])


def test_bad_credentials_are_reported_per_connection(tmp_path):
    bridge = Bridge(tmp_path, vendors=("jira", "zendesk"), routes="routes: []\n")
    try:
        settings = bridge.settings.model_copy(deep=True)
        settings.connections["jira"] = settings.connections["jira"].model_copy(update={"api_token": SecretStr("wrong")})
        reports = {r.name: r for r in doctor.run(settings)}
    finally:
        bridge.stop()
    assert not reports["jira"].ok and "credentials do not work" in reports["jira"].problems[0].message
    assert reports["zendesk"].ok


def test_the_api_and_the_command_line(tmp_path):
    from typer.testing import CliRunner

    from bridge.cli import app

    bridge = Bridge(tmp_path, vendors=("jira",)).start()
    try:
        with bridge.client("admin") as client:
            report = client.get("/v1/doctor").json()
            assert report["ok"] is True and report["connections"][0]["mappings"] == ["jira_review"]
        with bridge.client("agent") as client:
            assert client.get("/v1/doctor").status_code == 403
        path = bridge.mappings_dir / "jira_review.yaml"
        path.write_text(path.read_text().replace("issuetype: {name: Task}", "issuetype: {name: Epic}"))
        result = CliRunner().invoke(app, ["doctor", "--config", str(bridge.config_file())])
        assert result.exit_code == 1, result.output
        line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "issuetype:" in text)
        assert f"{path}:{line} ticket.fields.issuetype: project HITL has no issue type 'Epic'" in result.output
    finally:
        bridge.stop()
