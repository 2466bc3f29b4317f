"""Preview: a stored or sample review rendered through a mapping (saved or a draft), with the
exact requests the connector would send and the ticket as the reviewer will see it.

Nothing is sent: connectors only plan their requests (``plan_requests``)."""

from __future__ import annotations

import html
import re
from dataclasses import asdict
from typing import Any

from .errors import NotFoundError
from .mapping import Mapping, render_ticket
from .models import Review
from .runtime import Runtime
from .schemas import ReviewRequest

SAMPLE_REVIEW = ReviewRequest.model_validate({
    "title": "Refund $750 to order A-100",
    "action_requests": [
        {"name": "issue_refund", "args": {"order_id": "A-100", "amount": 750}, "description": "Customer reports a damaged item"},
        {"name": "reply", "args": {"body": "Hi Carol,\nwe are refunding order A-100 in full. Sorry for the trouble!"}},
    ],
    "allowed_decisions": ["approve", "edit", "reject", "respond"],
    "confidence": 0.62,
    "cost": 750,
    "reasoning": "The photo shows a broken item; policy allows refunds under $1000.",
    "evidence": [{"title": "Order A-100", "url": "https://shop.example/orders/A-100", "snippet": "Delivered 2 days ago"}],
    "metadata": {"customer_tier": "gold"},
    "langsmith": {"run_id": "9d3f1a52", "trace_url": "https://smith.langchain.com/r/9d3f1a52"},
})

# Where each system shows a ticket's title and body, and how it formats them.
VIEWS = {
    "jira": ("summary", "description", "jira_wiki", "jira_wiki"),
    "servicenow": ("short_description", "description", "text", "servicenow_journal"),
    "zendesk": ("subject", None, "html", "html"),
    "salesforce": ("Subject", "Description", "text", "text"),
}


def preview(
    rt: Runtime,
    mapping: Mapping,
    *,
    review: ReviewRequest | None = None,
    review_id: str | None = None,
) -> dict[str, Any]:
    source = "sample"
    if review_id:
        with rt.db.read() as session:
            row = session.get(Review, review_id)
            if row is None:
                raise NotFoundError(f"no review {review_id!r}")
            review = ReviewRequest.model_validate(row.request)
        source = "stored"
    elif review is not None:
        source = "given"
    else:
        review = SAMPLE_REVIEW
    shown_id = review_id or "rev_preview"
    rendered = render_ticket(mapping, shown_id, review, bridge_url=rt.settings.public_url)
    from .redact import masked_report, redact_value  # what the worker masks before sending (issue 9)

    masked = masked_report(rendered.model_dump(), mapping.redaction)
    rendered = rendered.model_copy(update=redact_value(rendered.model_dump(), mapping.redaction))
    origin = review.origin
    origin_key = origin.ticket_id if mapping.ticket.target == "origin" and origin and origin.connection == mapping.connection else None
    connector = rt.connector(mapping.connection)
    plan = getattr(connector, "plan_requests", None)
    requests = [asdict(r) for r in plan(rendered.fields, review_id=shown_id, comment=rendered.comment, origin_key=origin_key)] if plan else []
    vendor = rt.settings.connections[mapping.connection].type
    return {
        "mapping": mapping.name,
        "connection": mapping.connection,
        "version": mapping.version,
        "review": {"id": shown_id, "source": source, "title": review.title},
        **rendered.model_dump(),
        "requests": requests,
        "reviewer_view": reviewer_view(vendor, rendered.fields, rendered.comment, origin_key=origin_key),
        "masked": masked,
    }


def reviewer_view(vendor: str, fields: dict[str, Any], comment: str | None, *, origin_key: str | None) -> dict[str, Any]:
    title_field, body_field, body_format, comment_format = VIEWS.get(vendor, ("title", "description", "text", "text"))
    title = fields.get(title_field) or (f"the customer's ticket {origin_key}" if origin_key else "(no title)")
    body = fields.get(body_field) if body_field else None
    shown = {k: v for k, v in fields.items() if k not in (title_field, body_field)}
    return {
        "title": str(title),
        "body_html": to_html(str(body), body_format) if body else "",
        "comment_html": to_html(comment, comment_format) if comment else "",
        "fields": shown,
    }


def to_html(text: str, fmt: str) -> str:
    if fmt == "html":
        return text
    if fmt == "jira_wiki":
        return jira_wiki_html(text)
    if fmt == "servicenow_journal":  # [code]...[/code] is shown as HTML in work notes
        parts = re.split(r"\[code\](.*?)\[/code\]", text, flags=re.S)
        return "".join(p if i % 2 else f"<pre>{html.escape(p)}</pre>" for i, p in enumerate(parts) if p.strip())
    return f"<pre>{html.escape(text)}</pre>"


def _inline(text: str) -> str:
    out = html.escape(text)
    out = re.sub(r"\{\{(.+?)\}\}", r"<code>\1</code>", out)
    out = re.sub(r"\[([^|\]]+)\|([^\]]+)\]", r'<a href="\2">\1</a>', out)
    out = re.sub(r"(?<![\w\\])\*(\S(?:.*?\S)?)\*(?!\w)", r"<strong>\1</strong>", out)
    out = re.sub(r"(?<![\w\\])_(\S(?:.*?\S)?)_(?!\w)", r"<em>\1</em>", out)
    return re.sub(r"\\([{}\[\]|!*_+^~#-])", r"\1", out)


def jira_wiki_html(text: str) -> str:
    """Enough Jira wiki markup to show a reviewer what the description looks like:
    headings, tables, bullets, quotes, bold, italics, links and monospace."""
    out: list[str] = []
    table = listing = quote = False
    for line in text.splitlines():
        stripped = line.strip()
        if table and not stripped.startswith("|"):
            out.append("</table>")
            table = False
        if listing and not stripped.startswith("* "):
            out.append("</ul>")
            listing = False
        if "{quote}" in stripped:
            for i, part in enumerate(stripped.split("{quote}")):
                if i:
                    out.append("</blockquote>" if quote else "<blockquote>")
                    quote = not quote
                if part:
                    out.append(f"<p>{_inline(part)}</p>")
            continue
        heading = re.match(r"h([1-6])\.\s*(.*)", stripped)
        if heading:
            out.append(f"<h{heading.group(1)}>{_inline(heading.group(2))}</h{heading.group(1)}>")
        elif stripped.startswith("||"):
            out.append("<table>" if not table else "")
            table = True
            cells = [c for c in re.split(r"(?<!\\)\|\|", stripped) if c]
            out.append("<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in cells) + "</tr>")
        elif stripped.startswith("|"):
            out.append("<table>" if not table else "")
            table = True
            cells = re.split(r"(?<!\\)\|", stripped)[1:-1]
            out.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in cells) + "</tr>")
        elif stripped.startswith("* "):
            out.append("<ul>" if not listing else "")
            listing = True
            out.append(f"<li>{_inline(stripped[2:])}</li>")
        elif stripped:
            out.append(f"<p>{_inline(stripped)}</p>")
    out += ["</table>"] * table + ["</ul>"] * listing + ["</blockquote>"] * quote
    return "".join(out)
