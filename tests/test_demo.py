"""The quick start's machinery on a shortened demo: a format-only SFT warm-up on items whose answers
belong to other items, held-out metrics logged as heldout/* at the first GRPO step, every
log.eval_every steps and at the end, curves.png, and samples with the last step."""

import json
from pathlib import Path

import pytest
from PIL import Image

import train
from mixedr1.data.dataset import load_records
from test_train import metrics, write_config

ROOT = Path(__file__).resolve().parents[1]


def test_short_demo_logs_heldout_metrics_curves_and_samples(tmp_path):
    cfg = write_config(
        tmp_path, "demo", train={"steps": 4, "sft_warmup_steps": 2}, log={"eval_every": 2, "sample_every": 3},
        data={"synth_items": 4, "synth_task": "visual_facts", "synth_heldout_items": 4, "synth_warmup_items": 4,
              "sft_warmup_file": "warmup.jsonl", "eval_file": "heldout.jsonl"},
    )
    summary = train.main([str(cfg)])
    run = tmp_path / "demo"
    rows = metrics(run)
    evaluated = [r["step"] for r in rows if "heldout/format" in r]
    assert evaluated == [2, 4, 6]  # before the first GRPO step, every 2 GRPO steps, after the last
    for key in ("heldout/accuracy/yorn", "heldout/reward/grounding", "heldout/accuracy/open_ended"):
        assert key in rows[-1]
    assert set(summary) >= {"before", "after"}
    assert Image.open(run / "curves.png").size[0] > 0
    sampled = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert sampled[-1]["step"] == 6 and len(sampled[-1]["completions"]) == 4  # the last step, G completions
    assert {"question", "answer"} <= set(sampled[-1]) and "advantage" in sampled[-1]["completions"][0]
    # The warm-up items carry the answers of other items: the same images and questions as fresh
    # items, answers drawn independently (no information about their own image).
    warmup, _ = load_records(run / "data" / "warmup.jsonl", run / "data")
    train_items, _ = load_records(run / "data" / "train.jsonl", run / "data")
    assert {r.problem_type for r in warmup} == {r.problem_type for r in train_items}


@pytest.mark.slow
def test_demo_grpo_learns_the_answers_the_warmup_did_not_teach(tmp_path):
    """configs/demo.yaml as shipped (~3.5 min on 2 cores). The warm-up leaves the greedy held-out
    answers at the majority-class rate (one constant answer per type); GRPO then has only the reward
    to learn from. Margin, issue 15's target: the mean held-out accuracy over yorn and mcq ends at
    least 0.30 above both the majority-class rate (0.375) and the pre-GRPO accuracy. Where it lands
    depends on the trajectory (rounding included): train.seed 0 / 1 / 2 ended at 0.75 / 1.0 / 0.875,
    and at step 310 (half the steps) at 0.575 / 0.75 / 0.375 (experiments/LOG.md), so the test runs
    every step."""
    summary = train.main([str(ROOT / "configs" / "demo.yaml"), f"output_dir={tmp_path / 'demo'}", "log.eval_every=0"])
    types = ("yorn", "mcq")
    majority = sum(summary["majority"][t] for t in types) / len(types)
    before = sum(summary["before"][f"accuracy/{t}"] for t in types) / len(types)
    after = sum(summary["after"][f"accuracy/{t}"] for t in types) / len(types)
    assert majority == pytest.approx(0.375)  # balanced held-out items: 0.5 (yorn), 0.25 (mcq)
    assert after >= majority + 0.30 and after >= before + 0.30, (majority, before, after)
