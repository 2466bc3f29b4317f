"""Start-up configuration. The default ``mappings_dir`` is ``mappings`` in the working
directory, as in the Docker image (WORKDIR /app, the files beside it) and for ``make
sandbox`` in the repository; a package installed from its wheel has no files of its own
there. A ``mappings_dir`` that is not there stops the bridge at start: without its routes it
would approve every review unasked. A config file that cannot be used is named with what is
wrong in it, never echoing a value."""

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
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.startswith(f"error: mappings_dir '{tmp_path / 'nowhere'}' is not a directory: set mappings_dir")


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


def test_a_config_that_cannot_be_used_is_a_clear_error_not_a_traceback(tmp_path):
    from typer.testing import CliRunner

    from bridge.cli import app

    broken = tmp_path / "broken.yaml"
    broken.write_text("database_url: 5\nworker: {concurrency: 0}\ncallback_secrets: whsec_typo\n")
    cases = {
        str(tmp_path / "missing.yaml"): f"error: cannot read the config file {tmp_path / 'missing.yaml'}: No such file or directory",
        str(broken): "error: the config is not valid: database_url: Input should be a valid string; worker.concurrency: "
                     "Input should be greater than or equal to 1; callback_secrets: Extra inputs are not permitted",
    }
    for path, message in cases.items():
        for command in (["doctor"], ["serve"], ["worker"]):
            result = CliRunner().invoke(app, [*command, "--config", path])
            assert result.exit_code == 2 and result.stderr.strip() == message, (command, result.output)
    assert "whsec_typo" not in result.stderr  # a value (a secret, maybe) is never echoed
