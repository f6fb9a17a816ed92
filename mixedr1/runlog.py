"""One run directory per run (STYLE 6): text log, metrics (TensorBoard + a JSONL mirror), samples.

Only rank 0 writes; on other ranks every method is a no-op, so the training loop calls them
unconditionally. TensorBoard tags are namespaced (`reward/total`, `reward/open_ended`, `loss/kl`, …).
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
        """Sample completions as text: a JSONL line each, and one markdown table in TensorBoard."""
        if not self.enabled or not rows:
            return
        for row in rows:
            self._samples.write(json.dumps({"step": step, **row}, ensure_ascii=False) + "\n")
        self._samples.flush()
        if self.writer is not None:
            lines = ["| type | reward | completion |", "|---|---|---|"]
            for row in rows:
                text = str(row.get("completion", "")).replace("|", "\\|").replace("\n", " ")
                lines.append(f"| {row.get('problem_type', '')} | {row.get('reward', '')} | {text} |")
            self.writer.add_text("samples", "\n".join(lines), step)

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


def progress_bar(total: int, initial: int, enabled: bool):
    """The training progress bar (steps, rate, ETA) on stderr; a silent one when not `enabled`."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, disable=not enabled)


class RunDirError(InputError):
    """The output directory already holds a run that this one would mix with."""


def claim_run_dir(run_dir: Path, resume: bool, overwrite: bool, is_main: bool) -> tuple[Path | None, list[str]]:
    """Refuse to mix two runs in one directory: an existing run is resumed (`train.resume`), deleted
    (`train.overwrite`), or an error. Returns the checkpoint to resume from and the newer ones passed over."""
    earlier = [name for name in ("config.yaml", "metrics.jsonl", "checkpoints") if (run_dir / name).exists()]
    if earlier and not resume:
        if not overwrite:
            raise RunDirError(f"{run_dir} already holds a run ({', '.join(earlier)}): continue it with train.resume=true, "
                              f"start it over with train.overwrite=true (deletes it), or set another output_dir")
        if is_main:
            shutil.rmtree(run_dir)
        distributed.barrier()
    return find_resume_checkpoint(run_dir) if resume else (None, [])
