"""A stateful fake of the LangSmith REST subset the ``langsmith`` SDK calls for the bridge.

Served over real HTTP so the real SDK ``Client`` talks to it unmodified: ``GET /info``,
runs (``POST /runs``, ``PATCH /runs/{id}``, ``POST /runs/batch``, ``GET /runs/{id}``,
``POST /runs/query``), the web app's run page (trace links), projects (``GET /sessions``), feedback (``POST/GET /feedback``, ``PATCH /feedback/{id}``),
datasets (``POST/GET /datasets``) and examples (``POST/GET /examples``, ``DELETE /examples/{id}``), in the SDK's own
shapes (``langsmith.schemas``: Run, FeedbackCreate/Feedback, Dataset, Example).

``GET /info`` answers so that the SDK sends each call as one plain request: no multipart
example uploads, reads through ``GET /runs/{id}`` (ClickHouse-backed, not SmithDB-only).

Automation rules: ``POST /_emulator/rules/fire`` with ``{"run_ids": [...]}`` sends the
rule-webhook payload LangSmith documents (``rule_id``, ``start_time``, ``end_time``,
``runs``, ``feedback_stats``) to ``webhook_url`` (put the secret in its query string, as
LangSmith advises; it is also sent as the ``X-Webhook-Secret`` header). Faults and latency
come from the shared ``/_emulator/config``.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .base import Emulator

TENANT_ID = "2ebda79f-2946-4491-a9ad-d642f49e0815"
SERVER_VERSION = "0.10.130"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value / 1000 if value > 1e11 else value, tz=timezone.utc).isoformat()
    return str(value)


def _dotted_time(start_time: str) -> str:
    moment = datetime.fromisoformat(start_time.replace("Z", "+00:00"))
    return moment.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


class LangSmithEmulator(Emulator):
    vendor = "langsmith"

    def __init__(self, *, api_key: str = "lsv2_emulator_key", **settings: Any):
        self.api_key = api_key
        super().__init__(**settings)

    # ----- state ---------------------------------------------------------------------
    def reset(self) -> None:
        self.sessions: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.feedback: dict[str, dict[str, Any]] = {}
        self.datasets: dict[str, dict[str, Any]] = {}
        self.examples: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self._session("default")

    def _session(self, name: str) -> dict[str, Any]:
        for session in self.sessions.values():
            if session["name"] == name:
                return session
        session = {"id": str(uuid.uuid4()), "name": name, "tenant_id": TENANT_ID, "start_time": _now(),
                   "end_time": None, "description": None, "extra": None, "reference_dataset_id": None, "run_count": 0}
        self.sessions[session["id"]] = session
        return session

    def add_run(self, body: dict[str, Any]) -> dict[str, Any]:
        """Store a run as ``POST /runs`` would (the SDK's RunCreate shape)."""
        run_id = str(body.get("id") or uuid.uuid4())
        session = self.sessions.get(str(body.get("session_id") or "")) or self._session(body.get("session_name") or "default")
        start_time = _iso(body.get("start_time")) or _now()
        parent = str(body["parent_run_id"]) if body.get("parent_run_id") else None
        trace_id = str(body.get("trace_id") or (self.runs[parent]["trace_id"] if parent in self.runs else run_id))
        dotted = body.get("dotted_order")
        if not dotted:
            own = f"{_dotted_time(start_time)}{run_id}"
            dotted = f"{self.runs[parent]['dotted_order']}.{own}" if parent in self.runs else own
        run = {
            "id": run_id,
            "name": body.get("name") or "run",
            "run_type": body.get("run_type") or "chain",
            "start_time": start_time,
            "end_time": _iso(body.get("end_time")),
            "inputs": body.get("inputs") or {},
            "outputs": body.get("outputs"),
            "extra": body.get("extra") or {"metadata": {}},
            "error": body.get("error"),
            "serialized": body.get("serialized"),
            "events": body.get("events") or [],
            "tags": body.get("tags") or [],
            "reference_example_id": body.get("reference_example_id"),
            "parent_run_id": parent,
            "session_id": session["id"],
            "trace_id": trace_id,
            "dotted_order": dotted,
            "status": "error" if body.get("error") else ("success" if body.get("end_time") else "pending"),
            "manifest_id": None,
            "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
            "prompt_cost": None, "completion_cost": None, "total_cost": None,
            "first_token_time": None,
            "in_dataset": False,
        }
        self.runs[run_id] = run
        session["run_count"] += 1
        return run

    def update_run(self, run_id: str, body: dict[str, Any]) -> dict[str, Any]:
        run = self.runs[run_id]
        for key in ("outputs", "error", "events", "tags", "inputs"):
            if key in body and body[key] is not None:
                run[key] = body[key]
        if body.get("extra"):
            run["extra"] = {**(run.get("extra") or {}), **body["extra"]}
        if body.get("end_time"):
            run["end_time"] = _iso(body["end_time"])
            run["status"] = "error" if run.get("error") else "success"
        return run

    def run_out(self, run: dict[str, Any]) -> dict[str, Any]:
        """A run as ``GET /runs/{id}`` answers it (``langsmith.schemas.Run``)."""
        children = [r["id"] for r in self.runs.values() if r["parent_run_id"] == run["id"]]
        parents = [segment.split("Z", 1)[1] for segment in run["dotted_order"].split(".")[:-1]]
        app_path = (f"/o/{TENANT_ID}/projects/p/{run['session_id']}/r/{run['id']}"
                    f"?trace_id={run['trace_id']}&start_time={run['start_time']}")
        return {**run, "child_run_ids": children, "parent_run_ids": parents, "app_path": app_path,
                "feedback_stats": self.feedback_stats(run["id"]) or None}

    def feedback_stats(self, run_id: str) -> dict[str, Any]:
        stats: dict[str, Any] = {}
        for item in self.feedback.values():
            if item["run_id"] != run_id:
                continue
            entry = stats.setdefault(item["key"], {"n": 0, "avg": None, "show_feedback_arrow": False, "values": {}, "_sum": 0.0})
            entry["n"] += 1
            if isinstance(item.get("score"), (int, float)):
                entry["_sum"] += float(item["score"])
                entry["avg"] = entry["_sum"] / entry["n"]
            elif isinstance(item.get("value"), str):
                entry["values"][item["value"]] = entry["values"].get(item["value"], 0) + 1
        for entry in stats.values():
            entry.pop("_sum")
        return stats

    # ----- ticket-system hooks (LangSmith has no tickets) ------------------------------
    def list_tickets(self) -> list[dict[str, Any]]:
        return []

    def act(self, act) -> dict[str, Any]:
        raise ValueError("LangSmith has no tickets to act on")

    def error_response(self, status: int, message: str, *, retry_after: int | str | None = None) -> Response:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        return JSONResponse({"detail": message}, status_code=status, headers=headers)

    # ----- HTTP ----------------------------------------------------------------------
    def routes(self) -> list:
        return [
            Route("/info", self._info, methods=["GET"]),
            Route("/sessions", self._sessions, methods=["GET"]),
            Route("/runs", self._create_run, methods=["POST"]),
            Route("/runs/batch", self._batch, methods=["POST"]),
            Route("/runs/query", self._query_runs, methods=["POST"]),
            Route("/runs/{run_id}", self._run, methods=["GET", "PATCH"]),
            Route("/feedback", self._feedback, methods=["GET", "POST"]),
            Route("/feedback/{feedback_id}", self._one_feedback, methods=["GET", "PATCH"]),
            Route("/datasets", self._datasets, methods=["GET", "POST"]),
            Route("/datasets/{dataset_id}", self._one_dataset, methods=["GET"]),
            Route("/examples", self._examples, methods=["GET", "POST"]),
            Route("/examples/{example_id}", self._one_example, methods=["GET", "DELETE"]),
            Route("/o/{tenant_id}/projects/p/{session_id}/r/{run_id}", self._run_page, methods=["GET"]),
            Route("/_emulator/rules/fire", self._fire_rule, methods=["POST"]),
            Route("/_emulator/state", self._state, methods=["GET"]),
        ]

    def _refuse(self, request: Request) -> Response | None:
        self.requests.append((request.method, request.url.path))
        if request.headers.get("x-api-key") != self.api_key:
            return self.error_response(401, "Invalid API key")
        return None

    async def _json(self, request: Request) -> Any:
        raw = await request.body()
        return json.loads(raw) if raw else {}

    async def _info(self, request: Request) -> Response:
        return JSONResponse({
            "version": SERVER_VERSION,
            "license_expiration_time": None,
            "batch_ingest_config": {"use_multipart_endpoint": True, "scale_up_qsize_trigger": 1000, "scale_up_nthreads_limit": 16,
                                    "scale_down_nempty_trigger": 4, "size_limit": 100, "size_limit_bytes": 20971520},
            "instance_flags": {"ch_query_enabled": True, "sdb_query_enabled": False,
                               "dataset_examples_multipart_enabled": False, "zstd_compression_enabled": False},
        })

    async def _sessions(self, request: Request) -> Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        name = request.query_params.get("name")
        with self.lock:
            items = [s for s in self.sessions.values() if name is None or s["name"] == name]
        return JSONResponse(items[: int(request.query_params.get("limit", 100))])

    async def _create_run(self, request: Request) -> Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        body = await self._json(request)
        with self.lock:
            self.add_run(body)
        return JSONResponse({}, status_code=202)

    async def _batch(self, request: Request) -> Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        body = await self._json(request)
        with self.lock:
            for item in body.get("post") or []:
                self.add_run(item)
            for item in body.get("patch") or []:
                if str(item.get("id")) in self.runs:
                    self.update_run(str(item["id"]), item)
        return JSONResponse({}, status_code=202)

    async def _run(self, request: Request) -> Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        run_id = request.path_params["run_id"]
        with self.lock:
            if run_id not in self.runs:
                return self.error_response(404, "Run not found")
            if request.method == "PATCH":
                self.update_run(run_id, await self._json(request))
                return JSONResponse({}, status_code=202)
            return JSONResponse(self.run_out(self.runs[run_id]))

    async def _run_page(self, request: Request) -> Response:
        """Where trace links point (the web app's run page); here, the run as JSON."""
        with self.lock:
            run = self.runs.get(request.path_params["run_id"])
            return JSONResponse(self.run_out(run)) if run else self.error_response(404, "Run not found")

    async def _query_runs(self, request: Request) -> Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        body = await self._json(request)
        with self.lock:
            runs = sorted(self.runs.values(), key=lambda r: r["dotted_order"])
            if body.get("id"):
                wanted = {str(i) for i in body["id"]}
                runs = [r for r in runs if r["id"] in wanted]
            if body.get("trace"):
                runs = [r for r in runs if r["trace_id"] == str(body["trace"])]
            if body.get("parent_run"):
                runs = [r for r in runs if r["parent_run_id"] == str(body["parent_run"])]
            if body.get("run_type"):
                runs = [r for r in runs if r["run_type"] == body["run_type"]]
            if body.get("is_root") is not None:
                runs = [r for r in runs if (r["parent_run_id"] is None) == bool(body["is_root"])]
            sessions = body.get("session") or ([body["session_id"]] if body.get("session_id") else None)
            if sessions:
                runs = [r for r in runs if r["session_id"] in {str(s) for s in sessions}]
            offset = int(body.get("cursor") or 0)
            limit = int(body.get("limit") or 100)
            page = runs[offset: offset + limit]
            following = str(offset + limit) if offset + limit < len(runs) else None
            return JSONResponse({"runs": [self.run_out(r) for r in page], "cursors": {"next": following}})

    async def _feedback(self, request: Request) -> Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        if request.method == "GET":
            wanted = set(request.query_params.getlist("run"))
            keys = set(request.query_params.getlist("key"))
            with self.lock:
                items = [f for f in self.feedback.values()
                         if (not wanted or f["run_id"] in wanted) and (not keys or f["key"] in keys)]
            offset = int(request.query_params.get("offset", 0))
            limit = int(request.query_params.get("limit", 100))
            return JSONResponse(items[offset: offset + limit])
        body = await self._json(request)
        feedback_id = str(body.get("id") or uuid.uuid4())
        with self.lock:
            if feedback_id in self.feedback:
                return self.error_response(409, "Feedback already exists")
            run_id = str(body["run_id"]) if body.get("run_id") else None
            if run_id is not None and run_id not in self.runs:
                return self.error_response(404, "Run not found")
            item = {
                "id": feedback_id,
                "created_at": body.get("created_at") or _now(),
                "modified_at": body.get("modified_at") or _now(),
                "run_id": run_id,
                "trace_id": str(body["trace_id"]) if body.get("trace_id") else None,
                "key": body["key"],
                "score": body.get("score"),
                "value": body.get("value"),
                "comment": body.get("comment"),
                "correction": body.get("correction"),
                "feedback_source": body.get("feedback_source"),
                "session_id": str(body["session_id"]) if body.get("session_id") else None,
                "start_time": body.get("start_time"),
                "comparative_experiment_id": body.get("comparative_experiment_id"),
                "feedback_group_id": body.get("feedback_group_id"),
                "extra": body.get("extra"),
            }
            self.feedback[feedback_id] = item
        return JSONResponse(item)

    async def _one_feedback(self, request: Request) -> Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        changes = await self._json(request) if request.method == "PATCH" else {}
        with self.lock:
            item = self.feedback.get(request.path_params["feedback_id"])
            if item is not None and request.method == "PATCH":  # FeedbackUpdateSchema: these four, each optional
                item.update({k: changes[k] for k in ("score", "value", "correction", "comment") if k in changes},
                            modified_at=_now())
        return JSONResponse(item) if item else self.error_response(404, "Feedback not found")

    def _dataset_out(self, dataset: dict[str, Any]) -> dict[str, Any]:
        count = sum(1 for e in self.examples.values() if e["dataset_id"] == dataset["id"])
        return {**dataset, "example_count": count}

    async def _datasets(self, request: Request) -> Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        if request.method == "GET":
            name = request.query_params.get("name")
            with self.lock:
                items = [self._dataset_out(d) for d in self.datasets.values() if name is None or d["name"] == name]
            return JSONResponse(items[: int(request.query_params.get("limit", 100))])
        body = await self._json(request)
        with self.lock:
            if any(d["name"] == body.get("name") for d in self.datasets.values()):
                return self.error_response(409, "Dataset with this name already exists")
            dataset = {
                "id": str(body.get("id") or uuid.uuid4()),
                "name": body["name"],
                "description": body.get("description"),
                "data_type": body.get("data_type") or "kv",
                "created_at": _now(),
                "modified_at": _now(),
                "inputs_schema_definition": body.get("inputs_schema_definition"),
                "outputs_schema_definition": body.get("outputs_schema_definition"),
                "transformations": body.get("transformations"),
                "metadata": (body.get("extra") or {}).get("metadata"),
                "session_count": 0,
                "last_session_start_time": None,
            }
            self.datasets[dataset["id"]] = dataset
            return JSONResponse(self._dataset_out(dataset))

    async def _one_dataset(self, request: Request) -> Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        with self.lock:
            dataset = self.datasets.get(request.path_params["dataset_id"])
            return JSONResponse(self._dataset_out(dataset)) if dataset else self.error_response(404, "Dataset not found")

    async def _examples(self, request: Request) -> Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        if request.method == "GET":
            dataset_id = request.query_params.get("dataset")
            ids = set(request.query_params.getlist("id"))
            with self.lock:
                items = [e for e in self.examples.values()
                         if (dataset_id is None or e["dataset_id"] == dataset_id) and (not ids or e["id"] in ids)]
            offset = int(request.query_params.get("offset", 0))
            limit = int(request.query_params.get("limit", 100))
            return JSONResponse(items[offset: offset + limit])
        body = await self._json(request)
        with self.lock:
            dataset_id = str(body.get("dataset_id") or "")
            if dataset_id not in self.datasets:
                return self.error_response(404, "Dataset not found")
            example_id = str(body.get("id") or uuid.uuid4())
            if example_id in self.examples:
                return self.error_response(409, "Example already exists")
            example = {
                "id": example_id,
                "dataset_id": dataset_id,
                "inputs": body.get("inputs") or {},
                "outputs": body.get("outputs"),
                "metadata": body.get("metadata"),
                "created_at": body.get("created_at") or _now(),
                "modified_at": _now(),
                "source_run_id": body.get("source_run_id"),
                "split": body.get("split"),
            }
            self.examples[example_id] = example
            return JSONResponse(example)

    async def _one_example(self, request: Request) -> Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        with self.lock:
            if request.method == "DELETE":
                example = self.examples.pop(request.path_params["example_id"], None)
                return JSONResponse({}) if example else self.error_response(404, "Example not found")
            example = self.examples.get(request.path_params["example_id"])
        return JSONResponse(example) if example else self.error_response(404, "Example not found")

    # ----- automation rules ----------------------------------------------------------
    def rule_payload(self, run_ids: list[str], *, rule_id: str | None = None) -> dict[str, Any]:
        """The body LangSmith POSTs when an automation rule with a webhook action matches runs."""
        runs = []
        for run_id in run_ids:
            run = self.run_out(self.runs[run_id])
            runs.append({**{k: v for k, v in run.items() if k not in ("inputs", "outputs")},
                         "is_root": run["parent_run_id"] is None, "tenant_id": TENANT_ID, "modified_at": _now(),
                         "inputs": None, "inputs_s3_urls": None, "outputs": None, "outputs_s3_urls": None,
                         "direct_child_run_ids": None, "last_queued_at": None, "share_token": None})
        stats: dict[str, Any] = {}
        for run_id in run_ids:
            for key, entry in self.feedback_stats(run_id).items():
                stats.setdefault(key, entry)
        return {"rule_id": rule_id or str(uuid.uuid4()), "start_time": _now(), "end_time": _now(),
                "runs": runs, "feedback_stats": stats}

    def fire_rule(self, run_ids: list[str], *, rule_id: str | None = None):
        with self.lock:
            body = json.dumps(self.rule_payload(run_ids, rule_id=rule_id))
        headers = {"content-type": "application/json"}
        if self.settings.webhook_secret:
            headers["x-webhook-secret"] = self.settings.webhook_secret
        return self.webhooks.send(body, headers)

    async def _fire_rule(self, request: Request) -> Response:
        body = await self._json(request)
        try:
            delivery = self.fire_rule([str(r) for r in body.get("run_ids") or []], rule_id=body.get("rule_id"))
        except KeyError as exc:
            return JSONResponse({"error": f"no run {exc.args[0]!r}"}, status_code=404)
        if delivery is None:
            return JSONResponse({"error": "no webhook_url configured"}, status_code=400)
        return JSONResponse({"queued": True, "url": delivery.url.split("?", 1)[0]})

    async def _state(self, request: Request) -> Response:
        with self.lock:
            return JSONResponse({"runs": len(self.runs), "feedback": list(self.feedback.values()),
                                 "datasets": [self._dataset_out(d) for d in self.datasets.values()],
                                 "examples": list(self.examples.values())})
