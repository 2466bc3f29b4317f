"""`hitl-bridge serve --sandbox`: no credentials, every emulator, the reviewer page.

The page test drives Debian's Chromium through Playwright (no browser download)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest

from connectors.emulators.base import free_socket
from helpers import wait_for

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    log = tmp_path_factory.mktemp("sandbox") / "sandbox.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "serve", "--sandbox", "--port", str(port)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(log, "wb"),
    )
    url = f"http://127.0.0.1:{port}"

    def ready():
        if process.poll() is not None:
            raise AssertionError(f"sandbox exited: {log.read_text()[-3000:]}")
        try:
            response = httpx2.get(f"{url}/readyz", timeout=2)
            return response.status_code == 200 and "checks" in response.json()
        except (httpx2.HTTPError, ValueError):
            return False

    wait_for(ready, timeout=60, what="sandbox to start")
    yield url
    process.terminate()
    process.wait(timeout=15)


def test_sandbox_describes_itself(sandbox):
    facts = httpx2.get(f"{sandbox}/sandbox").json()
    assert set(facts["api_keys"]) == {"agent", "admin"}
    assert facts["callback_secret"].startswith("whsec_")
    assert facts["page_url"] == f"{sandbox}/sandbox/ui"
    by_type = {c["type"]: c for c in facts["connections"]}
    assert set(by_type) == {"jira", "servicenow", "zendesk", "salesforce"}
    for conn in facts["connections"]:
        assert conn["base_url"].startswith(("http://127.0.0.1", "https://127.0.0.1"))
        assert conn["webhook_secret"] and conn["credentials"]
        if conn["base_url"].startswith("https"):
            assert Path(conn["ca_bundle"]).is_file()


def test_the_jira_client_works_with_the_sandbox_credentials(sandbox):
    from jira import JIRA

    jira = next(c for c in httpx2.get(f"{sandbox}/sandbox").json()["connections"] if c["type"] == "jira")
    client = JIRA(server=jira["base_url"], basic_auth=(jira["credentials"]["email"], jira["credentials"]["api_token"]))
    assert client.myself()["emailAddress"]


@pytest.mark.parametrize("queue", ["jira", "servicenow", "zendesk", "salesforce"])
def test_each_sample_route_opens_a_ticket(sandbox, queue):
    key = httpx2.get(f"{sandbox}/sandbox").json()["api_keys"]["agent"]
    with httpx2.Client(base_url=sandbox, headers={"Authorization": f"Bearer {key}"}) as client:
        review = client.post("/v1/reviews", json={
            "title": f"Refund via {queue}", "confidence": 0.99,
            "action_requests": [{"name": "issue_refund", "args": {"order_id": "A-1", "amount": 10}}],
            "metadata": {"queue": queue},
        }).json()
        assert review["route"]["name"] == f"sandbox-{queue}"
        opened = wait_for(lambda: (r := client.get(f"/v1/reviews/{review['id']}").json())["status"] == "open" and r,
                          timeout=20, what=f"{queue} ticket")
    assert opened["ticket"]["connection"] == queue


def test_a_person_approves_on_the_page(sandbox):
    if CHROMIUM is None:
        if os.environ.get("HITL_REQUIRE_BROWSER"):
            pytest.fail("Chromium is required here (install Debian's chromium package)")
        pytest.skip("Debian's chromium is not installed")
    from playwright.sync_api import sync_playwright

    key = httpx2.get(f"{sandbox}/sandbox").json()["api_keys"]["agent"]
    with httpx2.Client(base_url=sandbox, headers={"Authorization": f"Bearer {key}"}) as client:
        review = client.post("/v1/reviews", json={
            "title": "Page approval test", "action_requests": [{"name": "issue_refund", "args": {"order_id": "B-7", "amount": 20}}],
            "metadata": {"queue": "jira"},
        }).json()
        ticket = wait_for(lambda: client.get(f"/v1/reviews/{review['id']}").json()["ticket"], timeout=20, what="ticket")

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        page = browser.new_page()
        page.goto(f"{sandbox}/sandbox/ui")
        customer = page.locator("#zendesk .ticket").filter(has_text="Refund for damaged blender").locator("details.customer-view")
        customer.locator("summary").click()
        assert "My blender" in customer.inner_text()  # the customer's own words, public
        card = page.locator(f"#jira .ticket[data-key='{ticket['key']}']")
        assert "Page approval test" in card.inner_text()
        card.locator("textarea").fill("Looks right to me.")
        card.get_by_role("button", name="Approve", exact=True).click()
        page.wait_for_url("**/sandbox/ui?notice=*")
        assert "approve sent" in page.get_by_role("status").inner_text()
        page.screenshot(path=str(ARTIFACTS / "sandbox-approved.png"), full_page=True)
        browser.close()

    with httpx2.Client(base_url=sandbox, headers={"Authorization": f"Bearer {key}"}) as client:
        decided = wait_for(lambda: (r := client.get(f"/v1/reviews/{review['id']}").json())["status"] == "approved" and r,
                           timeout=20, what="approval from the page")
    assert decided["decision"]["reviewer"]["email"] == "alice@example.com"
