"""The bench's comparison apps, served exactly as ``hitl-bridge serve`` serves the bridge
(``uvicorn.run(app, host, port, log_config=None, access_log=False)``: one process, the same
event loop and HTTP parser, sync handlers in the same thread pool).

* ``baseline``: a bare FastAPI app that does one insert of the same ``reviews`` row the
  bridge writes (same schema and indexes, same engine: WAL, ``synchronous=NORMAL``,
  ``BEGIN IMMEDIATE`` on SQLite). What intake would cost with no bridge at all.
* ``naive``: the seed's design. The ticket is created synchronously inside the request
  handler, with the same connector and the same mapping, then the row is stored.

    python -m bench.serve baseline --database-url sqlite:///x.db --port 9000
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Header
from fastapi.responses import JSONResponse
from sqlalchemy import insert

from bridge.config import load_settings
from bridge.db import make_engine, utcnow
from bridge.mapping import render_ticket
from bridge.migrate import upgrade
from bridge.models import Review, new_id
from bridge.runtime import Runtime
from bridge.schemas import ReviewRequest
from connectors.errors import ConnectorError, RateLimitedError

REVIEWS = Review.__table__


def baseline_app(database_url: str) -> FastAPI:
    upgrade(database_url)
    engine = make_engine(database_url)
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    @app.post("/v1/reviews", status_code=201)
    def submit(body: dict[str, Any], idempotency_key: Annotated[str | None, Header()] = None) -> dict:
        review_id = new_id("rev")
        now = utcnow()
        digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        with engine.begin() as connection:
            connection.execute(insert(REVIEWS).values(
                id=review_id, created_at=now, updated_at=now, status="queued", title=str(body.get("title", ""))[:255],
                request=body, api_key_name="agent", idempotency_key=idempotency_key, request_hash=digest, route_reason="",
            ))
        return {"id": review_id, "status": "queued"}

    @app.post("/noop", status_code=201)
    def noop(body: dict[str, Any]) -> dict:
        """Parse the body and answer: the ceiling of this server and the load generator."""
        return {"id": "none", "status": "queued"}

    return app


def naive_app(database_url: str, config: Path) -> FastAPI:
    settings = load_settings(config).model_copy(update={"database_url": database_url})
    upgrade(database_url)
    rt = Runtime(settings)
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    @app.post("/v1/reviews", status_code=201)
    def submit(body: ReviewRequest):
        review_id = new_id("rev")
        routed = rt.router.route(review_id, body)
        mapping = rt.mapping(routed.route.mapping)
        rendered = render_ticket(mapping, review_id, body, bridge_url=settings.public_url)
        try:
            ref = rt.connector(mapping.connection).create_ticket(rendered.fields, review_id=review_id)
        except RateLimitedError as exc:
            return JSONResponse({"error": {"code": "upstream_rate_limited", "message": str(exc)}}, status_code=429)
        except ConnectorError as exc:
            return JSONResponse({"error": {"code": "upstream_error", "message": str(exc)}}, status_code=502)
        now = utcnow()
        request = body.model_dump(mode="json")
        with rt.db.engine.begin() as connection:
            connection.execute(insert(REVIEWS).values(
                id=review_id, created_at=now, updated_at=now, status="open", title=body.title or "", request=request,
                api_key_name="agent", idempotency_key=None, request_hash="", route_reason=routed.reason,
                ticket_connection=mapping.connection, ticket_key=ref.key, ticket_display=ref.display, ticket_url=ref.url,
            ))
        return {"id": review_id, "status": "open", "ticket": {"key": ref.key, "display": ref.display}}

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m bench.serve")
    parser.add_argument("kind", choices=["baseline", "naive"])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = baseline_app(args.database_url) if args.kind == "baseline" else naive_app(args.database_url, args.config)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
