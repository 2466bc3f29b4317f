"""What the examples need from ``hitl-bridge serve --sandbox``: its agent key, its
emulators, and (with ``--auto``) a stand-in reviewer acting through an emulator's REST API,
exactly as a person on the ticket system's page would."""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

import httpx2


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bridge", default="http://127.0.0.1:8080", help="URL of `hitl-bridge serve --sandbox`")
    parser.add_argument("--auto", choices=["approve", "edit", "reject"], help="decide on the reviewer's behalf")
    parser.add_argument("--edit", default=None, help="with --auto edit: the new text or JSON arguments")
    return parser.parse_args()


def facts(bridge_url: str) -> dict[str, Any]:
    response = httpx2.get(f"{bridge_url}/sandbox", timeout=10)
    response.raise_for_status()
    return response.json()


def emulator(facts_: dict[str, Any], connection: str) -> httpx2.Client:
    conn = next(c for c in facts_["connections"] if c["name"] == connection)
    return httpx2.Client(base_url=conn["base_url"], verify=conn["ca_bundle"] or True, timeout=10)


def decide_later(bridge_url: str, agent_key: str, facts_: dict[str, Any], review_id: str, action: str, body: str | None) -> None:
    """Once the review's ticket exists, act on it as the reviewer would (in a thread)."""

    def run() -> None:
        headers = {"Authorization": f"Bearer {agent_key}"}
        for _ in range(200):
            review = httpx2.get(f"{bridge_url}/v1/reviews/{review_id}", headers=headers, timeout=10).json()
            if review.get("ticket") and review["status"] == "open":
                ticket = review["ticket"]
                with emulator(facts_, ticket["connection"]) as client:
                    client.post("/_emulator/act", json={"key": ticket["key"], "action": action, "body": body}).raise_for_status()
                return
            time.sleep(0.1)

    threading.Thread(target=run, daemon=True).start()
