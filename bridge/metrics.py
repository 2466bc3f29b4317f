"""Prometheus metrics, on a registry of their own per bridge (tests run several bridges)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reviews = Counter(
            "hitl_reviews_total", "Reviews reaching a status, by route.", ["status", "route"], registry=self.registry
        )
        self.time_to_decision = Histogram(
            "hitl_time_to_decision_seconds",
            "From submission to a human decision.",
            ["route"],
            buckets=(5, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600, 72 * 3600),
            registry=self.registry,
        )
        self.webhooks = Counter(
            "hitl_webhooks_total", "Incoming ticket-system webhooks by outcome.", ["connection", "outcome"], registry=self.registry
        )
        self.job_runs = Counter(
            "hitl_job_runs_total", "Worker job runs by kind and outcome.", ["kind", "outcome"], registry=self.registry
        )
        self.job_retries = Counter("hitl_job_retries_total", "Jobs rescheduled after a failure.", ["kind"], registry=self.registry)

    def watch_queue(self, depth: Callable[[], dict[tuple[str, str], int]]) -> None:
        """Report job queue depth at scrape time, read from the database."""

        class QueueCollector:
            def collect(self):
                family = GaugeMetricFamily("hitl_jobs", "Jobs waiting, running or dead, by kind.", labels=["kind", "state"])
                try:
                    for (kind, state), count in depth().items():
                        family.add_metric([kind, state], count)
                except Exception:  # a scrape must never fail because the database is busy
                    pass
                yield family

        self.registry.register(QueueCollector())
