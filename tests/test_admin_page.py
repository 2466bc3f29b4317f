"""The admin page in Debian's Chromium (through Playwright, no browser download): sign in,
edit a mapping, see a validation error, fix it, preview, save, restore the previous
version; and retry a failed review from the queue. Screenshots go to test-artifacts/."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from harness import KEYS, Bridge

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture
def page(tmp_path):
    if CHROMIUM is None:
        if os.environ.get("HITL_REQUIRE_BROWSER"):
            pytest.fail("Chromium is required here (install Debian's chromium package)")
        pytest.skip("Debian's chromium is not installed")
    from playwright.sync_api import sync_playwright

    bridge = Bridge(tmp_path).start()
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        tab = browser.new_page(viewport={"width": 1400, "height": 900})
        tab.set_default_timeout(15000)
        tab.bridge = bridge
        try:
            yield tab
        finally:
            browser.close()
            bridge.stop()


def sign_in(page) -> None:
    page.goto(f"{page.bridge.url}/admin")
    page.wait_for_url("**/admin/login")
    page.get_by_label("Admin API key").fill(KEYS["admin"])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/admin")


def test_edit_validate_fix_preview_save_and_restore(page):
    from playwright.sync_api import expect

    bridge, shot = page.bridge, lambda name: page.screenshot(path=str(ARTIFACTS / f"admin-{name}.png"), full_page=True)
    mapping_file = bridge.mappings_dir / "jira_review.yaml"
    original = mapping_file.read_text()
    sign_in(page)
    expect(page.get_by_role("heading", name="Open reviews by route")).to_be_visible()
    shot("1-queue")

    page.get_by_role("navigation", name="Admin").get_by_role("link", name="jira_review").click()
    status = page.locator("#status")
    expect(status).to_have_text("valid · saved")
    editor = page.get_by_label("jira_review.yaml")
    expect(editor).to_have_value(original)

    broken = original.replace("    Rejected: reject", "    Rejected: maybe")
    line = broken.splitlines().index("    Rejected: maybe") + 1
    editor.fill(broken)
    expect(status).to_have_text("1 problem")
    problem = page.locator("#problems li").first
    expect(problem).to_contain_text(f"line {line}")
    expect(problem).to_contain_text("decision.values.Rejected")
    expect(page.locator("#gutter .bad")).to_have_text(str(line))
    expect(page.locator("#save")).to_be_disabled()
    shot("2-validation-error")

    fixed = original.replace("labels: [ai-review]", "labels: [ai-review, admin-edited]")
    editor.fill(fixed)
    expect(status).to_have_text("valid · unsaved changes")
    page.get_by_role("tab", name="Diff").click()
    expect(page.locator("#diff .add")).to_contain_text("labels: [ai-review, admin-edited]")

    page.get_by_role("button", name="Preview", exact=True).click()
    preview = page.locator("#preview")
    expect(preview.locator("#ticket-view h3")).to_have_text("[AI review] Refund $750 to order A-100")
    expect(preview).to_contain_text("/rest/api/2/issue")
    expect(preview).to_contain_text('"admin-edited"')
    frame = page.frame_locator("#body-frame")
    expect(frame.locator("th").first).to_have_text("Confidence")
    shot("3-preview")

    page.get_by_role("button", name="Save").click()
    expect(status).to_have_text("saved as version 2")
    assert mapping_file.read_text() == fixed
    page.get_by_role("tab", name="History").click()
    expect(page.locator("#history tr[data-version]")).to_have_count(2)
    shot("4-saved")

    page.get_by_role("button", name="Restore v1").click()
    expect(status).to_have_text("restored v1 as version 3")
    expect(editor).to_have_value(original)
    assert mapping_file.read_text() == original
    expect(page.locator("#history tr[data-version]")).to_have_count(3)
    expect(page.locator("#history tr[data-version='3']")).to_contain_text("restore of v1")
    shot("5-restored")


def test_queue_shows_a_failed_review_and_retries_it(page):
    from playwright.sync_api import expect

    bridge = page.bridge
    mapping_file = bridge.mappings_dir / "jira_review.yaml"
    original = mapping_file.read_text()
    waiting = bridge.submit(title="Still waiting")
    bridge.wait_ticket(waiting["id"])
    with bridge.client("admin") as client:  # a mapping change that Jira will refuse
        etag = client.get("/v1/mappings/jira_review").headers["ETag"]
        broken = original.replace("issuetype: {name: Task}", "issuetype: {name: Epic}")
        assert client.put("/v1/mappings/jira_review", content=broken.encode(), headers={"If-Match": etag}).status_code == 200
    failed = bridge.submit(title="Refund that cannot become a ticket")
    bridge.wait_status(failed["id"], "failed")

    sign_in(page)
    row = page.locator(f"#failed tr[data-review='{failed['id']}']")
    expect(row).to_contain_text("Specify a valid issue type")
    expect(page.locator("[data-route='jira-queue']")).to_contain_text("Still waiting")
    stats_row = page.locator("#rollout tr[data-route-stats='jira-queue']")
    expect(stats_row).to_contain_text("failed 1, pending 1")  # nobody decided yet: no agreement rate
    expect(stats_row).to_contain_text("n/a")
    expect(page.locator("#rollout")).to_contain_text("in the last 30 days")
    page.locator("#rollout").get_by_role("link", name="7", exact=True).click()  # a week's window: the same reviews
    expect(page.locator("#rollout")).to_contain_text("in the last 7 days")
    expect(stats_row).to_contain_text("failed 1, pending 1")
    page.screenshot(path=str(ARTIFACTS / "admin-6-failed.png"), full_page=True)

    with bridge.client("admin") as client:  # the admin fixes the mapping, then retries
        etag = client.get("/v1/mappings/jira_review").headers["ETag"]
        assert client.put("/v1/mappings/jira_review", content=original.encode(), headers={"If-Match": etag}).status_code == 200
    row.get_by_role("button", name="Retry").click()
    expect(page.get_by_role("status")).to_contain_text(f"Review {failed['id']} queued again.")
    bridge.wait_status(failed["id"], "open")
    page.reload()
    expect(page.locator(f"#failed tr[data-review='{failed['id']}']")).to_have_count(0)
    page.screenshot(path=str(ARTIFACTS / "admin-7-retried.png"), full_page=True)
    assert bridge.review(waiting["id"])["status"] == "open"


def test_an_admin_reverses_a_decision_from_the_queue_page(page):
    """Approved on the ticket, then reversed to a rejection on the page: the agent is sent
    version 2 with the message, and the form says what became of the review; a review that
    is still open is refused with the reason."""
    from playwright.sync_api import expect

    from helpers import wait_for

    bridge = page.bridge
    review = bridge.submit()
    key = bridge.wait_ticket(review["id"])["ticket"]["key"]
    bridge.act("jira", key, "approve")
    bridge.wait_status(review["id"], "approved")
    undecided = bridge.submit(title="Still waiting for a person")

    sign_in(page)
    form = page.locator("#reverse")
    form.get_by_label("Review id").fill(undecided["id"])
    form.get_by_label("Reason").fill("Audit")
    form.get_by_role("button", name="Reverse").click()
    expect(page.get_by_role("alert")).to_contain_text("only a decided review can be reversed")
    form.get_by_label("Review id").fill(review["id"])
    form.get_by_label("Reason").fill("x" * 2001)
    form.get_by_role("button", name="Reverse").click()
    expect(page.get_by_role("alert")).to_contain_text("reason: String should have at most 2000 characters")

    form.get_by_label("Review id").fill(review["id"])
    form.get_by_label("New decision").select_option("reject")
    form.get_by_label("Message to the agent").fill("The order was already refunded.")
    form.get_by_label("Reason").fill("Duplicate refund found in the audit")
    form.get_by_role("button", name="Reverse").click()
    expect(page.get_by_role("status")).to_contain_text(f"Review {review['id']} is now rejected (decision version 2)")
    page.screenshot(path=str(ARTIFACTS / "admin-7-reversed.png"), full_page=True)

    reversed_ = bridge.wait_status(review["id"], "rejected")
    assert reversed_["decision"]["reason"] == "Duplicate refund found in the audit"
    assert reversed_["decision"]["reviewer"]["id"] == "api_key:admin"
    callbacks = wait_for(lambda: [c for c in bridge.callbacks_for(review["id"])
                                  if c.headers["webhook-id"] == f"msg_{review['id']}_v2"], what="version 2 callback")
    payload = json.loads(callbacks[0].body)
    assert payload["type"] == "review.decision_reversed" and payload["version"] == 2
    assert payload["decisions"] == [{"type": "reject", "message": "The order was already refunded."}]
