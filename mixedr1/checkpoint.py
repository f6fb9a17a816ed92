"""Checkpoints: a Hugging Face directory plain `from_pretrained` loads, plus the state to resume exactly.

    output_dir/checkpoints/step-000100/
        config.json, generation_config.json, model.safetensors   <- the policy, full (unsharded) weights
        tokenizer / processor files                              <- so eval.py and from_pretrained need nothing else
        train_state.pt        optimizer (full, FQN-keyed), scheduler, step, data position, RNG of rank 0
        rng_rank{r}.pt        RNG states of every rank (torch, CUDA, python, numpy)
        manifest.json         size and SHA-256 of every file above, written last

A checkpoint is written into `step-N.tmp` and renamed to `step-N` only when complete, so a run killed
mid-save leaves the previous good checkpoint as the latest; stale `.tmp` folders are removed at the
next save. A resume (`find_resume_checkpoint`) takes the newest checkpoint whose files all match its
manifest and says why any newer one was passed over (no manifest, a file missing, truncated or
changed). Weights and optimizer state are gathered to full tensors with torch's distributed
state-dict API, which serves plain and FSDP2-sharded models alike; loading goes through the same API
(`broadcast_from_rank0`). Everything is read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from . import distributed

_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


MANIFEST = "manifest.json"


def checkpoint_step(path: Path) -> int:
    return int(_STEP_DIR.match(path.name).group(1))


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoint directories (renamed from `.tmp`, so written whole, though not yet verified), oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if _STEP_DIR.match(p.name) and p.is_dir()), key=checkpoint_step)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path) -> None:
    """Size and SHA-256 of every file in `directory` (recursively), in `manifest.json`, written last."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = {str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}
    (directory / MANIFEST).write_text(json.dumps({"files": entries}, indent=1) + "\n", encoding="utf-8")


def verify_checkpoint(directory: Path) -> str | None:
    """None when every file of the manifest is there with its size and checksum; else why not."""
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return "no manifest.json (not written completely, or by an older version)"
    try:
        entries = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError):
        return "manifest.json is not readable"
    for name, entry in entries.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != entry["size"]:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {entry['size']} (truncated?)"
        if _sha256(path) != entry["sha256"]:
            return f"{name} does not match its checksum (changed or corrupted)"
    if "train_state.pt" not in entries:
        return "no train_state.pt"
    return None


def find_resume_checkpoint(output_dir: str | Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint that verifies, and one line for each newer one passed over (and why)."""
    passed_over = []
    for path in reversed(list_checkpoints(output_dir)):
        problem = verify_checkpoint(path)
        if problem is None:
            return path, passed_over
        passed_over.append(f"checkpoint {path} skipped: {problem}")
    return None, passed_over


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest checkpoint that verifies against its manifest (None if there is none)."""
    return find_resume_checkpoint(output_dir)[0]


def rng_state() -> dict[str, Any]:
    """Every RNG a run draws from, in types `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _full_options() -> StateDictOptions:
    # cpu_offload gathers onto rank 0's CPU only, so other ranks hold nothing (needs a process group).
    return StateDictOptions(full_state_dict=True, cpu_offload=torch.distributed.is_initialized())


def full_hf_weights(model: torch.nn.Module, hf_attr: str = "hf") -> dict[str, torch.Tensor]:
    """Collective: the full (unsharded) weights of `model.<hf_attr>`, keyed as `from_pretrained` reads
    them; on rank 0 (every rank in a world of one), empty elsewhere."""
    prefix = f"{hf_attr}."
    state = get_model_state_dict(model, options=_full_options())
    return {k[len(prefix):]: v.contiguous() for k, v in state.items() if k.startswith(prefix)}


def save_hf_model(path: str | Path, model: torch.nn.Module, processor: Any, *, rank: int, hf_attr: str = "hf") -> Path:
    """Collective: write `model.<hf_attr>` (and the processor) as a plain Hugging Face directory."""
    weights = full_hf_weights(model, hf_attr)
    path = Path(path)
    if rank == 0:
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        getattr(model, hf_attr).save_pretrained(tmp, state_dict=weights)
        if processor is not None:
            processor.save_pretrained(tmp)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    distributed.barrier()
    return path


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    processor: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    train_state: dict[str, Any],
    *,
    rank: int,
    keep_last: int,
    hf_attr: str = "hf",
) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint directory.

    `model` is the training root (a `PolicyModel`, possibly FSDP2-sharded) whose attribute `hf_attr`
    holds the Hugging Face model; the saved weights drop that prefix so `from_pretrained` reads them.
    """
    root = checkpoint_root(output_dir)
    final = root / f"step-{step:06d}"
    tmp = root / f"step-{step:06d}.tmp"
    weights = full_hf_weights(model, hf_attr)
    optim_state = get_optimizer_state_dict(model, optimizer, options=_full_options())
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob("*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    distributed.barrier()
    torch.save(rng_state(), tmp / f"rng_rank{rank}.pt")
    if rank == 0:
        getattr(model, hf_attr).save_pretrained(tmp, state_dict=weights)
        if processor is not None:
            processor.save_pretrained(tmp)
        state = {
            "step": step,
            "optimizer": optim_state,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            **train_state,
        }
        torch.save(state, tmp / "train_state.pt")
    distributed.barrier()
    if rank == 0:
        write_manifest(tmp)  # after every rank's files are in
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()
    return final


def load_train_state(
    checkpoint: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    *,
    rank: int,
) -> dict[str, Any]:
    """Restore optimizer, scheduler and this rank's RNG; return the saved train state (step, data position…).

    The weights themselves are loaded by building the policy from the checkpoint directory.
    """
    checkpoint = Path(checkpoint)
    state = torch.load(checkpoint / "train_state.pt", weights_only=True, map_location="cpu")
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=torch.distributed.is_initialized())
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state.pop("optimizer"), options=options)
    scheduler_state = state.pop("scheduler")
    if scheduler is not None and scheduler_state is not None:
        scheduler.load_state_dict(scheduler_state)
    rng_file = checkpoint / f"rng_rank{rank}.pt"
    if not rng_file.is_file():
        raise FileNotFoundError(f"{rng_file}: missing; was the run resumed with a different number of ranks?")
    set_rng_state(torch.load(rng_file, weights_only=True))
    return state
