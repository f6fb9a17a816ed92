"""One run directory per run (STYLE 6): text log, metrics (TensorBoard + a JSONL mirror), samples,
and `curves.png` drawn from the metrics at the end.

Only rank 0 writes; on other ranks every method is a no-op, so the training loop calls them
unconditionally. Tags are namespaced (`reward/total`, `accuracy/open_ended`, `heldout/accuracy/mcq`)
or TRL's names (`kl`, `reward_std`, `completions/mean_length`); the README's metrics table lists them.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from mixedr1 import distributed
from mixedr1.checkpoint import find_resume_checkpoint
from mixedr1.config import InputError

_LOGGER_NAME = "mixedr1"


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _drop_steps_after(path: Path, step: int) -> None:
    """Keep the JSONL lines of `path` whose "step" is at most `step` (and drop a torn last line)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    path.write_text("".join(kept), encoding="utf-8")


class RunLog:
    """Writes `train.log`, `metrics.jsonl`, `samples.jsonl` and TensorBoard events under `run_dir`."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True, resume_step: int | None = None):
        """`resume_step`: a resumed run drops what an earlier attempt logged after this step (the
        JSONL lines and TensorBoard events), so every step appears once."""
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.logger = logging.getLogger(_LOGGER_NAME)
        self.writer = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        for handler in list(self.logger.handlers):
            self.logger.removeHandler(handler)
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
        for handler in (logging.FileHandler(self.run_dir / "train.log"), logging.StreamHandler(sys.stderr)):
            handler.setFormatter(fmt)
            self.logger.addHandler(handler)
        if resume_step is not None:
            for name in ("metrics.jsonl", "samples.jsonl"):
                _drop_steps_after(self.run_dir / name, resume_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = {} if resume_step is None else {"purge_step": resume_step + 1}
            self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), **purge)
        self._metrics = open(self.run_dir / "metrics.jsonl", "a")
        self._samples = open(self.run_dir / "samples.jsonl", "a")

    def info(self, message: str) -> None:
        if self.enabled:
            self.logger.info(message)

    def warning(self, message: str) -> None:
        if self.enabled:
            self.logger.warning(message)

    def metrics(self, step: int, values: dict[str, Any]) -> None:
        """One JSONL line and one TensorBoard scalar per key (keys are namespaced tags)."""
        if not self.enabled:
            return
        row = {"step": step, "time": time.time(), **{k: _jsonable(v) for k, v in values.items()}}
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()
        if self.writer is not None:
            for key, value in values.items():
                value = _jsonable(value)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(key, value, step)
            self.writer.flush()

    def samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Sample completions (`metrics.sample_rows`: one row per prompt with its completions): a JSONL
        line per prompt, and one markdown table in TensorBoard with a line per completion."""
        if not self.enabled or not rows:
            return
        for row in rows:
            self._samples.write(json.dumps({"step": step, **row}, ensure_ascii=False) + "\n")
        self._samples.flush()
        if self.writer is not None:
            cell = lambda value: str(value).replace("|", "\\|").replace("\n", " ")  # noqa: E731
            lines = ["| type | answer | reward | advantage | completion |", "|---|---|---|---|---|"]
            for row in rows:
                for c in row.get("completions", [row]):
                    lines.append(f"| {row.get('problem_type', '')} | {cell(row.get('answer', ''))} | {c.get('reward', '')} | "
                                 f"{c.get('advantage', '')} | {cell(c.get('completion', ''))} |")
            self.writer.add_text("samples", "\n".join(lines), step)

    def plot_curves(self) -> None:
        """`curves.png` in the run directory from metrics.jsonl (`plot_curves`); a logged note instead
        when matplotlib is missing."""
        if not self.enabled:
            return
        self._metrics.flush()
        try:
            path = plot_curves(self.run_dir / "metrics.jsonl", self.run_dir / "curves.png")
        except ImportError as e:
            self.info(f"curves.png not drawn: {e} (pip install -r requirements.txt)")
            return
        if path is not None:
            self.info(f"training curves: {path}")

    def close(self) -> None:
        if not self.enabled:
            return
        self._metrics.close()
        self._samples.close()
        if self.writer is not None:
            self.writer.close()
        for handler in list(self.logger.handlers):
            handler.close()
            self.logger.removeHandler(handler)


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl (a torn last line is skipped)."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [s for s, _ in points], [v for _, v in points]


