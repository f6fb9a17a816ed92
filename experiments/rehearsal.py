"""A CPU rehearsal of the whole experiment pipeline at toy scale: launch → train → eval → tables, plots.

    python experiments/rehearsal.py [--results runs/rehearsal] [--experiments table2,table4] \\
        [--rows table2/yorn,table4/bmas | --rows-per-table N] [--steps 30] [--items 3] \\
        [--synth-items 8] [--base-sft-steps 80] [--subprocess] [--notebooks]

It runs the SAME registry and launcher as the real experiments (`experiments/launch.py`), with
the paper's configs and each row's overrides, changed only by:

- one launcher `python` (not torchrun), and train.main / eval.main called in this process unless
  `--subprocess` (the seconds of importing torch for every command add up to minutes here);
- inputs built once under `RESULTS/_inputs/`, every row pointed at them: for each model family the
  selected rows need, a tiny random model of that family (a Qwen2.5-VL for the 3B and 7B rows, a
  native InternVL for Table 3(b)) given a short SFT on the synthetic data, with its family's own
  SFT row's config (`BASE_SFT_ROWS`), so that it writes `<think>…</think><answer>…</answer>`;
  synthetic five-type data (`mixedr1.data.synth`), toy benchmark parquet files in the real schema
  (`experiments/toy_benchmarks.py`) and tiny random judges (`experiments/toy_judges.py`);
- toy sizes appended last to every training command (`TOY_TRAIN`: G = 4, 4 prompts per step,
  32 new tokens, `--steps` steps, lr 1e-4; they also replace Table 3's per-scale step counts) and
  to every evaluation (`--limit`, `--max-new-tokens 32`).

Then it writes `RESULTS/REHEARSAL.json` (settings and seconds per step: the report shows a
TOY-SCALE banner for such a folder) and `RESULTS/report/` (`experiments/report.py`), and with
`--notebooks` executes `experiments/tables.ipynb` and `curves.ipynb` on the folder into
`RESULTS/report/*.ipynb`. The numbers mean nothing about the paper: a random 2-layer model,
placeholder benchmark questions, a handful of steps. What it shows is that every command runs
and every table and plot is rendered from files alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `mixedr1` and `experiments` importable
    sys.path.insert(0, str(REPO))

from experiments import report  # noqa: E402
from mixedr1.config import JUDGE_NAMES  # noqa: E402
from experiments.launch import EXPERIMENTS, MODEL_DIRS, Command, Settings, Step, execute, lookup, plan  # noqa: E402

# Appended last to every training command of the rehearsal (after the row's own overrides): toy sizes
# only, so each row otherwise runs its shipped config. No pixel bounds: the Qwen configs'
# model.max_pixels (1003520) leaves every toy image (synthetic: 56-112 px a side, toy benchmarks
# smaller) exactly as the tiny Qwen processor's own bound (28*28*16) does, and InternVL's config has none.
TOY_TRAIN = (
    "model.gradient_checkpointing=false",
    "rollout.group_size=4", "rollout.max_new_tokens=32", "rollout.prompts_per_batch=4",
    "train.prompts_per_step=4", "train.micro_batch_size=16", "train.sft_warmup_steps=0", "train.cpu_threads=1",
    "optim.lr=1e-4", "optim.warmup_steps=0", "checkpoint.every=0", "checkpoint.keep_last=1",
    "log.sample_every=1", "log.progress_bar=false",
)
# The family (mixedr1.families) of each base model of the registry: its toy stand-in is a tiny random
# model of that family (mixedr1.models.tiny).
MODEL_FAMILIES = {"qwen25vl_3b": "qwen2_5_vl", "qwen25vl_7b": "qwen2_5_vl", "internvl25_4b": "internvl"}
assert set(MODEL_FAMILIES) == set(MODEL_DIRS), "experiments/rehearsal.py: give every MODEL_DIRS key a family"
# Each family's toy base model is its tiny model after a short SFT run with the config and overrides
# of that family's own SFT row, as shipped (InternVL's: configs/mixed_r1_internvl25_4b.yaml).
BASE_SFT_ROWS = {"qwen2_5_vl": "table1/qwen25vl_3b_sft", "internvl": "table3/internvl25_4b_sft"}


def families_needed(chosen: dict[str, list[str]]) -> list[str]:
    """The model families of the chosen rows and of the runs they borrow a checkpoint from."""
    rows = [EXPERIMENTS[name].row(row) for name, names in chosen.items() for row in names]
    models = {lookup(r.checkpoint_of).model if r.checkpoint_of else r.model for r in rows}
    return sorted({MODEL_FAMILIES[m] for m in models})


def build_base_model(inputs: Path, family: str, data: Path, base_sft_steps: int, in_process: bool, log=print) -> Path:
    """The toy base model of `family` under `inputs`: a tiny random model, then (base_sft_steps > 0) a
    short SFT that teaches the format, as the Instruct models follow instructions. Built once."""
    from experiments.launch import run_step
    from mixedr1.models.tiny import build_tiny_model

    tiny = inputs / f"tiny-{family}"
    if not (tiny / "config.json").is_file():
        build_tiny_model(tiny, seed=0, family=family)
    if base_sft_steps == 0:
        return tiny
    row = lookup(BASE_SFT_ROWS[family])
    run = inputs / f"base-sft-{family}"
    base = run / "checkpoints" / f"step-{base_sft_steps:06d}"
    args = (row.config, *row.overrides, f"model.path={tiny}", f"data.data_root={data}", "data.train_file=train.jsonl",
            f"output_dir={run}", *TOY_TRAIN, "train.prompts_per_step=8", f"train.steps={base_sft_steps}",
            "optim.lr=3e-3", "optim.schedule=constant")
    step = Step("train", f"_inputs/base-sft-{family}", Command((sys.executable,), "train.py", args), base)
    if not base.exists():
        log(f"# toy base model ({family}): SFT of the tiny model\n{step.command}")
        run_step(step, in_process)
    return base


def build_inputs(inputs: Path, families: Sequence[str], synth_items: int, base_sft_steps: int, in_process: bool,
                 log=print) -> dict:
    """The tiny base model of each of `families`, data, toy benchmarks and judges, each built once
    (skipped if present)."""
    from experiments.toy_benchmarks import write_benchmarks
    from experiments.toy_judges import build_toy_judges
    from mixedr1.data.synth import write_synthetic_dataset

    inputs.mkdir(parents=True, exist_ok=True)
    data, benchmarks, judges = inputs / "data", inputs / "benchmarks", inputs / "judges"
    if not (data / "train.jsonl").is_file():
        write_synthetic_dataset(data, synth_items, seed=0, heldout_per_type=0)
        # Table 3's toy 20K / 90K mixes: half of the items, and the items twice.
        lines = (data / "train.jsonl").read_text().splitlines(keepends=True)
        (data / "20k.jsonl").write_text("".join(lines[::2]))
        (data / "90k.jsonl").write_text("".join(lines * 2))
    if not (benchmarks / "MMStar").is_dir():
        write_benchmarks(benchmarks)
    judge_paths = {name: judges / name for name in JUDGE_NAMES}
    if not all((p / "config.json").is_file() for p in judge_paths.values()):
        judge_paths = build_toy_judges(judges)
    bases = {family: build_base_model(inputs, family, data, base_sft_steps, in_process, log) for family in families}
    return {"bases": bases, "data": data, "benchmarks": benchmarks, "judges": {k: Path(v) for k, v in judge_paths.items()}}


def toy_settings(results: Path, inputs: dict, steps: int, items: int) -> Settings:
    return Settings(
        results=results, launcher=(sys.executable,),
        model_paths={name: str(inputs["bases"][family]) for name, family in MODEL_FAMILIES.items() if family in inputs["bases"]},
        judge_paths={name: str(path) for name, path in inputs["judges"].items()},
        data_root=str(inputs["data"]), train_file="train.jsonl", bench_root=str(inputs["benchmarks"]),
        train_overrides=(*TOY_TRAIN, f"train.steps={steps}"),
        eval_args=("--limit", str(items), "--max-new-tokens", "32", "--batch-size", "8"),
    )


def selected_rows(experiments: Sequence[str], rows: Optional[Sequence[str]], rows_per_table: Optional[int]) -> dict[str, list[str]]:
    """{experiment: [row names]} to run: the keys named in `rows`, else the first N rows, else all."""
    chosen = {}
    for name in experiments:
        names = [r.name for r in EXPERIMENTS[name].rows]
        if rows is not None:
            names = [n for n in names if f"{name}/{n}" in rows]
        elif rows_per_table is not None:
            names = names[:rows_per_table]
        if names:
            chosen[name] = names
    return chosen


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="experiments/rehearsal.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="runs/rehearsal", help="results folder (runs/ is git-ignored)")
    parser.add_argument("--experiments", default=",".join(EXPERIMENTS), help="comma-separated (default: all)")
    parser.add_argument("--rows", default=None, help="comma-separated <experiment>/<row> keys (default: every row)")
    parser.add_argument("--rows-per-table", type=int, default=None, help="only the first N rows of each experiment")
    parser.add_argument("--steps", type=int, default=30, help="training steps of every trained row")
    parser.add_argument("--items", type=int, default=3, help="questions per toy benchmark (eval.py --limit; the files hold 3)")
    parser.add_argument("--synth-items", type=int, default=8, help="synthetic training items per problem type")
    parser.add_argument("--base-sft-steps", type=int, default=80, help="SFT steps that make the toy base model (0: random)")
    parser.add_argument("--subprocess", action="store_true", help="run every command as its own process")
    parser.add_argument("--notebooks", action="store_true", help="also execute tables.ipynb and curves.ipynb on the results")
    args = parser.parse_args(argv)
    args.experiments = [e for e in args.experiments.split(",") if e]
    unknown = [e for e in args.experiments if e not in EXPERIMENTS]
    if unknown:
        parser.error(f"--experiments: unknown {unknown}; choose from {', '.join(EXPERIMENTS)}")
    args.rows = args.rows.split(",") if args.rows else None
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    results = Path(args.results).resolve()
    os.chdir(REPO)  # the commands' relative paths (configs/, train.py) are the repository's
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models: one thread is fastest
    import torch

    torch.set_num_threads(1)
    in_process = not args.subprocess

    chosen = selected_rows(args.experiments, args.rows, args.rows_per_table)
    families = families_needed(chosen)
    t0 = time.perf_counter()
    inputs = build_inputs(results / "_inputs", families, args.synth_items, args.base_sft_steps, in_process)
    seconds = {f"inputs (tiny {' and '.join(families)}, toy base SFT, data, benchmarks, judges)": time.perf_counter() - t0}
    settings = toy_settings(results, inputs, args.steps, args.items)
    for name, rows in chosen.items():
        seconds.update(execute(plan(EXPERIMENTS[name], settings, rows), settings, in_process))

    seconds["total"] = time.perf_counter() - start
    info = {
        "created": time.strftime("%Y-%m-%d %H:%M:%S"), "toy": True,
        "steps": args.steps, "items": args.items, "synth_items": args.synth_items, "base_sft_steps": args.base_sft_steps,
        "rows": {name: rows for name, rows in chosen.items()}, "in_process": in_process,
        "base_models": {family: str(path) for family, path in inputs["bases"].items()},
        "toy_train_overrides": list(settings.train_overrides), "eval_args": list(settings.eval_args),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }
    previous = report.rehearsal_info(results)  # a second call adds rows to the same folder
    if previous is not None:
        for name, rows in previous.get("rows", {}).items():
            info["rows"][name] = sorted(set(rows) | set(info["rows"].get(name, [])))
        info["base_models"] = {**previous.get("base_models", {}), **info["base_models"]}
    (results / "REHEARSAL.json").write_text(json.dumps(info, indent=1) + "\n")
    written = report.write_report(results)
    if args.notebooks:
        for notebook in ("tables", "curves"):
            written.append(report.execute_notebook(REPO / "experiments" / f"{notebook}.ipynb", results))
    print(f"\nrehearsal: {seconds['total']:.0f} s; results in {results}")
    for k, v in seconds.items():
        print(f"  {v:7.1f} s  {k}")
    for path in written:
        print(f"  wrote {path}")
    return info


if __name__ == "__main__":
    main()
