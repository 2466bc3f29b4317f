"""The mapping engine: golden renders of the shipped mappings, sandboxing, clear errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bridge.errors import MappingError
from bridge.mapping import load_mappings, parse_mapping, render_ticket
from bridge.schemas import ReviewRequest

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden"
SAMPLE = ReviewRequest.model_validate({
    "title": "Refund $750 to order A-100",
    "action_requests": [
        {"name": "issue_refund", "args": {"order_id": "A-100", "amount": 750}, "description": "Customer reports a damaged item"},
        {"name": "reply", "args": {"body": "Hi Carol, we are refunding order A-100 in full."}},
    ],
    "allowed_decisions": ["approve", "edit", "reject"],
    "confidence": 0.62,
    "cost": 750,
    "reasoning": "Photo shows a broken item | policy allows < $1000",
    "evidence": [{"title": "Order A-100", "url": "https://shop.example/orders/A-100", "snippet": "Delivered 2 days ago"}],
    "metadata": {"customer_tier": "gold"},
    "origin": {"connection": "zendesk", "ticket_id": "35436"},
    "langsmith": {"run_id": "run-1", "trace_url": "https://smith.langchain.com/r/run-1"},
})


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "mappings").glob("*_review.yaml")))
def test_shipped_mappings_render_as_the_golden_files(name):
    mapping = parse_mapping((ROOT / "mappings" / f"{name}.yaml").read_text(), file=f"{name}.yaml")
    rendered = render_ticket(mapping, "rev_golden", SAMPLE, bridge_url="http://bridge.example")
    text = json.dumps(rendered.model_dump(), indent=2, ensure_ascii=False, sort_keys=True) + "\n"
    golden = GOLDEN / f"{name}.json"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), f"{name} renders differently; review and run with UPDATE_GOLDEN=1"


def test_all_shipped_mappings_and_routes_load():
    mappings = load_mappings(ROOT / "mappings")
    assert {"jira_review"} <= set(mappings)


def mapping_with(fields: dict) -> str:
    return json.dumps({"name": "m", "connection": "jira", "ticket": {"fields": fields},
                       "decision": {"values": {"Approved": "approve"}}})


@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ review.__class__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ review.metadata.clear() }}",  # read-only data, too
])
def test_templates_cannot_reach_python(template):
    mapping = parse_mapping(mapping_with({"summary": template}), file="m.yaml")
    with pytest.raises(MappingError) as caught:
        render_ticket(mapping, "rev_x", SAMPLE)
    assert "ticket.fields.summary" in caught.value.message


def test_errors_name_file_field_and_reason():
    with pytest.raises(MappingError) as caught:
        parse_mapping("name: m\nconnection: jira\nticket: {fields: {summary: '{{ unclosed'}}\ndecision: {values: {A: approve}}\n", file="m.yaml")
    assert "ticket.fields.summary" in caught.value.message and "does not compile" in caught.value.message
    with pytest.raises(MappingError) as caught:
        parse_mapping("name: m\nconnection: jira\nticket: {fields: {}}\ndecision: {values: {A: maybe}}\n", file="m.yaml")
    assert caught.value.details[0]["file"] == "m.yaml"
    assert caught.value.details[0]["field"] == "decision.values.A"
    with pytest.raises(MappingError) as caught:
        parse_mapping("name: m\n  bad: [indent\n", file="m.yaml")
    assert caught.value.details[0]["line"] is not None
    with pytest.raises(MappingError):
        render_ticket(parse_mapping(mapping_with({"summary": "{{ review.nope.deeper }}"}), file="m.yaml"), "rev_x", SAMPLE)


def test_cli_validate_and_preview(tmp_path):
    from typer.testing import CliRunner

    from bridge.cli import app

    runner = CliRunner()
    ok = runner.invoke(app, ["mappings", "validate", "--dir", str(ROOT / "mappings")])
    assert ok.exit_code == 0, ok.output
    review = tmp_path / "review.json"
    review.write_text(SAMPLE.model_dump_json())
    preview = runner.invoke(app, ["mappings", "preview", "jira_review", str(review), "--dir", str(ROOT / "mappings")])
    assert preview.exit_code == 0, preview.output
    assert json.loads(preview.output)["fields"]["project"] == {"key": "HITL"}
    (tmp_path / "broken.yaml").write_text("name: broken\nconnection: jira\nticket: {fields: {}}\n")
    bad = runner.invoke(app, ["mappings", "validate", "--dir", str(tmp_path)])
    assert bad.exit_code == 1 and "decision" in bad.output
