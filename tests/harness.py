"""A whole bridge over real HTTP: emulators, the bridge (API + worker) and an agent's
callback receiver, each on its own loopback port."""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path
from typing import Any

import httpx2

from bridge.app import create_app
from bridge.config import ApiKey, Settings, WorkerSettings, hash_api_key
from bridge.db import create_database, drop_database
from connectors.emulators import EMULATORS, Act, start_emulator
from connectors.emulators.base import RunningServer, serve
from helpers import Recorder, wait_for
from procs import Proc

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"agent": "agent-key-0123456789", "reader": "reader-key-0123456789", "admin": "admin-key-0123456789"}
CALLBACK_SECRET = "whsec_" + base64.b64encode(b"callback-secret-for-tests!!").decode()

DEFAULT_ROUTES = """
routes:
  - name: jira-queue
    when: "metadata.queue == 'jira'"
    mapping: jira_review
  - name: shadow-jira
    when: "metadata.queue == 'shadow'"
    mapping: jira_review
    mode: shadow
  - name: low-confidence
    when: "confidence is not none and confidence < 0.8"
    mapping: jira_review
"""


class TestDatabase:
    """A fresh, empty database for one test bridge: a SQLite file under the test's folder,
    or, when ``HITL_TEST_DATABASE_URL`` names a PostgreSQL server (any database on it, used
    only to create and drop others), a new database there, dropped again by ``drop()``."""

    __test__ = False  # not a pytest class

    def __init__(self, tmp_path: Path, *, name: str = "bridge"):
        self.server_url = os.environ.get("HITL_TEST_DATABASE_URL", "")
        self.name = None
        if not self.postgres_configured():
            self.url = f"sqlite:///{tmp_path / f'{name}.db'}"
            return
        self.name = f"hitl_test_{os.getpid()}_{os.urandom(4).hex()}"
        self.url = create_database(self.server_url, self.name)

    @staticmethod
    def postgres_configured() -> bool:
        return os.environ.get("HITL_TEST_DATABASE_URL", "").startswith("postgres")

    def drop(self) -> None:
        if self.name is not None:
            drop_database(self.server_url, self.name)
            self.name = None


def shipped_mapping(name: str) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((ROOT / "mappings" / f"{name}.yaml").read_text())


def mapping_variant(shipped: str, name: str, **changes: Any) -> str:
    """A shipped sample mapping under another name, some top-level sections replaced (YAML)."""
    import yaml

    return yaml.safe_dump({**shipped_mapping(shipped), "name": name, **changes})


def api_keys() -> list[ApiKey]:
    return [
        ApiKey(name="agent", hash=hash_api_key(KEYS["agent"]), scopes=["reviews:write", "reviews:read"]),
        ApiKey(name="reader", hash=hash_api_key(KEYS["reader"]), scopes=["reviews:read"]),
        ApiKey(name="admin", hash=hash_api_key(KEYS["admin"]), scopes=["admin", "audit"]),
    ]


