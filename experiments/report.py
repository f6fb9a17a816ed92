"""Render the paper's tables and Figure 4 from a results folder (the notebooks call this).

    python experiments/report.py [RESULTS]     # writes RESULTS/report/{<experiment>.md, figure4.png, curves_<experiment>.png}

Everything of ours is read from the folder `experiments/launch.py` writes:
`RESULTS/<experiment>/<row>/eval.json` (eval.py's per-benchmark `summary[...]["score"]`) for the
tables, and the training run's `metrics.jsonl` (`RESULTS/<experiment>/<row>/train/`, or the run of
the row it borrows a checkpoint from) for the curves. The paper's numbers come from
`experiments/paper_numbers.py`. Each table cell reads `ours / paper (ours − paper)`; a row not run
yet shows `– / paper`.

Figure 4 (docs/method.md §6): per open-ended reward design (Table 4's rows), the open-ended reward and the
completion length over training steps. The reward plotted is `accuracy/open_ended`, the accuracy
part of the reward on open-ended items, which is the design's own score; the designs' ranges differ
(BMAS with `combine: sum` in [−2, 2], the encoders' cosines in [−1, 1], the LLM judge in [0, 1]).

A folder written by `experiments/rehearsal.py` holds `REHEARSAL.json`; every rendering of it then
starts with a banner saying the numbers are toy-scale and mean nothing about the paper's claims.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `mixedr1` and `experiments` importable
    sys.path.insert(0, str(REPO))

from experiments.launch import EXPERIMENTS, Experiment, lookup  # noqa: E402
from experiments.paper_numbers import PAPER  # noqa: E402
from mixedr1.evaluation import BENCHMARKS  # noqa: E402

MISSING = "–"


# ================================================================================================
# Reading the results folder


def load_eval(results: str | Path, key: str) -> Optional[dict]:
    """The eval.json of row "<experiment>/<row>", or None if it has not been evaluated."""
    path = Path(results) / key / "eval.json"
    return json.loads(path.read_text()) if path.is_file() else None


def scores(results: str | Path, key: str) -> dict[str, float]:
    """{benchmark: score in percent} of a row; empty if not evaluated."""
    report = load_eval(results, key)
    return {} if report is None else {name: float(s["score"]) for name, s in report["summary"].items()}


def run_dir(results: str | Path, key: str) -> Optional[Path]:
    """The training run behind a row: its own train/, or that of the row it borrows a checkpoint from."""
    row = lookup(key)
    trained = row.checkpoint_of or (key if row.kind == "train" else None)
    return None if trained is None else Path(results) / trained / "train"


def read_metrics(run: Path) -> list[dict]:
    """The rows of a run's metrics.jsonl (non-finite values, written as strings, become NaN)."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            rows.append({k: _number(v) for k, v in json.loads(line).items()})
    return rows


def _number(value):
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def rehearsal_info(results: str | Path) -> Optional[dict]:
    path = Path(results) / "REHEARSAL.json"
    return json.loads(path.read_text()) if path.is_file() else None


def banner(results: str | Path) -> str:
    """A warning line when the folder is the CPU rehearsal's, else ''."""
    info = rehearsal_info(results)
    if info is None:
        return ""
    return (f"**TOY-SCALE REHEARSAL** ({info.get('created', '?')}): a tiny random model, synthetic data, "
            f"{info.get('steps', '?')} training steps, {info.get('items', '?')} questions per toy benchmark. "
            "These numbers test the pipeline and mean nothing about the paper's claims.\n")


# ================================================================================================
# Tables


def columns(experiment: Experiment) -> list[str]:
    """The paper's columns: "avg" first where the paper prints an average, then the benchmarks."""
    has_avg = any("avg" in row for row in PAPER[experiment.name].values())
    return (["avg"] if has_avg else []) + list(experiment.benchmarks)


def column_title(column: str) -> str:
    return "Avg" if column == "avg" else BENCHMARKS[column].column


