"""Where the bridge finds its mapping files. The default ``mappings_dir`` is ``mappings`` in
the working directory, as in the Docker image (WORKDIR /app, the files beside it) and for
``make sandbox`` in the repository; a package installed from its wheel has no files of its
own there. A ``mappings_dir`` that is not there stops the bridge at start: without its
routes it would approve every review unasked."""

from __future__ import annotations

import shutil
import subprocess
import sys

import yaml

from bridge.config import Settings
from bridge.runtime import Runtime
from harness import ROOT, Bridge
from procs import free_port


def test_a_missing_mappings_dir_stops_the_bridge_at_start(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"database_url": f"sqlite:///{tmp_path}/bridge.db", "mappings_dir": str(tmp_path / "nowhere")}))
    run = subprocess.run([sys.executable, "-m", "bridge.cli", "serve", "--config", str(config), "--port", str(free_port())],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert f"mappings_dir '{tmp_path / 'nowhere'}' is not a directory" in run.stderr


def test_the_default_mappings_dir_is_the_working_directorys(tmp_path, monkeypatch):
    (tmp_path / "fixture").mkdir()
    bridge = Bridge(tmp_path / "fixture")  # its Jira emulator and settings; its own files are elsewhere
    try:
        app_dir = tmp_path / "app"
        shutil.copytree(bridge.mappings_dir, app_dir / "mappings")
        monkeypatch.chdir(app_dir)
        settings = Settings.model_validate({k: v for k, v in dict(bridge.settings).items() if k != "mappings_dir"})
        rt = Runtime(settings)
        try:
            assert set(rt.mappings) == {"jira_review"} and rt.router.routes
        finally:
            rt.close()
    finally:
        bridge.stop()
