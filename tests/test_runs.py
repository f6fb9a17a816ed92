"""Runs, resume and checkpoints under faults: large seeds, corrupted checkpoints, a missing warm-up
reference, reruns into an existing run directory, skipped non-finite steps and the schedule."""

import logging
import math
import shutil

import pytest

import train
from mixedr1.checkpoint import find_resume_checkpoint, list_checkpoints
from mixedr1.config import load_config
from mixedr1.optim import lr_factor
from mixedr1.runlog import RunDirError
from test_train import metrics, write_config


def test_any_64_bit_seed_runs(tmp_path):
    cfg = write_config(tmp_path, "seed", train={"steps": 1, "seed": 2**64 - 1})
    train.main([str(cfg)])  # crashed at the first GRPO step for seeds >= ~1.8e7 before
    assert [r["step"] for r in metrics(tmp_path / "seed")] == [1, 2]


def test_resume_skips_checkpoints_that_do_not_verify(tmp_path, caplog):
    cfg = write_config(tmp_path, "ckpt", train={"steps": 2}, checkpoint={"every": 1, "keep_last": 3})
    train.main([str(cfg)])
    step1, step2, step3 = list_checkpoints(tmp_path / "ckpt")
    assert find_resume_checkpoint(tmp_path / "ckpt") == (step3, [])

    weights = step3 / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    weights.write_bytes(bytes(data))
    (step2 / "model.safetensors").write_bytes(data[:100])  # truncated
    found, skipped = find_resume_checkpoint(tmp_path / "ckpt")
    assert found == step1
    assert "model.safetensors does not match its checksum" in skipped[0] and str(step3) in skipped[0]
    assert "model.safetensors has 100 bytes" in skipped[1] and "truncated" in skipped[1]

    (step1 / "manifest.json").unlink()  # e.g. a copy that lost a file
    assert find_resume_checkpoint(tmp_path / "ckpt")[0] is None

    # train.resume with no usable checkpoint starts over, and the old metrics are not appended to.
    train.main([str(cfg), "train.resume=true", "log.tensorboard=false"])
    assert [r["step"] for r in metrics(tmp_path / "ckpt")] == [1, 2, 3]
    log = (tmp_path / "ckpt" / "train.log").read_text()
    assert "skipped: model.safetensors does not match its checksum" in log and "starting at step 0" in log


def test_resume_cuts_metrics_back_and_a_finished_run_has_nothing_to_do(tmp_path, capsys):
    cfg = write_config(tmp_path, "cut", train={"steps": 2}, checkpoint={"every": 1, "keep_last": 3})
    train.main([str(cfg)])
    for path in list_checkpoints(tmp_path / "cut")[1:]:  # as if killed after logging step 3 but before its save
        shutil.rmtree(path)
    train.main([str(cfg), "train.resume=true"])
    assert [r["step"] for r in metrics(tmp_path / "cut")] == [1, 2, 3]  # each step once
    capsys.readouterr()
    assert train.main([str(cfg), "train.resume=true"]) == {}
    assert "finished at step 3 of 3; nothing to do" in capsys.readouterr().out


def test_an_existing_run_is_resumed_overwritten_or_refused(tmp_path):
    cfg = write_config(tmp_path, "again", train={"steps": 1})
    train.main([str(cfg)])
    with pytest.raises(RunDirError, match="already holds a run .*train.resume=true.*train.overwrite=true"):
        train.main([str(cfg)])
    train.main([str(cfg), "train.overwrite=true", "train.steps=0", "train.sft_warmup_steps=1"])
    assert [r["step"] for r in metrics(tmp_path / "again")] == [1]  # the earlier run is gone, not mixed in
    assert len(list_checkpoints(tmp_path / "again")) == 1


def test_resume_past_the_warm_up_needs_its_reference(tmp_path):
    cfg = write_config(tmp_path, "warm", train={"steps": 1}, checkpoint={"every": 1, "keep_last": 3})
    train.main([str(cfg)])
    for f in sorted((tmp_path / "warm" / "sft_warmup").iterdir()):
        f.unlink()
    (tmp_path / "warm" / "sft_warmup").rmdir()
    with pytest.raises(FileNotFoundError, match="sft_warmup: missing, but the run resumes after its SFT warm-up"):
        train.main([str(cfg), "train.steps=2", "train.resume=true"])


def test_skipped_steps_keep_the_schedule_and_are_logged(tmp_path, monkeypatch):
    real_loss = train.grpo_policy_loss
    calls = []

    def nan_on_first_update(*args, **kwargs):  # the first of μ = 2 updates of GRPO step 2 only
        loss, stats = real_loss(*args, **kwargs)
        calls.append(1)
        return (loss * math.nan if len(calls) == 1 else loss), stats

    monkeypatch.setattr(train, "grpo_policy_loss", nan_on_first_update)
    cfg = write_config(tmp_path, "sched", train={"steps": 3, "sft_warmup_steps": 1, "micro_batch_size": 16},
                       grpo={"updates_per_rollout": 2}, optim={"lr": 1e-3, "warmup_steps": 3, "schedule": "cosine"})
    train.main([str(cfg)])
    rows = metrics(tmp_path / "sched")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert math.isnan(float(rows[1]["loss/total"])) and rows[1]["optim/skipped_updates"] == 1  # not hidden by update 2
    assert rows[2]["optim/skipped_updates"] == 0
    config = load_config(cfg)
    assert [r["optim/lr"] for r in rows] == pytest.approx([1e-3 * lr_factor(s, config, 4) for s in range(4)])
    assert "step 2: non-finite loss" in (tmp_path / "sched" / "train.log").read_text()


def test_the_step_that_stops_the_run_is_logged_and_the_log_closed(tmp_path, monkeypatch):
    real_loss = train.grpo_policy_loss
    monkeypatch.setattr(train, "grpo_policy_loss", lambda *a, **k: (real_loss(*a, **k)[0] * math.nan, real_loss(*a, **k)[1]))
    cfg = write_config(tmp_path, "stop", train={"steps": 5, "sft_warmup_steps": 0, "max_nonfinite_steps": 2})
    with pytest.raises(RuntimeError, match="2 non-finite losses in a row"):
        train.main([str(cfg)])
    assert [r["step"] for r in metrics(tmp_path / "stop")] == [1, 2]  # the second, stopping step is there
    log = (tmp_path / "stop" / "train.log").read_text()
    assert "step 1: non-finite loss" in log and "step 2: non-finite loss" in log
    assert logging.getLogger("mixedr1").handlers == []  # closed although the run raised
