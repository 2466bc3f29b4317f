"""The benchmark command runs (tiny sizes: this checks the plumbing, it measures nothing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_command_writes_results(tmp_path: Path):
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--tiny", "--only", "webhooks,scale", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=90,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    [result] = tmp_path.glob("*.json")
    report = json.loads(result.read_text())
    sqlite = report["backends"]["sqlite"]
    assert [row["stored_reviews"] for row in sqlite["scale"]["rows"]] == [300, 600]
    assert sqlite["memory"]["open_reviews"] == 20
    [webhooks] = sqlite["webhooks"]["rows"]
    assert webhooks["callbacks_missing"] == 0 and webhooks["ack_statuses"] == {"202": webhooks["webhooks"]}
    assert webhooks["bridge_cpu_ms_per_webhook"] > 0 and webhooks["bench_cpu_ms_per_webhook"] > 0
    assert 0 < webhooks["machine_busy_pct"] <= 100
    markdown = result.with_suffix(".md").read_text()
    assert "| stored reviews |" in markdown and "machine busy %" in markdown