def table_rows(results: str | Path, name: str) -> list[dict]:
    """Per row of the paper's table: label, prompt, and per column our score, the paper's, the difference.

    Our "avg" is the mean of our scores on the table's benchmarks, only when all are present."""
    experiment = EXPERIMENTS[name]
    out = []
    for row in experiment.rows:
        ours = scores(results, f"{name}/{row.name}")
        ours = {c: ours[c] for c in experiment.benchmarks if c in ours}
        if "avg" in columns(experiment) and len(ours) == len(experiment.benchmarks):
            ours["avg"] = sum(ours.values()) / len(ours)
        paper = PAPER[name].get(row.name, {})
        cells = {}
        for column in columns(experiment):
            o, p = ours.get(column), paper.get(column)
            cells[column] = {"ours": o, "paper": p, "diff": None if o is None or p is None else o - p}
        out.append({"row": row.name, "label": row.label, "prompt": row.prompt, "cells": cells})
    return out


def format_cell(cell: dict) -> str:
    ours = MISSING if cell["ours"] is None else f"{cell['ours']:.1f}"
    paper = MISSING if cell["paper"] is None else f"{cell['paper']:.1f}"
    diff = "" if cell["diff"] is None else f" ({cell['diff']:+.1f})"
    return f"{ours} / {paper}{diff}"


