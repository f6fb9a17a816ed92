"""The command lines' small promises: help that creates nothing and reads whole, no import warnings,
the README's notebook command installed by the dev requirements."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(*argv, cwd):
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_report_help_creates_nothing_and_a_missing_results_folder_is_an_error(tmp_path):
    done = run(str(REPO / "experiments" / "report.py"), "--help", cwd=tmp_path)
    assert done.returncode == 0 and "usage:" in done.stdout and list(tmp_path.iterdir()) == []
    done = run(str(REPO / "experiments" / "report.py"), str(tmp_path / "results"), cwd=tmp_path)
    assert done.returncode == 2 and "no such results folder" in done.stderr and list(tmp_path.iterdir()) == []


def test_module_commands_run_without_warnings_and_describe_themselves_whole(tmp_path):
    synth = run("-m", "mixedr1.data.synth", "--help", cwd=REPO)
    assert synth.returncode == 0 and "RuntimeWarning" not in synth.stderr
    engine = run("-m", "mixedr1.data_engine", "--help", cwd=REPO)
    assert engine.returncode == 0
    description = " ".join(engine.stdout.split("options:")[0].split("\n\n", 1)[1].split())
    assert description.endswith("teaches nothing)."), description  # the first paragraph, not cut mid-sentence


def test_the_readme_notebook_command_is_installed():
    assert run("-m", "nbconvert", "--version", cwd=REPO).returncode == 0
