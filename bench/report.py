"""The results as Markdown tables, one set per database backend."""

from __future__ import annotations

from typing import Any


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _met(flag: Any) -> str:
    return "met" if flag else "NOT met"


def markdown(report: dict[str, Any]) -> str:
    out = [f"# hitl-bridge benchmark, {report['date']}\n",
           f"Commit {report['commit']}; {report['machine']['cpus']} CPUs, Python {report['machine']['python']}; "
           f"{report['seconds']} s in all. Loopback only; every figure that matters is a ratio measured side by side "
           "in this run (the machine is shared and noisy).\n"]
    for backend, results in report["backends"].items():
        out.append(f"\n## {backend}\n")
        if "intake" in results:
            r = results["intake"]
            out.append(f"\n### 1. Intake (POST /v1/reviews) - goal {r['goal']}: {_met(r['met'])}\n\n")
            out.append(_table(["system", "concurrency", "requests", "ok/s", "p50 ms", "p99 ms", "statuses", "server CPU ms / request"],
                              [[x["system"], x["concurrency"], x["requests"], x["ok_per_s"], x["p50_ms"], x["p99_ms"],
                                x["statuses"], x.get("server_cpu_ms_per_request")] for x in r["rows"]]))
            out.append("\nBridge / baseline throughput: " + ", ".join(f"c={c}: {v}" for c, v in r["bridge_over_baseline"].items()) + "\n")
        if "webhooks" in results:
            r = results["webhooks"]
            out.append(f"\n### 2. Webhook to agent - goals {r['goals']}: {_met(r['met'])}\n\n"
                       f"Worker concurrency {r['worker_concurrency']}; callback hop (subtracted) p50 {r['callback_hop_p50_ms']} ms.\n\n")
            out.append(_table(
                ["layout", "emulator ms", "webhooks/s", "webhooks", "ack p50", "ack p99", "to callback p50", "to callback p99",
                 "bridge share p50", "bridge share p99", "missing", "bridge CPU ms / webhook", "bench CPU ms / webhook",
                 "machine busy %"],
                [[x.get("layout", "worker in-process"), x["emulator_latency_ms"], x["rate_per_s"], x["webhooks"], x["ack"]["p50_ms"], x["ack"]["p99_ms"],
                  x["webhook_to_callback"]["p50_ms"], x["webhook_to_callback"]["p99_ms"], x["bridge_share"]["p50_ms"],
                  x["bridge_share"]["p99_ms"], x["callbacks_missing"], x.get("bridge_cpu_ms_per_webhook"),
                  x.get("bench_cpu_ms_per_webhook"), x.get("machine_busy_pct")] for x in r["rows"]]))
            out.append("\n*Bench CPU* is the bench's own process (sender, emulator, callback receiver); *machine busy* is "
                       "all CPUs of the machine over the phase (the database server and other work included).\n")
        if "upstream" in results:
            r = results["upstream"]
            slow = f"upstream_{r['latency_ms']}ms"
            out.append(f"\n### 3. Against the naive pattern - emulator {r['latency_ms']} ms per call, rate limit "
                       f"{r['rate_limit_per_s']}/s, {r['reviews']} reviews at concurrency {r['concurrency']}\n\n")
            rows = []
            for design in ("bridge", "naive"):
                for phase in ("upstream_0ms", slow):
                    x = r[design][phase]
                    rows.append([design, phase.removeprefix("upstream_"), x["intake"]["ok_per_s"], x["intake"]["p50_ms"],
                                 x["intake"]["p99_ms"], x["intake"]["statuses"], x["time_to_ticket"]["p50_ms"],
                                 x["time_to_ticket"]["p99_ms"], x["tickets_per_s"], x["upstream_calls_per_s"], x["upstream_429"]])
            out.append(_table(["design", "upstream", "intake ok/s", "intake p50 ms", "intake p99 ms", "agent saw",
                               "to ticket p50 ms", "to ticket p99 ms", "tickets/s", "upstream calls/s", "429s"], rows))
            out.append(f"\nBridge intake with a {r['latency_ms']} ms upstream / with a 0 ms upstream: "
                       f"{r['bridge_intake_slow_over_fast']}\n")
        if "memory" in results:
            m = results["memory"]
            out.append(f"\n### 4. Scale\n\nMemory (goal {m['goal']}: {_met(m['met'])}): RSS of the bridge process "
                       f"{m['rss_before_mib']} MiB -> {m['rss_after_mib']} MiB over {m['open_reviews']} more open reviews = "
                       f"**{m['rss_bytes_per_open_review']} bytes per open review** in memory; "
                       f"{m['database_bytes_per_review']} bytes per review in the database.\n\n")
        if "scale" in results:
            r = results["scale"]
            out.append(_table(["stored reviews", "lookup p50", "lookup p99", "list open p50", "list open p99",
                               "list page (middle) p50", "list page p99", "webhook match p50", "webhook match p99"],
                              [[x["stored_reviews"], x["lookup"]["p50_ms"], x["lookup"]["p99_ms"], x["list_open_newest"]["p50_ms"],
                                x["list_open_newest"]["p99_ms"], x["list_page_middle"]["p50_ms"], x["list_page_middle"]["p99_ms"],
                                x["webhook_match"]["p50_ms"], x["webhook_match"]["p99_ms"]] for x in r["rows"]]))
            out.append("\n(milliseconds, in-process calls of the bridge's use cases; list pages are 50 reviews)\n")
    return "".join(out)