class Bridge:
    """Starts the emulators named in ``vendors`` and a bridge wired to them."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        vendors: tuple[str, ...] = ("jira",),
        routes: str = DEFAULT_ROUTES,
        mappings: dict[str, str] | None = None,
        worker: dict[str, Any] | None = None,
    ):
        self.tmp_path = tmp_path
        self.mappings_dir = tmp_path / "mappings"
        self.mappings_dir.mkdir(exist_ok=True)
        for vendor in vendors:
            shutil.copy(ROOT / "mappings" / f"{vendor}_review.yaml", self.mappings_dir)
        for name, text in (mappings or {}).items():
            (self.mappings_dir / f"{name}.yaml").write_text(text)
        (self.mappings_dir / "routes.yaml").write_text(routes)
        self.emulators = {v: start_emulator(EMULATORS[v]()) for v in vendors}
        self.callbacks = Recorder().start()
        self.database = TestDatabase(tmp_path)
        self.database_url = self.database.url
        self.worker_settings = WorkerSettings(
            poll_interval_seconds=0.05, lease_seconds=3, backoff_initial_seconds=0.2, backoff_max_seconds=2, **(worker or {})
        )
        self.settings = Settings(
            database_url=self.database_url,
            mappings_dir=self.mappings_dir,
            connections={name: running.connection(name) for name, running in self.emulators.items()},
            api_keys=api_keys(),
            callback_secret=CALLBACK_SECRET,
            worker=self.worker_settings,
        )
        self.server: RunningServer | None = None
        self.process = None  # a procs.Proc while start_process's bridge runs
        self.url = ""

    # ----- running the bridge ----------------------------------------------------------
    def start(self) -> "Bridge":
        self.server = serve(create_app(self.settings), name="bridge")
        self._wire(self.server.url)
        return self

    def _wire(self, url: str) -> None:
        self.url = url
        for name, running in self.emulators.items():
            running.emulator.settings.webhook_url = f"{url}/v1/webhooks/{name}"

    def config_file(self) -> Path:
        import yaml

        data = self.settings.model_dump(mode="json")
        data["callback_secret"] = CALLBACK_SECRET
        for name, conn in self.settings.connections.items():
            data["connections"][name] = {
                k: (v.get_secret_value() if hasattr(v, "get_secret_value") else v)
                for k, v in dict(conn).items()
            }
            data["connections"][name]["webhook_secrets"] = conn.secrets()
        data["mappings_dir"] = str(self.mappings_dir)
        path = self.tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    def start_process(self) -> "Bridge":
        """The bridge as a separate process (``hitl-bridge serve``), so a test can kill it;
        each start on a port of its own (``procs.Proc``: another if that one is taken)."""
        self.process = Proc(self.config_file(), self.tmp_path / "bridge.log").start()
        self._wire(self.process.url)
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process = None

    def stop(self) -> None:
        if self.server:
            self.server.stop()
            self.server = None
        if self.process:
            self.process.terminate(timeout=15)
        for running in self.emulators.values():
            running.stop()
        self.callbacks.stop()
        self.database.drop()

    # ----- agent side ------------------------------------------------------------------
    def client(self, key: str = "agent") -> httpx2.Client:
        return httpx2.Client(base_url=self.url, headers={"Authorization": f"Bearer {KEYS[key]}"}, timeout=30)

    def review_body(self, **overrides: Any) -> dict[str, Any]:
        body = {
            "title": "Refund $750 to order A-100",
            "action_requests": [
                {"name": "issue_refund", "args": {"order_id": "A-100", "amount": 750}, "description": "Customer reports a damaged item"}
            ],
            "allowed_decisions": ["approve", "edit", "reject", "respond"],
            "confidence": 0.62,
            "reasoning": "The photo shows a broken item; policy allows refunds under $1000.",
            "evidence": [{"title": "Order A-100", "url": "https://shop.example/orders/A-100", "snippet": "Delivered 2 days ago"}],
            "metadata": {"queue": "jira", "customer_tier": "gold"},
            "langsmith": {"run_id": "9d3f1a52-5b2c-4c39-9a44-0e5b7c1d2f00", "trace_url": "https://smith.langchain.com/r/9d3f1a52"},
            "resume": {"callback_url": f"{self.callbacks.url}/hitl"},
        }
        body.update(overrides)
        return body

    def submit(self, *, headers: dict[str, str] | None = None, **overrides: Any) -> dict[str, Any]:
        with self.client() as client:
            response = client.post("/v1/reviews", json=self.review_body(**overrides), headers=headers or {})
        assert response.status_code in (200, 201), response.text
        # A 2xx without an id is not the bridge's answer (another test's server on the port:
        # see procs._ready): say who answered what.
        assert "id" in response.json(), (str(response.url), response.status_code, dict(response.headers), response.text[:500])
        return response.json()

    def review(self, review_id: str) -> dict[str, Any]:
        with self.client() as client:
            response = client.get(f"/v1/reviews/{review_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_review(self, review_id: str, predicate, *, timeout: float = 15, what: str = "review state") -> dict[str, Any]:
        return wait_for(lambda: (r := self.review(review_id)) and predicate(r) and r, timeout=timeout, what=what)

    def wait_status(self, review_id: str, status: str, **kwargs) -> dict[str, Any]:
        return self.wait_review(review_id, lambda r: r["status"] == status, what=f"status {status}", **kwargs)

    def wait_ticket(self, review_id: str) -> dict[str, Any]:
        return self.wait_review(review_id, lambda r: r["ticket"] is not None and r["status"] != "queued", what="ticket")

    def act(self, vendor: str, key: str, action: str, body: str | None = None, **kw: Any) -> dict[str, Any]:
        emulator = self.emulators[vendor].emulator
        with emulator.lock:
            return emulator.act(Act(key=key, action=action, body=body, **kw))

    def tickets(self, vendor: str = "jira") -> list[dict[str, Any]]:
        emulator = self.emulators[vendor].emulator
        with emulator.lock:
            return emulator.list_tickets()

    def ticket(self, vendor: str, key: str) -> dict[str, Any]:
        return next(t for t in self.tickets(vendor) if t["key"] == key)

    def verified_callback(self, review_id: str) -> dict[str, Any]:
        """The agent's first callback for the review, its Standard Webhooks signature checked."""
        from standardwebhooks import Webhook

        hit = wait_for(lambda: self.callbacks_for(review_id), what="agent callback")[0]
        payload = Webhook(CALLBACK_SECRET).verify(hit.body, hit.headers)
        assert hit.headers["webhook-id"] == f"msg_{review_id}"
        return payload

    def audit_kinds(self, review_id: str) -> list[str]:
        with self.client("admin") as client:
            response = client.get("/v1/audit", params={"review_id": review_id})
        assert response.status_code == 200, response.text
        return [e["kind"] for e in response.json()["items"]]

    def comments(self, vendor: str, key: str, *, public: bool | None = None) -> list[str]:
        return [c["body"] for c in self.ticket(vendor, key)["comments"] if public is None or c["public"] == public]

    def wait_comment(self, vendor: str, key: str, text: str) -> None:
        wait_for(lambda: any(text in body for body in self.comments(vendor, key)), what=f"comment containing {text!r}")

    def callbacks_for(self, review_id: str) -> list:
        import json

        return [r for r in self.callbacks.requests if json.loads(r.body).get("review_id") == review_id]

