"""The typed config: defaults, YAML, overrides, and errors that name the key."""

from pathlib import Path

import pytest

from mixedr1.config import Config, ConfigError, load_config, save_config

# configs/sources.yaml lists source datasets for experiments/build_mixed45k.py, not a training config
# (tests/test_build_mixed45k.py reads it).
CONFIGS = sorted(p for p in (Path(__file__).parent.parent / "configs").glob("*.yaml") if p.name != "sources.yaml")


def test_defaults_follow_spec():
    cfg = load_config()
    assert (cfg.rollout.group_size, cfg.rollout.temperature, cfg.grpo.beta, cfg.optim.lr) == (8, 1.0, 0.04, 3e-6)
    assert (cfg.grpo.eps_low, cfg.grpo.adv_eps, cfg.reward.format_weight) == (0.2, 1e-4, 1.0)
    assert (cfg.reward.bmas_combine, cfg.reward.chart_tolerance_mode, cfg.grpo.adv_std) == ("sum", "absolute", "unbiased")
    assert cfg.train.prompts_per_step == 64


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("output_dir: runs/x\ngrpo:\n  beta: 0.1\noptim:\n  lr: 1e-5\n")
    cfg = load_config(path, ["grpo.beta=0", "data.problem_types=[mcq, yorn]", "model.path=/m"])
    assert cfg.output_dir == "runs/x" and cfg.grpo.beta == 0.0 and cfg.optim.lr == 1e-5
    assert cfg.data.problem_types == ["mcq", "yorn"] and cfg.model.path == "/m"


@pytest.mark.parametrize("override, message", [
    ("grpo.bet=1", "grpo.bet: unknown key"),
    ("nope.x=1", "nope: unknown key"),
    ("reward.bmas_combine=max", "reward.bmas_combine: expected one of 'sum', 'mean', got 'max'"),
    ("train.steps=1.5", "train.steps: expected an integer"),
    ("model.freeze_vision=3", "model.freeze_vision: expected true or false"),
    ("optim.lr=fast", "optim.lr: expected a number"),
    ("grpo=1", "grpo: expected a mapping"),
    ("data.problem_types=[essay]", "data.problem_types"),
    ("rollout.group_size=1", "rollout.group_size must be >= 2"),
    ("reward.open_ended=sbert", "reward.judge_model: required"),
    ("beta", "expected key=value"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(None, [override])


def test_bad_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("grpo:\n  beta: high\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: grpo\.beta: expected a number"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_saved_config_loads_back(tmp_path):
    cfg = load_config(None, ["grpo.beta=0.02", "reward.open_ended=bipartite"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_yaml_loads(path):
    assert isinstance(load_config(path), Config)