def markdown_table(results: str | Path, name: str) -> str:
    """The experiment as a markdown table in the paper's layout, cells `ours / paper (ours − paper)`."""
    experiment = EXPERIMENTS[name]
    cols = columns(experiment)
    header = ["row", "prompt", *[column_title(c) for c in cols]]
    lines = [f"### {experiment.title}", "", banner(results),
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table_rows(results, name):
        lines.append("| " + " | ".join([row["label"], row["prompt"], *[format_cell(row["cells"][c]) for c in cols]]) + " |")
    lines += ["", "Cells: ours / paper (ours − paper), accuracy in %. " + " ".join(_notes(results, experiment))]
    return "\n".join(lines) + "\n"


def _notes(results: str | Path, experiment: Experiment) -> list[str]:
    """Footnotes drawn from the eval reports: question limits, and MathVista's rule-based scoring."""
    notes, limits = [], set()
    for row in experiment.rows:
        report = load_eval(results, f"{experiment.name}/{row.name}")
        if report is not None and report.get("limit"):
            limits.add(report["limit"])
    if limits:
        notes.append(f"Ours: only the first {', '.join(map(str, sorted(limits)))} questions of each benchmark (eval.py --limit).")
    if "mathvista" in experiment.benchmarks:
        notes.append("Our MathVista is scored by rule-based answer extraction, not the GPT-judged protocol of the paper (lmms-eval).")
    not_run = [r.label for r in experiment.rows if load_eval(results, f"{experiment.name}/{r.name}") is None]
    if not_run:
        notes.append(f"Not run yet: {', '.join(not_run)}.")
    return notes


# ================================================================================================
# Curves


def series(metrics: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of `key` over the logged steps that have a finite value for it."""
    steps, values = [], []
    for m in metrics:
        v = m.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            steps.append(m["step"])
            values.append(float(v))
    return steps, values


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average over `window` points (the first points average what there is)."""
    out = []
    for i in range(len(values)):
        part = values[max(0, i - window + 1) : i + 1]
        out.append(sum(part) / len(part))
    return out


def plot_runs(runs: dict[str, list[dict]], keys: Sequence[tuple[str, str]], title: str, path: Optional[Path] = None):
    """One panel per (metric key, axis label) that some run logged, one line per run; saved as PNG
    when `path` is given.

    Uses `matplotlib.figure.Figure` directly (no pyplot), so it works the same in a notebook, in a
    test and in a script with no display."""
    from matplotlib.figure import Figure

    keys = [(k, y) for k, y in keys if any(series(m, k)[0] for m in runs.values())] or list(keys[:1])
    ncols = 2 if len(keys) > 1 else 1
    nrows = math.ceil(len(keys) / ncols)
    fig = Figure(figsize=(5.5 * ncols, 3.8 * nrows + 0.4), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    for ax, (key, ylabel) in zip(axes, keys):
        for label, metrics in runs.items():
            steps, values = series(metrics, key)
            if not steps:
                continue
            window = max(1, len(values) // 20)  # light smoothing on long runs, none on short ones
            (line,) = ax.plot(steps, smooth(values, window), label=label, linewidth=1.6)
            if window > 1:
                ax.plot(steps, values, color=line.get_color(), alpha=0.25, linewidth=0.8)
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.set_title(key)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


def experiment_runs(results: str | Path, name: str) -> dict[str, list[dict]]:
    """{row label: metrics} of every row of the experiment with a training run (borrowed ones included)."""
    runs = {}
    for row in EXPERIMENTS[name].rows:
        run = run_dir(results, f"{name}/{row.name}")
        metrics = read_metrics(run) if run is not None else []
        if metrics:
            runs[row.label] = metrics
    return runs


def figure4(results: str | Path, path: Optional[Path] = None):
    """Figure 4: open-ended reward and completion length over steps, one line per Table 4 design."""
    title = "Figure 4: open-ended reward designs" + (" (TOY-SCALE REHEARSAL)" if rehearsal_info(results) else "")
    return plot_runs(experiment_runs(results, "table4"),
                     [("accuracy/open_ended", "open-ended reward"), ("completions/mean_length", "completion length (tokens)")],
                     title, path)


CURVE_KEYS = [("reward/total", "reward (R_acc + λ·R_fmt)"), ("completions/mean_length", "completion length (tokens)"),
              ("kl", "KL to the reference"), ("loss/sft_nll", "SFT loss (NLL per token)")]


def training_curves(results: str | Path, name: str, path: Optional[Path] = None):
    """Reward, completion length, KL (GRPO rows) and SFT loss (SFT rows) over steps, one line per
    trained row of the experiment; None if it has none."""
    runs = experiment_runs(results, name)
    if not runs:
        return None
    title = EXPERIMENTS[name].title + (" (TOY-SCALE REHEARSAL)" if rehearsal_info(results) else "")
    return plot_runs(runs, CURVE_KEYS, title, path)


# ================================================================================================


def write_report(results: str | Path, out: Optional[Path] = None) -> list[Path]:
    """Every table as markdown and every figure as PNG under RESULTS/report/ (or `out`)."""
    results = Path(results)
    out = Path(out) if out is not None else results / "report"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in EXPERIMENTS:
        path = out / f"{name}.md"
        path.write_text(markdown_table(results, name))
        written.append(path)
        if training_curves(results, name, out / f"curves_{name}.png") is not None:
            written.append(out / f"curves_{name}.png")
    figure4(results, out / "figure4.png")
    written.append(out / "figure4.png")
    return written


def execute_notebook(notebook: str | Path, results: str | Path, out: Optional[Path] = None, timeout: int = 600) -> Path:
    """Run a notebook headless (nbclient) on `results` (passed as $MIXEDR1_RESULTS); the executed copy
    goes to RESULTS/report/<name>.ipynb (or `out`). Raises if a cell fails."""
    import nbformat
    from nbclient import NotebookClient

    notebook, results = Path(notebook), Path(results).resolve()
    out = Path(out) if out is not None else results / "report" / notebook.name
    nb = nbformat.read(notebook, as_version=4)
    previous = os.environ.get("MIXEDR1_RESULTS")
    os.environ["MIXEDR1_RESULTS"] = str(results)  # the kernel inherits this process's environment
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(notebook.parent)}}).execute()
    finally:
        if previous is None:
            os.environ.pop("MIXEDR1_RESULTS", None)
        else:
            os.environ["MIXEDR1_RESULTS"] = previous
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python experiments/report.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="?", default="results", help="a results folder written by experiments/launch.py")
    folder = Path(parser.parse_args().results)
    if not folder.is_dir():
        print(f"error: {folder}: no such results folder (experiments/launch.py writes one)", file=sys.stderr)
        raise SystemExit(2)
    for written in write_report(folder):
        print(written)
