"""train.py end to end on the tiny model: run directory, exact resume, 2 ranks = 1 rank, learning."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import train
from mixedr1.config import load_config
from mixedr1.rewards import RewardBreakdown

ROOT = Path(__file__).resolve().parents[1]
BASE = {
    "model": {"path": "tiny"},
    "data": {"synth_items": 2},
    "rollout": {"group_size": 4, "max_new_tokens": 8, "prompts_per_batch": 2},
    "optim": {"lr": 1.0e-3},
    "train": {"steps": 2, "prompts_per_step": 4, "micro_batch_size": 8, "sft_warmup_steps": 1},
    "checkpoint": {"every": 0},
    "log": {"progress_bar": False},
}


def write_config(tmp_path: Path, name: str, **sections) -> Path:
    config = json.loads(json.dumps(BASE))
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    config["output_dir"] = str(tmp_path / name)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    last = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    return load_file(last / "model.safetensors")


def test_run_writes_a_complete_run_directory(tmp_path):
    cfg_path = write_config(tmp_path, "run", checkpoint={"every": 1, "keep_last": 2}, log={"sample_every": 1})
    train.main([str(cfg_path)])
    run = tmp_path / "run"
    rows = metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert "loss/sft_nll" in rows[0]  # the warm-up step is SFT
    for key in ("reward/total", "rewards/format/mean", "kl", "clip_ratio/low_mean", "entropy",
                "optim/grad_norm", "optim/lr", "frac_reward_zero_std", "completions/mean_length",
                "completions/clipped_ratio", "time/rollout", "time/reference", "time/update",
                "perf/tokens_per_s_per_device"):
        assert key in rows[1], key
    assert rows[1]["kl"] >= 0 and 0 <= rows[1]["frac_reward_zero_std"] <= 1
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "samples.jsonl").read_text().strip() and (run / "train.log").read_text()
    assert load_config(run / "config.yaml").rollout.group_size == 4
    # keep_last=2: steps 2 and 3 remain; each is a directory plain from_pretrained loads.
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step-000002", "step-000003"]
    from transformers import AutoModelForImageTextToText

    from mixedr1.models import load_processor

    ckpt = run / "checkpoints" / "step-000003"
    model = AutoModelForImageTextToText.from_pretrained(ckpt)
    assert load_processor(ckpt).tokenizer.pad_token is not None
    initial = load_file(run / "tiny-model" / "model.safetensors")
    trained = model.state_dict()
    moved = max((trained[k] - initial[k]).abs().max().item() for k in initial if k in trained)
    assert moved > 0, "training did not change the weights"


def test_reference_cpu_offload_gives_the_same_run(tmp_path):
    plain = write_config(tmp_path, "plain")
    offload = write_config(tmp_path, "offload", model={"ref_cpu_offload": True})
    train.main([str(plain)])
    train.main([str(offload)])
    assert [r["kl"] for r in metrics(tmp_path / "plain")[1:]] == [r["kl"] for r in metrics(tmp_path / "offload")[1:]]


def test_activation_checkpointing_gives_the_same_run(tmp_path):
    """The paper configs turn on gradient checkpointing: recomputing activations must not change the math."""
    plain = write_config(tmp_path, "plain", train={"steps": 2, "sft_warmup_steps": 0})
    ckpt = write_config(tmp_path, "ckpt", train={"steps": 2, "sft_warmup_steps": 0}, model={"gradient_checkpointing": True})
    train.main([str(plain)])
    train.main([str(ckpt)])
    for a, b in zip(metrics(tmp_path / "plain"), metrics(tmp_path / "ckpt")):
        assert b["loss/total"] == pytest.approx(a["loss/total"], rel=1e-6, abs=1e-9)
        assert b["optim/grad_norm"] == pytest.approx(a["optim/grad_norm"], rel=1e-5)
    wa, wb = final_weights(tmp_path / "plain"), final_weights(tmp_path / "ckpt")
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], atol=1e-6, rtol=1e-5)


def test_exact_resume(tmp_path):
    straight = write_config(tmp_path, "straight", train={"steps": 4}, checkpoint={"every": 2})
    train.main([str(straight)])

    halves = write_config(tmp_path, "halves", train={"steps": 2})
    train.main([str(halves)])  # stops after 3 steps (1 SFT + 2 GRPO), checkpoint at step 3
    # A save killed half-way leaves a .tmp folder: it must be ignored, and cleaned at the next save.
    broken = tmp_path / "halves" / "checkpoints" / "step-000004.tmp"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"partial")
    train.main([str(halves), "train.steps=4", "train.resume=true"])
    assert not broken.exists()

    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "halves")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    losses_a = [r["loss/total"] for r in metrics(tmp_path / "straight")]
    losses_b = [r["loss/total"] for r in metrics(tmp_path / "halves")]
    assert losses_a == losses_b


@pytest.mark.slow
@pytest.mark.parametrize("extra", [(), ("train.micro_batch_size=3", "distributed.sync_every_micro_batch=false")],
                         ids=["sync_every_micro_batch", "one_sync_per_step"])
def test_two_ranks_give_the_same_losses_and_weights_as_one(tmp_path, extra):
    cfg_path = write_config(tmp_path, "one")
    train.main([str(cfg_path)])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           str(ROOT / "train.py"), str(cfg_path), f"output_dir={tmp_path / 'two'}", *extra]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert len(one) == len(two) == 3
    for r1, r2 in zip(one, two):
        # fp32 on CPU; only the order of floating-point sums differs (gradient reduce-scatter)
        assert r2["loss/total"] == pytest.approx(r1["loss/total"], rel=1e-5, abs=1e-9)
        assert r2.get("reward/total") == r1.get("reward/total")
    w1, w2 = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], atol=1e-5, rtol=1e-4)


def test_trimmed_and_packed_micro_batches_give_the_same_run_with_less_padding(tmp_path):
    """Length-sorted micro-batches cut to their longest row (train.trim_padding) and packed sequences
    (train.packing) change only which padding is computed: the same losses and weights as rows in
    order padded to the step's longest (the SFT warm-up step and the GRPO steps)."""
    layouts = {"untrimmed": (False, False), "trimmed": (False, True), "packed": (True, True)}
    runs = {}
    for name, (packing, trim) in layouts.items():
        cfg_path = write_config(tmp_path, name, train={"micro_batch_size": 3, "trim_padding": trim, "packing": packing},
                                rollout={"max_new_tokens": 16})
        train.main([str(cfg_path)])
        runs[name] = metrics(tmp_path / name)
    for name in ("trimmed", "packed"):
        for a, b in zip(runs[name], runs["untrimmed"]):
            assert a["loss/total"] == pytest.approx(b["loss/total"], rel=1e-5, abs=1e-9), name
        wa, wb = final_weights(tmp_path / name), final_weights(tmp_path / "untrimmed")
        for key in wa:
            torch.testing.assert_close(wa[key], wb[key], atol=1e-6, rtol=1e-5, msg=f"{name}: {key}")
    for packed, trimmed, untrimmed in zip(runs["packed"][1:], runs["trimmed"][1:], runs["untrimmed"][1:]):
        fractions = [row["perf/padded_token_fraction"] for row in (packed, trimmed, untrimmed)]
        assert fractions[0] <= fractions[1] < fractions[2], fractions  # packed, trimmed, untrimmed


