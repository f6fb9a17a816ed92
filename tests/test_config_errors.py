"""Bad configs fail at load with one line naming the key and whose fault it is (file or override)."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from mixedr1.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"


@pytest.mark.parametrize("override, message", [
    ("optim.lr=inf", "optim.lr: expected a finite number, got inf"),
    ("optim.lr=1e400", "optim.lr: expected a finite number"),
    ("reward.format_weight=nan", "reward.format_weight: expected a finite number, got nan"),
    ("rollout.temperature=inf", "rollout.temperature: expected a finite number"),
    ("grpo.beta=.inf", "grpo.beta: expected a finite number"),
    ("grpo.adv_eps=inf", "grpo.adv_eps: expected a finite number"),
    ("reward.chart_tolerance=inf", "reward.chart_tolerance: expected a finite number"),
    ("data.scale=inf", "data.scale: expected a finite number"),
    ("optim.adam_eps=-1e-8", "optim.adam_eps must be > 0"),
    ("optim.weight_decay=-0.1", "optim.weight_decay must be >= 0"),
    ("model.max_pixels=-5", "model.max_pixels must be >= 1"),
    ("reward.judge_batch_size=0", "reward.judge_batch_size must be >= 1"),
    ("reward.judge_max_tokens=-1", "reward.judge_max_tokens must be >= 1"),
    ("rollout.top_p=0", "rollout.top_p must be > 0"),
    ("train.seed=18446744073709551616", "train.seed must be <= 18446744073709551615"),
])
def test_out_of_range_values_are_refused(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(DEMO, [override])
    assert str(info.value).startswith(f"override {override!r}: ")  # blamed on the override, not the file
    assert message in str(info.value)


def test_override_errors_name_the_override_not_the_file():
    with pytest.raises(ConfigError, match=r"^override 'rollout.group_sise=4': rollout.group_sise: unknown key"):
        load_config(DEMO, ["rollout.group_sise=4"])
    with pytest.raises(ConfigError, match=r"^override 'train.steps=\[': the value is not valid YAML"):
        load_config(DEMO, ["train.steps=["])


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rollout:\n  temperature: .nan\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: rollout.temperature: expected a finite number"):
        load_config(bad, ["train.steps=3"])
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  steps: 3\n  steps: 4\n")
    with pytest.raises(ConfigError, match=rf"^{twice}: line 3: 'steps' is written twice"):
        load_config(twice)
    with pytest.raises(ConfigError, match="written twice"):
        load_config(DEMO, ["train={steps: 1, steps: 2}"])


def test_large_seeds_load():
    assert load_config(DEMO, ["train.seed=20240101"]).train.seed == 20240101
    assert load_config(DEMO, [f"train.seed={2**64 - 1}"]).train.seed == 2**64 - 1


@pytest.mark.parametrize("argv", [["--help"], [str(DEMO), "optim.lr=inf"], [str(DEMO), "rollout.group_sise=4"]])
def test_train_help_and_config_errors_return_at_once_with_one_line(argv):
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(REPO / "train.py"), *argv], capture_output=True, text=True, cwd=REPO, timeout=120)
    elapsed = time.perf_counter() - start
    if argv == ["--help"]:
        assert done.returncode == 0 and "python train.py" in done.stdout
    else:
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().count("\n") == 0 and done.stderr.startswith("config error: "), done.stderr
    assert elapsed < 5, f"{elapsed:.1f} s: torch must not be imported before the config is checked"


def run_cli(*argv, cwd):
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_data_model_and_benchmark_errors_are_one_line_with_status_2(tmp_path):
    """What the user must fix ends the command with one line on stderr, exit status 2, no traceback."""
    data = run_cli(str(REPO / "train.py"), str(DEMO), f"output_dir={tmp_path / 'run'}", "data.synth_items=0",
                   "data.eval_file=null", f"data.train_file={tmp_path / 'missing.jsonl'}", cwd=tmp_path)
    assert data.returncode == 2 and "Traceback" not in data.stderr
    assert data.stderr.strip().splitlines()[-1] == f"error: data file not found: {tmp_path / 'missing.jsonl'}"
    model = run_cli(str(REPO / "train.py"), str(DEMO), f"output_dir={tmp_path / 'run2'}", f"model.path={tmp_path / 'no-model'}",
                    "data.synth_items=2", cwd=tmp_path)
    last = model.stderr.strip().splitlines()[-1]
    assert model.returncode == 2 and "Traceback" not in model.stderr
    assert last.startswith(f"error: model directory not found: {tmp_path / 'no-model'}") and "hf download" in last
    (tmp_path / "bench").mkdir()
    bench = run_cli(str(REPO / "eval.py"), "--ckpt", str(tmp_path / "no-model"), "--data-root", str(tmp_path / "bench"), cwd=tmp_path)
    assert bench.returncode == 2 and bench.stderr.count("\n") == 1 and "Traceback" not in bench.stderr
    assert bench.stderr.startswith("error: 6 of 6 benchmarks cannot be read: mathvista: no folder")
    for name in ("MathVista", "MathVision", "MMBench", "MMMU", "MMStar", "ai2d"):
        assert f"hf download" in bench.stderr and f"{tmp_path / 'bench' / name}" in bench.stderr
