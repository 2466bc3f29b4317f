from __future__ import annotations

import pytest

from bridge.errors import MappingError
from bridge.routing import Router, parse_routes
from bridge.schemas import ReviewRequest


def request(**kw) -> ReviewRequest:
    return ReviewRequest.model_validate({"title": "t", "action_requests": [{"name": kw.pop("action", "issue_refund")}], **kw})


ROUTES = """
routes:
  - name: gold
    when: "metadata.customer_tier == 'gold' and confidence < 0.9"
    mapping: a
  - name: refunds
    when: "'issue_refund' in action_names and (cost or 0) > 500"
    mapping: b
  - name: canary
    when: "'send_email' in action_names"
    mapping: c
    sample: 0.25
"""


def test_first_matching_rule_wins_and_missing_data_is_no_match():
    router = Router(parse_routes(ROUTES))
    assert router.route("rev_1", request(confidence=0.5, metadata={"customer_tier": "gold"})).route.name == "gold"
    assert router.route("rev_1", request(confidence=0.95, cost=900, metadata={"customer_tier": "gold"})).route.name == "refunds"
    assert router.route("rev_1", request(cost=900)).route.name == "refunds"  # no metadata, no confidence: not gold
    auto = router.route("rev_1", request(cost=10))
    assert auto.route is None and "no route requires review" in auto.reason


def test_sample_rate_routes_a_stable_share():
    router = Router(parse_routes(ROUTES))
    picked = [router.route(f"rev_{i:04d}", request(action="send_email")).route is not None for i in range(400)]
    assert 60 < sum(picked) < 140
    again = [router.route(f"rev_{i:04d}", request(action="send_email")).route is not None for i in range(400)]
    assert picked == again


@pytest.mark.parametrize("text, complaint", [
    ("routes: [{name: a, when: 'confidence <', mapping: m}]", "does not compile"),
    ("routes: [{name: a, mapping: m, sample: 2}]", "sample"),
    ("routes: [{name: a, mapping: m}, {name: a, mapping: m}]", "unique"),
    ("routes: [{name: a, mapping: m, mode: maybe}]", "mode"),
])
def test_bad_routes_are_refused_clearly(text, complaint):
    with pytest.raises(MappingError) as caught:
        parse_routes(text)
    assert complaint in caught.value.message + str(caught.value.details)


def test_conditions_cannot_reach_python():
    router = Router(parse_routes("routes: [{name: a, when: \"metadata.__class__.__mro__\", mapping: m}]"))
    assert router.route("rev_1", request(metadata={"x": 1})).route is None


def test_conditions_cannot_change_the_request_they_route():
    router = Router(parse_routes("routes: [{name: a, when: \"metadata.pop('tier') == 'gold'\", mapping: m}]"))
    review = request(metadata={"tier": "gold"})
    dumped = review.model_dump(mode="json")
    assert router.route("rev_1", review, dumped=dumped).route is None
    assert dumped["metadata"] == {"tier": "gold"}  # what is stored as the review's request