def test_policy_learns_a_reachable_reward(tmp_path, monkeypatch):
    """Reward = −(characters in the completion): the policy can shorten its tokens. A sign error
    anywhere (advantages, ratio, loss, optimizer) would make the text longer instead."""

    def shorter_is_better(batch, texts, G, cfg, ctx):
        rewards = [-len(t) / 10 for t in texts]
        breakdowns = [RewardBreakdown(r, 0.0, r, "length") for r in rewards]
        return [breakdowns[b * G : (b + 1) * G] for b in range(len(texts) // G)]

    monkeypatch.setattr(train, "score_groups", shorter_is_better)
    cfg_path = write_config(
        tmp_path, "learn", grpo={"beta": 0.0}, optim={"lr": 1.0e-2},
        rollout={"group_size": 8, "max_new_tokens": 8, "prompts_per_batch": 4},
        train={"steps": 16, "sft_warmup_steps": 0, "prompts_per_step": 4, "micro_batch_size": 32},
    )
    train.main([str(cfg_path)])
    rewards = [r["reward/total"] for r in metrics(tmp_path / "learn")]
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    print(f"mean reward, first 4 steps {first:.3f}, last 4 steps {last:.3f}")
    assert last > first + 0.5, rewards


def test_non_finite_losses_skip_steps_then_stop(tmp_path, monkeypatch):
    """A NaN loss skips the optimizer step with a warning; train.max_nonfinite_steps in a row stop the run."""
    real_loss = train.grpo_policy_loss

    def nan_loss(*args, **kwargs):
        loss, stats = real_loss(*args, **kwargs)
        return loss * float("nan"), stats

    monkeypatch.setattr(train, "grpo_policy_loss", nan_loss)
    cfg_path = write_config(tmp_path, "nan", train={"steps": 5, "sft_warmup_steps": 0, "max_nonfinite_steps": 2})
    with pytest.raises(RuntimeError, match="2 non-finite losses in a row"):
        train.main([str(cfg_path)])
    log = (tmp_path / "nan" / "train.log").read_text()
    assert "non-finite loss" in log and "optimizer step skipped" in log
    assert not (tmp_path / "nan" / "checkpoints").exists()  # nothing was saved from a NaN state


def test_grpo_runs_on_a_tiny_native_internvl(tmp_path, tiny_internvl_dir):
    """train.py with `model.path` = a tiny native InternVL (1-D positions, tiles): the SFT warm-up step
    (boxes in InternVL's 0-1000 frame) then 2 GRPO steps with finite losses, weights moved, and a
    checkpoint our loader reads back as InternVL."""
    from mixedr1.models.processors import InternVLImageOnlyProcessor, load_processor
    model_dir = tiny_internvl_dir
    cfg_path = write_config(tmp_path, "internvl", model={"path": str(model_dir)}, checkpoint={"every": 3})
    train.main([str(cfg_path)])
    run = tmp_path / "internvl"
    rows = metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[0]["loss/sft_nll"] > 0
    for row in rows[1:]:
        assert all(torch.isfinite(torch.tensor(row[k])) for k in ("loss/total", "kl", "optim/grad_norm", "reward/total"))
        assert row["completions/mean_length"] > 0
        assert abs(row["grpo/ratio_mean"] - 1) < 1e-4  # the sampler's log-probs are the update forward's
    initial = load_file(model_dir / "model.safetensors")
    trained = final_weights(run)
    moved = max((trained[k] - initial[k]).abs().max().item() for k in initial if k in trained)
    assert moved > 0, "training did not change the weights"
    assert isinstance(load_processor(sorted((run / "checkpoints").glob("step-*"))[-1]), InternVLImageOnlyProcessor)
