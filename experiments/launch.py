"""The paper's experiments as a registry, and the launcher that trains and evaluates every row.

    python experiments/launch.py table2 --dry-run          # print the commands
    python experiments/launch.py table2 [--results results] [--nproc 8] [--model-dir models] \\
        [--judge-dir models] [--data data/mixed45k] [--train-file mixed45k.jsonl] [--bench-root benchmarks] \\
        [--rows yorn,mcq] [--set key=value ...] [--eval-args "--batch-size 16"]
    python experiments/launch.py all --dry-run             # every experiment
    python experiments/launch.py table1 --nnodes 2 --node-rank R --rdzv-endpoint HOST:29500 [...]  # on each node R

Experiments (docs/method.md §6): `table1` main results (3B / 7B: base model direct and thinking, + SFT
baseline, + Mixed-R1), `table2` rewards added one by one, `table3` data scale and InternVL2.5-4B,
`table4` open-ended reward designs, `others` Mixed-R1 7B on the further benchmarks the paper lists.

Every row is one of three kinds:
- **base**: evaluate a base model as downloaded (`model`, no `config`): the baseline rows;
- **train**: `torchrun --nproc_per_node N train.py CONFIG OVERRIDES` from a base model, then
  evaluate its final checkpoint. The row's OVERRIDES are its difference from the config (e.g.
  `data.problem_types=[yorn,mcq]`); the launcher then appends the paths (`model.path`, `data.*`,
  `reward.judge_model`, `output_dir`) and `train.resume=true`, so a row works whatever else the
  config holds, and an interrupted run continues from its last checkpoint;
- **checkpoint_of**: evaluate another row's trained checkpoint (trained first if it is not yet).
  The paper prints identical numbers for Table 1's Mixed-R1 3B, Table 2's "+Open-Ended" and
  Table 3's 45K rows: one run, evaluated into each table's folder.

Results layout (fixed; `experiments/report.py` and the notebooks read it):

    RESULTS/<experiment>/<row>/
        train/         train.py's run directory: config.yaml, metrics.jsonl, tensorboard/,
                       samples.jsonl, train.log, checkpoints/step-N/   (train rows only)
        eval.json      eval.py's report; eval.md its table; eval.predictions.rank*.jsonl its cache
        launch.json    the commands run for this row, when, and their wall-clock seconds

More than one node: run the launcher on every node with the same arguments but `--node-rank`
(`--dry-run` prints each node's command). Every step then runs as `torchrun --nnodes N --node_rank R
--master_addr HOST --master_port PORT` on all nodes together (torchrun's static rendezvous: node R's
ranks are R*nproc .. R*nproc+nproc-1, which `distributed.mesh: [N, nproc]` shards within). The nodes
must see the same paths (models, data, results: a shared filesystem); only node 0 writes launch.json.

A finished step is skipped when the launcher is run again (training: the final checkpoint exists;
evaluation: `eval.json` exists); delete a row's folder to run it again.

Decisions (the paper is silent): the "+SFT baseline" rows are the paper's "no thinking" rows
(Table 1): they train on targets without `<think>` text (`train.sft_think=none`: `<answer>ground
truth</answer>`, `build_sft_target`) and are evaluated with the direct prompt, the InternVL SFT row
(Table 3(b)) likewise. The InternVL
base row is evaluated with the direct prompt, like Table 1's baselines. Table 3's scale rows train
one epoch of the scaled data (`configs/data_scale.yaml`: 350 / 700 / 1400 steps). Table 3(b)'s
InternVL rows train with `configs/mixed_r1_internvl25_4b.yaml` (the main settings, no Qwen pixel
bounds); its SFT row adds configs/sft_baseline.yaml's SFT settings as overrides (`SFT_OVERRIDES`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `mixedr1` importable
    sys.path.insert(0, str(REPO))

from mixedr1.config import ConfigError, load_config  # noqa: E402
from mixedr1.evaluation import BENCHMARKS, TABLE1  # noqa: E402

# Base models: the key a row names → the folder under --model-dir (local Hugging Face downloads).
MODEL_DIRS = {
    "qwen25vl_3b": "Qwen2.5-VL-3B-Instruct",
    "qwen25vl_7b": "Qwen2.5-VL-7B-Instruct",
    "internvl25_4b": "InternVL2_5-4B-hf",  # InternVL2.5-4B converted to transformers' native InternVL format
}
# A row that trains SFT from a GRPO config (Table 3(b): InternVL has no SFT config of its own, as
# configs/sft_baseline.yaml carries Qwen's pixel bound): configs/sft_baseline.yaml's algorithm and
# optimizer settings, as overrides (tests/test_experiments.py checks they stay equal to the file's).
SFT_OVERRIDES = ("train.algorithm=sft", "optim.lr=1.0e-5", "optim.warmup_steps=20", "optim.schedule=cosine",
                 "train.sft_think=none")
INTERNVL_CONFIG = "configs/mixed_r1_internvl25_4b.yaml"  # Table 3(b): no Qwen pixel bounds
# Table 4's external judges: reward.open_ended → the folder under --judge-dir.
JUDGE_DIRS = {
    "modernbert": "ModernBERT-base",
    "sbert": "all-MiniLM-L6-v2",
    "llm_judge": "Qwen2.5-0.5B-Instruct",
}
PROMPTS = ("thinking", "direct")


@dataclass(frozen=True)
class Row:
    """One row of a paper table: what is trained (if anything) and how it is evaluated."""

    name: str  # folder under RESULTS/<experiment>/, and the key of paper_numbers.PAPER
    label: str  # the row's label in the paper's table (unique within the experiment: curves are keyed by it)
    prompt: str  # eval.py --prompt: "thinking" (docs/method.md §2) or "direct" (the benchmark's own prompt)
    model: Optional[str] = None  # key of MODEL_DIRS: the model evaluated (base) or trained from (train)
    config: Optional[str] = None  # configs/*.yaml to train with; None = this row trains nothing
    overrides: tuple[str, ...] = ()  # key=value: what this row changes in the config
    judge: Optional[str] = None  # key of JUDGE_DIRS: the external judge this row's reward needs
    checkpoint_of: Optional[str] = None  # "<experiment>/<row>": evaluate that row's trained checkpoint
    train_file: Optional[str] = None  # another mix beside Settings.train_file (same folder), e.g. Table 3's 20k.jsonl

    @property
    def kind(self) -> str:
        return "checkpoint_of" if self.checkpoint_of else "train" if self.config else "base"


@dataclass(frozen=True)
class Experiment:
    """A paper table: its rows and the benchmarks every row is evaluated on (its columns)."""

    name: str
    title: str
    benchmarks: tuple[str, ...]
    rows: tuple[Row, ...]

    def row(self, name: str) -> Row:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"{self.name}: no row {name!r} (rows: {', '.join(r.name for r in self.rows)})")


def _table1_rows(size: str) -> tuple[Row, ...]:
    model, label = f"qwen25vl_{size}", f"Qwen2.5-VL-{size.upper()}"
    return (
        Row(f"{model}_direct", label, "direct", model=model),
        Row(f"{model}_thinking", f"{label} (thinking)", "thinking", model=model),
        # The paper's "no thinking" SFT rows: trained on <answer> alone, evaluated with the direct prompt.
        Row(f"{model}_sft", f"{label} + SFT baseline", "direct", model=model, config="configs/sft_baseline.yaml",
            overrides=("train.algorithm=sft", "train.sft_think=none")),
        Row(f"{model}_mixed_r1", f"{label} + Mixed-R1", "thinking", model=model, config=f"configs/mixed_r1_qwen25vl_{size}.yaml"),
    )


def _stage(name: str, label: str, types: list[str]) -> Row:
    return Row(name, label, "thinking", model="qwen25vl_3b", config="configs/ablation_rewards.yaml",
               overrides=(f"data.problem_types=[{','.join(types)}]",))


def _open_ended(design: str, label: str, judge: bool) -> Row:
    return Row(design, label, "thinking", model="qwen25vl_3b", config="configs/ablation_open_ended.yaml",
               overrides=(f"reward.open_ended={design}",), judge=design if judge else None)


ABLATION_BENCHMARKS = ("mathvista", "mathvision", "mmmu", "mmstar")  # Tables 2 and 4

EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    Experiment("table1", "Table 1: main results", TABLE1, _table1_rows("3b") + _table1_rows("7b")),
    Experiment("table2", "Table 2: rewards added one by one (Qwen2.5-VL-3B)", ABLATION_BENCHMARKS, (
        Row("baseline", "Qwen2.5-VL-3B (baseline)", "direct", model="qwen25vl_3b"),
        _stage("yorn", "+ YORN", ["yorn"]),
        _stage("mcq", "+ MCQ", ["yorn", "mcq"]),
        _stage("chart", "+ Chart", ["yorn", "mcq", "chart"]),
        _stage("grounding", "+ IoU", ["yorn", "mcq", "chart", "grounding"]),
        Row("open_ended", "+ Open-Ended", "thinking", checkpoint_of="table1/qwen25vl_3b_mixed_r1"),
    )),
    Experiment("table3", "Table 3: data scale (Qwen2.5-VL-3B) and InternVL2.5-4B", ("mathvista", "mathvision", "mmstar"), (
        # The 20K / 90K mixes of experiments/build_mixed45k.py: each category halved / doubled with items
        # drawn from the filtered pool (90K takes items not in 45K before repeating any).
        Row("scale_0.5", "20K (each category halved)", "thinking", model="qwen25vl_3b", config="configs/data_scale.yaml",
            overrides=("train.steps=350",), train_file="20k.jsonl"),
        Row("scale_1", "45K", "thinking", checkpoint_of="table1/qwen25vl_3b_mixed_r1"),
        Row("scale_2", "90K (each category doubled)", "thinking", model="qwen25vl_3b", config="configs/data_scale.yaml",
            overrides=("train.steps=1400",), train_file="90k.jsonl"),
        Row("internvl25_4b_base", "InternVL2.5-4B", "direct", model="internvl25_4b"),
        Row("internvl25_4b_sft", "InternVL2.5-4B + SFT", "direct", model="internvl25_4b", config=INTERNVL_CONFIG,
            overrides=SFT_OVERRIDES),
        Row("internvl25_4b_mixed_r1", "InternVL2.5-4B + Mixed-R1", "thinking", model="internvl25_4b", config=INTERNVL_CONFIG),
    )),
    Experiment("table4", "Table 4: open-ended reward designs (Qwen2.5-VL-3B)", ABLATION_BENCHMARKS, (
        _open_ended("modernbert", "ModernBERT", judge=True),
        _open_ended("sbert", "Sentence-BERT", judge=True),
        _open_ended("llm_judge", "Qwen2.5-0.5B (LLM judge)", judge=True),
        _open_ended("bipartite", "Tokenizer bipartite matching", judge=False),
        _open_ended("bmas", "BMAS (ours)", judge=False),
    )),
    Experiment("others", "Mixed-R1 (7B) on further benchmarks",
               ("mathvista", "mmmu_pro", "mathverse", "mm_math", "mmiq", "m3cot"), (
        Row("qwen25vl_7b_mixed_r1", "Mixed-R1 (7B)", "thinking", checkpoint_of="table1/qwen25vl_7b_mixed_r1"),
    )),
)}


def check_registry() -> None:
    """Every row is exactly one kind, names what it needs, and its references resolve."""
    for experiment in EXPERIMENTS.values():
        assert all(b in BENCHMARKS for b in experiment.benchmarks), experiment.name
        assert len({r.name for r in experiment.rows}) == len(experiment.rows), f"{experiment.name}: duplicate row"
        assert len({r.label for r in experiment.rows}) == len(experiment.rows), f"{experiment.name}: duplicate label"
        for row in experiment.rows:
            where = f"{experiment.name}/{row.name}"
            assert row.prompt in PROMPTS, where
            if row.checkpoint_of:
                assert row.model is None and row.config is None, f"{where}: checkpoint_of rows train nothing"
                assert lookup(row.checkpoint_of).kind == "train", f"{where}: {row.checkpoint_of} trains nothing"
            else:
                assert row.model in MODEL_DIRS, f"{where}: unknown model {row.model!r}"
            assert row.judge is None or row.judge in JUDGE_DIRS, where


def lookup(key: str) -> Row:
    """The row named "<experiment>/<row>"."""
    experiment, _, row = key.partition("/")
    if experiment not in EXPERIMENTS:
        raise KeyError(f"{key}: no experiment {experiment!r} (experiments: {', '.join(EXPERIMENTS)})")
    return EXPERIMENTS[experiment].row(row)


# ================================================================================================
# Commands


@dataclass
class Settings:
    """Where things are on this machine, and how commands run (the command line of this script)."""

    results: Path = Path("results")
    nproc: int = 8  # processes per run (GPUs); torchrun unless `launcher` is given
    model_paths: dict = field(default_factory=lambda: {k: f"models/{v}" for k, v in MODEL_DIRS.items()})
    judge_paths: dict = field(default_factory=lambda: {k: f"models/{v}" for k, v in JUDGE_DIRS.items()})
    data_root: str = "data/mixed45k"  # data.data_root: the folder the training JSONL's image paths are relative to
    train_file: str = "mixed45k.jsonl"  # data.train_file, relative to data_root (build_mixed45k.py's layout)
    bench_root: str = "benchmarks"  # eval.py --data-root: one sub-folder per benchmark
    launcher: Optional[tuple[str, ...]] = None  # None: torchrun --standalone --nproc_per_node N (or across nodes)
    nnodes: int = 1  # machines each run spans; above 1, torchrun's static rendezvous at rdzv_endpoint
    node_rank: int = 0  # this machine's place among them (0 hosts the rendezvous)
    rdzv_endpoint: str = ""  # HOST:PORT of node 0, reachable from every node (nnodes > 1)
    train_overrides: tuple[str, ...] = ()  # appended last to every training command (site or toy sizes)
    eval_args: tuple[str, ...] = ()  # appended to every eval command

    def prefix(self) -> tuple[str, ...]:
        if self.launcher:
            return self.launcher
        if self.nnodes == 1:
            return ("torchrun", "--standalone", "--nproc_per_node", str(self.nproc))
        host, _, port = self.rdzv_endpoint.rpartition(":")
        return ("torchrun", "--nnodes", str(self.nnodes), "--node_rank", str(self.node_rank), "--nproc_per_node",
                str(self.nproc), "--master_addr", host, "--master_port", port)


@dataclass(frozen=True)
class Command:
    """`launcher script args...`, e.g. `torchrun --nproc_per_node 8 train.py configs/x.yaml k=v`."""

    launcher: tuple[str, ...]
    script: str  # "train.py" or "eval.py", relative to the repository root
    args: tuple[str, ...]

    @property
    def argv(self) -> list[str]:
        return [*self.launcher, self.script, *self.args]

    def __str__(self) -> str:
        return shlex.join(self.argv)


@dataclass(frozen=True)
class Step:
    """One command of a plan, and the file that says it is done."""

    kind: str  # "train" or "eval"
    key: str  # "<experiment>/<row>" whose folder the step writes into
    command: Command
    done_when: Path  # exists once the step has finished


def row_dir(settings: Settings, key: str) -> Path:
    return settings.results / key


def train_command(key: str, settings: Settings) -> Command:
    """torchrun ... train.py CONFIG <row's overrides> <paths> output_dir=... train.resume=true <extra>."""
    row = lookup(key)
    if row.kind != "train":
        raise ValueError(f"{key} trains nothing")
    train_file = str(Path(settings.train_file).with_name(row.train_file)) if row.train_file else settings.train_file
    paths = [f"model.path={settings.model_paths[row.model]}", f"data.data_root={settings.data_root}",
             f"data.train_file={train_file}"]
    if row.judge:
        paths.append(f"reward.judge_model={settings.judge_paths[row.judge]}")
    args = (row.config, *row.overrides, *paths, f"output_dir={row_dir(settings, key) / 'train'}",
            "train.resume=true", *settings.train_overrides)
    return Command(settings.prefix(), "train.py", args)