def _moving_average(values: list[float], window: int) -> list[float]:
    return [sum(values[max(0, i - window + 1) : i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(values))]


CURVE_TYPES = ("yorn", "mcq", "chart", "grounding", "open_ended")


def plot_curves(metrics_path: Path, out: Path, smooth: int = 10) -> Path | None:
    """Six panels over steps: training reward per type (a `smooth`-step moving average), held-out
    accuracy (yorn, mcq, chart; grounding as mean IoU), held-out open-ended BMAS and format rate,
    completion length (mean, min, max), KL to the reference, and the GRPO signal (`reward_std`,
    `frac_reward_zero_std`). None when metrics.jsonl has no GRPO step. Needs matplotlib (no pyplot:
    nothing global is touched)."""
    from matplotlib.figure import Figure

    rows = read_metrics(metrics_path)
    if not any("reward/total" in r for r in rows):
        return None
    fig = Figure(figsize=(15, 8.5), layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    panels = [
        ("training reward per type (R_acc + λ·R_fmt, sampled)", [(f"reward/type/{t}", t) for t in CURVE_TYPES], smooth),
        ("held-out accuracy (greedy; grounding: mean IoU)", [(f"heldout/accuracy/{t}", t) for t in CURVE_TYPES[:4]], 0),
        ("held-out open-ended BMAS ([-2, 2]) and format rate", [("heldout/accuracy/open_ended", "BMAS"), ("heldout/format", "format")], 0),
        ("completion length (tokens)", [("completions/mean_length", "mean"), ("completions/min_length", "min"),
                                        ("completions/max_length", "max")], 0),
        ("KL to the reference (k3, token mean)", [("kl", "kl")], 0),
        ("GRPO signal", [("reward_std", "reward_std (within group)"), ("frac_reward_zero_std", "frac_reward_zero_std")], 0),
    ]
    for ax, (title, keys, window) in zip(axes, panels):
        for key, label in keys:
            steps, values = _series(rows, key)
            if steps:
                ax.plot(steps, _moving_average(values, window) if window else values, label=label,
                        marker="" if window or len(steps) > 30 else "o")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(f"{Path(metrics_path).parent.name}: {Path(metrics_path)}", fontsize=10)
    fig.savefig(out, dpi=80)
    return Path(out)


def progress_bar(total: int, initial: int, enabled: bool):
    """The training progress bar (steps, rate, ETA) on stderr; a silent one when not `enabled`."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, disable=not enabled)


class RunDirError(InputError):
    """The output directory already holds a run that this one would mix with."""


def claim_run_dir(run_dir: Path, resume: bool, overwrite: bool, is_main: bool) -> tuple[Path | None, list[str]]:
    """Refuse to mix two runs in one directory: an existing run is resumed (`train.resume`), deleted
    (`train.overwrite`), or an error. Returns the checkpoint to resume from and the newer ones passed over."""
    # Rank 0 looks and tells the others: a rank that looked later could see the files rank 0 has just begun.
    earlier = distributed.broadcast_object(
        [name for name in ("config.yaml", "metrics.jsonl", "checkpoints") if (run_dir / name).exists()] if is_main else None)
    if earlier and not resume:
        if not overwrite:
            raise RunDirError(f"{run_dir} already holds a run ({', '.join(earlier)}): continue it with train.resume=true, "
                              f"start it over with train.overwrite=true (deletes it), or set another output_dir")
        if is_main:
            shutil.rmtree(run_dir)
        distributed.barrier()
    distributed.check_shared_folder(run_dir, "output_dir (each rank writes its checkpoint shards there)")
    return find_resume_checkpoint(run_dir) if resume else (None, [])