def final_checkpoint(key: str, settings: Settings) -> Path:
    """The checkpoint train.py writes last: RUN/checkpoints/step-{sft_warmup_steps + steps:06d}."""
    command = train_command(key, settings)
    config = load_config(REPO / command.args[0], list(command.args[1:]))
    total = config.train.sft_warmup_steps + config.train.steps
    return Path(config.output_dir) / "checkpoints" / f"step-{total:06d}"


def eval_command(experiment: Experiment, row: Row, settings: Settings, checkpoint: Path | str) -> Command:
    key = f"{experiment.name}/{row.name}"
    args = ("--ckpt", str(checkpoint), "--data-root", settings.bench_root, "--benchmarks", ",".join(experiment.benchmarks),
            "--prompt", row.prompt, "--output", str(row_dir(settings, key) / "eval.json"), *settings.eval_args)
    return Command(settings.prefix(), "eval.py", args)


def plan(experiment: Experiment, settings: Settings, rows: Optional[Sequence[str]] = None, strict: bool = True) -> list[Step]:
    """The steps of `experiment` (all rows, or those named), in order: each row's training (or the
    training of the row it borrows a checkpoint from, once) before its evaluation.

    `strict=False` (dry runs): a config that does not load yet gives a placeholder checkpoint name
    instead of an error."""
    steps: list[Step] = []
    for name in rows if rows is not None else [r.name for r in experiment.rows]:
        row = experiment.row(name)
        key = f"{experiment.name}/{row.name}"
        if row.kind == "base":
            checkpoint = settings.model_paths[row.model]
        else:
            trained = row.checkpoint_of or key
            try:
                checkpoint = final_checkpoint(trained, settings)
            except ConfigError:
                if strict:
                    raise
                checkpoint = row_dir(settings, trained) / "train" / "checkpoints" / "step-FINAL"
            if not any(s.kind == "train" and s.key == trained for s in steps):
                steps.append(Step("train", trained, train_command(trained, settings), checkpoint))
        command = eval_command(experiment, row, settings, checkpoint)
        steps.append(Step("eval", key, command, row_dir(settings, key) / "eval.json"))
    return steps


# ================================================================================================
# Running


def run_step(step: Step, in_process: bool = False) -> float:
    """Run one step (from the repository root: the caller's working directory must be it, as the
    step's relative paths are); returns its wall-clock seconds. `in_process` calls
    train.main / eval.main with the same arguments instead of starting a process (the rehearsal:
    it saves the seconds of importing torch for every command; only with a one-process launcher)."""
    t0 = time.perf_counter()
    if in_process:
        import importlib

        module = importlib.import_module(step.command.script.removesuffix(".py"))
        module.main(list(step.command.args))
    else:
        subprocess.run(step.command.argv, cwd=REPO, check=True)
    return time.perf_counter() - t0


def record(settings: Settings, step: Step, seconds: float) -> None:
    """Append the step to its row's launch.json (the commands that made the folder's contents)."""
    path = row_dir(settings, step.key) / "launch.json"
    entries = json.loads(path.read_text()) if path.is_file() else []
    entries.append({"kind": step.kind, "command": str(step.command), "seconds": round(seconds, 2),
                    "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries, indent=1) + "\n")


def execute(steps: Sequence[Step], settings: Settings, in_process: bool = False, log=print) -> dict[str, float]:
    """Run every step not yet done; returns {"kind key": seconds} of those run."""
    seconds = {}
    for step in steps:
        if step.done_when.exists():
            log(f"# done already: {step.kind} {step.key} ({step.done_when})")
            continue
        log(f"# {step.kind} {step.key}\n{step.command}")
        seconds[f"{step.kind} {step.key}"] = elapsed = run_step(step, in_process)
        if not step.done_when.exists():
            raise RuntimeError(f"{step.kind} {step.key} finished but {step.done_when} is missing"
                               + (" on this node (do all nodes share the results folder?)" if settings.nnodes > 1 else ""))
        if settings.node_rank == 0:
            record(settings, step, elapsed)
    return seconds


def describe(experiment: Experiment, settings: Settings, steps: Sequence[Step]) -> str:
    """The dry-run text: each step's command, under a comment naming the row."""
    lines = [f"# {experiment.name}: {experiment.title}"]
    for step in steps:
        row = lookup(step.key)
        what = f"{row.label}" + (f" ({', '.join(row.overrides)})" if step.kind == "train" and row.overrides else "")
        if not step.key.startswith(experiment.name + "/"):
            what += " [another table's run, evaluated here too; skipped when done]"
        lines += [f"# {step.kind} {step.key}: {what}", str(step.command)]
    return "\n".join(lines)


def per_node_commands(argv: Sequence[str], nnodes: int) -> str:
    """What to run on each node: this launcher's command line, `--dry-run` dropped, `--node-rank k`."""
    args, skip = [], False
    for arg in argv:
        if skip or arg == "--dry-run" or arg.startswith("--node-rank="):
            skip = False
            continue
        if arg == "--node-rank":
            skip = True
            continue
        args.append(arg)
    lines = [f"# {nnodes} nodes: run the launcher on every node, each with its --node-rank (each step's torchrun "
             f"waits for all nodes); the commands below are this node's"]
    for rank in range(nnodes):
        lines.append(f"# node {rank}: " + shlex.join(["python", "experiments/launch.py", *args, "--node-rank", str(rank)]))
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="experiments/launch.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=[*EXPERIMENTS, "all"])
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--rows", default=None, help="comma-separated row names (default: all rows of the experiment)")
    parser.add_argument("--results", default="results", help="results folder (layout: module docstring)")
    parser.add_argument("--nproc", type=int, default=8, help="torchrun --nproc_per_node (processes per node)")
    parser.add_argument("--nnodes", type=int, default=1, help="nodes every run spans (run this launcher on each)")
    parser.add_argument("--node-rank", type=int, default=0, help="this node's rank, 0 .. nnodes-1 (node 0 hosts the rendezvous)")
    parser.add_argument("--rdzv-endpoint", default="", metavar="HOST:PORT",
                        help="node 0's address and a free port, reachable from every node (needed with --nnodes > 1)")
    parser.add_argument("--model-dir", default="models", help=f"holds {', '.join(MODEL_DIRS.values())}")
    parser.add_argument("--judge-dir", default=None, help=f"holds {', '.join(JUDGE_DIRS.values())} (default: --model-dir)")
    parser.add_argument("--data", default="data/mixed45k",
                        help="data.data_root of the training data (build_mixed45k.py --out)")
    parser.add_argument("--train-file", default="mixed45k.jsonl",
                        help="data.train_file, relative to --data; Table 3 reads 20k.jsonl / 90k.jsonl beside it")
    parser.add_argument("--bench-root", default="benchmarks", help="eval.py --data-root")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override for every training run")
    parser.add_argument("--eval-args", default="", help='extra eval.py arguments, e.g. "--batch-size 16"')
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Commands run from the repository root: paths given relative to another folder are made absolute."""
    def where(path: str) -> str:
        return path if Path.cwd().resolve() == REPO or Path(path).is_absolute() else str(Path(path).resolve())

    model_dir, judge_dir = where(args.model_dir), where(args.judge_dir or args.model_dir)
    if args.nnodes < 1 or not 0 <= args.node_rank < args.nnodes:
        raise SystemExit(f"--node-rank {args.node_rank}: expected 0 .. {args.nnodes - 1} (--nnodes {args.nnodes})")
    host, _, port = args.rdzv_endpoint.rpartition(":")
    if args.nnodes > 1 and not (host and port.isdigit()):
        raise SystemExit(f"--rdzv-endpoint {args.rdzv_endpoint!r}: expected HOST:PORT of node 0 with --nnodes {args.nnodes}")
    return Settings(
        results=Path(where(args.results)), nproc=args.nproc,
        nnodes=args.nnodes, node_rank=args.node_rank, rdzv_endpoint=args.rdzv_endpoint,
        model_paths={k: f"{model_dir}/{v}" for k, v in MODEL_DIRS.items()},
        judge_paths={k: f"{judge_dir}/{v}" for k, v in JUDGE_DIRS.items()},
        data_root=where(args.data), train_file=args.train_file, bench_root=where(args.bench_root),
        train_overrides=tuple(args.set), eval_args=tuple(shlex.split(args.eval_args)),
    )


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    settings = settings_from_args(args)
    names = list(EXPERIMENTS) if args.experiment == "all" else [args.experiment]
    rows = args.rows.split(",") if args.rows else None
    if rows and len(names) > 1:
        raise SystemExit("--rows needs one experiment")
    os.chdir(REPO)
    if args.dry_run and settings.nnodes > 1:
        print(per_node_commands(list(sys.argv[1:] if argv is None else argv), settings.nnodes) + "\n")
    for name in names:
        experiment = EXPERIMENTS[name]
        steps = plan(experiment, settings, rows, strict=not args.dry_run)
        if args.dry_run:
            print(describe(experiment, settings, steps) + "\n")
        else:
            execute(steps, settings)


check_registry()

if __name__ == "__main__":
    main()
