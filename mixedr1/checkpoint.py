"""Checkpoints: a Hugging Face directory plain `from_pretrained` loads, plus the sharded state to resume exactly.

    output_dir/checkpoints/step-000100/
        config.json, generation_config.json                      <- as `save_pretrained` writes them
        model.safetensors                                        <- the policy, full (unsharded) fp32 weights; above
          (or model-0000i-of-0000n.safetensors + model.safetensors.index.json)   5 GB, shard files and their index
        tokenizer / processor files                              <- so eval.py and from_pretrained need nothing else
        sharded_state/        torch.distributed.checkpoint (DCP): the fp32 weights and the optimizer state,
                              each rank writing its own shards (__<rank>_0.distcp) and rank 0 the index (.metadata)
        train_state.pt        step, scheduler, world size (small; the data order follows from train.seed and the step)
        rng_rank{r}.pt        RNG states of every rank (torch, CUDA, python, numpy)
        manifest.json         size and SHA-256 of every file above, written last

No rank ever holds the whole optimizer state, and no rank holds the whole model: the train state goes
through DCP (each rank writes its local shards of the DTensors that FSDP2 made; in a world of one the
plain tensors), and the Hugging Face export is streamed parameter by parameter: every rank takes part
in gathering one parameter, rank 0 appends its bytes to the open safetensors file (whose header, with
every name, dtype, shape and offset, is known before any data) and drops it. Rank 0's peak memory
above its own shard is about one parameter and its all-gather buffers (`experiments/bench_checkpoint.py`
measures it). Loading is not sharded that far: every rank still builds the whole model from the
Hugging Face files before FSDP2 shards it, as at the start of any run.

Resume builds the policy from the Hugging Face files, then loads `sharded_state/` into it and into the
optimizer through DCP, which reshards: a checkpoint written by W ranks resumes on any number of ranks
(and hybrid meshes), the weights and optimizer state restored bit for bit. What follows the resume is
bit-exact on the same world size; on another one the data order is the same (a function of the seed
and step) and so are the sampled completions when `rollout.prompts_per_batch` divides the prompts
per rank (each chunk's generator is seeded from the seed, step and global index of its first prompt),
but gradients are summed over ranks in another order, so losses and weights match to floating-point
rounding (as 2 ranks match 1 process), not bit for bit. The process-wide RNGs are saved per rank and restored where that rank
existed (a new rank takes rank 0's): training draws nothing from them.

A checkpoint is written into `step-N.tmp` and renamed to `step-N` only when complete, so a run killed
mid-save leaves the previous good checkpoint as the latest; stale `.tmp` folders are removed at the
next save. A resume (`find_resume_checkpoint`) takes the newest checkpoint whose files all match its
manifest and says why any newer one was passed over (no manifest, a file missing, truncated or
changed); the ranks hash the files between them. `train_state.pt` and the RNG files are read with
`torch.load(weights_only=True)`; DCP's `.metadata` is a pickle (torch's own format), so resume only
checkpoints you trust. DCP promises no compatibility across torch versions: resume with the torch
that wrote the checkpoint (the Hugging Face files are version-free). Checkpoints of the earlier
layout (the full optimizer state inside `train_state.pt`) still resume.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from . import distributed
from .resumable import file_sha256

_STEP_DIR = re.compile(r"^step-(\d+)$")
MANIFEST = "manifest.json"
SHARDED_STATE = "sharded_state"  # the DCP folder: fp32 weights and optimizer state, one file per rank
HF_SHARD_BYTES = 5 * 10**9  # Hugging Face export: a new model-0000i-of-0000n.safetensors past this size


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def checkpoint_step(path: Path) -> int:
    return int(_STEP_DIR.match(path.name).group(1))


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoint directories (renamed from `.tmp`, so written whole, though not yet verified), oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if _STEP_DIR.match(p.name) and p.is_dir()), key=checkpoint_step)


# ----------------------------------------------------------------------------------------------
# Manifest: written and verified by all ranks together, each hashing its share of the files


def _rank_and_world() -> tuple[int, int]:
    if distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def write_manifest(directory: Path) -> None:
    """Collective: size and SHA-256 of every file in `directory` (recursively), in `manifest.json`,
    written last by rank 0. Each rank hashes every world-size-th file (a 7B checkpoint is ~100 GB)."""
    rank, world = _rank_and_world()
    files = distributed.broadcast_object(
        sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST))
    mine = {name: {"size": (directory / name).stat().st_size, "sha256": file_sha256(directory / name)}
            for name in files[rank::world]}
    entries = {k: v for part in distributed.all_gather_objects(mine) for k, v in part.items()}
    if rank == 0:
        (directory / MANIFEST).write_text(json.dumps({"files": dict(sorted(entries.items()))}, indent=1) + "\n",
                                          encoding="utf-8")


def _check_entry(directory: Path, name: str, entry: dict) -> str | None:
    path = directory / name
    if not path.is_file():
        return f"{name} is missing"
    if path.stat().st_size != entry["size"]:
        return f"{name} has {path.stat().st_size} bytes, the manifest says {entry['size']} (truncated?)"
    if file_sha256(path) != entry["sha256"]:
        return f"{name} does not match its checksum (changed or corrupted)"
    return None


def verify_checkpoint(directory: Path) -> str | None:
    """None when every file of the manifest is there with its size and checksum; else why not.
    Collective under a process group (each rank hashes its share of the files); alone otherwise."""
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return "no manifest.json (not written completely, or by an older version)"
    try:
        entries = json.loads(manifest.read_text(encoding="utf-8"))["files"]
        names = sorted(entries)
    except (ValueError, KeyError, TypeError, AttributeError):
        return "manifest.json is not readable"
    if "train_state.pt" not in entries:
        return "no train_state.pt"
    rank, world = _rank_and_world()
    mine = [problem for name in names[rank::world] if (problem := _check_entry(directory, name, entries[name]))]
    found = [p for part in distributed.all_gather_objects(mine) for p in part]
    return min(found) if found else None  # the same answer on every rank


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


# ----------------------------------------------------------------------------------------------
# RNG


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


# ----------------------------------------------------------------------------------------------
# The Hugging Face export, streamed


_SAFETENSORS_DTYPES = {
    torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}


def hf_weight_layout(hf_model: torch.nn.Module) -> list[tuple[str, str, torch.Size, torch.dtype]]:
    """`(saved name, parameter name, full shape, dtype)` of every tensor `save_pretrained` would write:
    tied weights once, names in the checkpoint's original format. Computed on meta tensors (no data);
    transformers' own functions decide (the ones `save_pretrained` calls, in 5.17 and 5.23)."""
    from transformers.modeling_utils import remove_tied_weights_from_state_dict, revert_weight_conversion

    meta = {name: torch.empty(tensor.shape, dtype=tensor.dtype, device="meta")
            for name, tensor in hf_model.state_dict().items()}  # DTensor .shape is the full shape
    source_of = {id(tensor): name for name, tensor in meta.items()}
    saved = revert_weight_conversion(hf_model, remove_tied_weights_from_state_dict(dict(meta), hf_model))
    layout = []
    for saved_name, tensor in saved.items():
        if id(tensor) not in source_of:  # a conversion that computes new tensors (fused experts): not a rename
            raise NotImplementedError(f"{type(hf_model).__name__}: saving {saved_name} needs a weight conversion "
                                      f"other than a rename; the streamed export supports renames only")
        layout.append((saved_name, source_of[id(tensor)], tensor.shape, tensor.dtype))
    return layout


def _full_tensor_on_rank0(tensor: torch.Tensor, rank: int) -> torch.Tensor | None:
    """Collective for a DTensor (every rank joins the all-gather of this one parameter); the full
    tensor on rank 0's CPU, None elsewhere."""
    if hasattr(tensor, "full_tensor"):
        tensor = tensor.full_tensor()
    return tensor.detach().to("cpu").contiguous() if rank == 0 else None


def _safetensors_header(entries: list[tuple[str, torch.Size, torch.dtype]]) -> bytes:
    """The header of a safetensors file holding `entries` in this order, data packed back to back:
    8 bytes of little-endian length, then JSON padded with spaces to a multiple of 8."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, dtype in entries:
        size = shape.numel() * dtype.itemsize
        header[name] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def write_hf_weights(directory: Path, model: torch.nn.Module, *, rank: int, hf_attr: str = "hf",
                     max_shard_bytes: int = HF_SHARD_BYTES) -> list[str]:
    """Collective: `model.<hf_attr>`'s weights into `directory` as `save_pretrained` names them
    (`model.safetensors`, or shard files and `model.safetensors.index.json` past `max_shard_bytes`).
    Parameter by parameter: rank 0 holds one gathered parameter at a time. Returns the file names."""
    hf = getattr(model, hf_attr)
    layout = hf_weight_layout(hf)
    params = hf.state_dict()
    files: list[list[tuple[str, str, torch.Size, torch.dtype]]] = [[]]
    size = 0
    for entry in layout:
        nbytes = entry[2].numel() * entry[3].itemsize
        if files[-1] and size + nbytes > max_shard_bytes:
            files.append([])
            size = 0
        files[-1].append(entry)
        size += nbytes
    names = ["model.safetensors"] if len(files) == 1 else \
        [f"model-{i + 1:05d}-of-{len(files):05d}.safetensors" for i in range(len(files))]
    for name, entries in zip(names, files):
        out = open(directory / name, "wb") if rank == 0 else None
        try:
            if out is not None:
                out.write(_safetensors_header([(saved, shape, dtype) for saved, _, shape, dtype in entries]))
            for _, source, _, _ in entries:
                full = _full_tensor_on_rank0(params[source], rank)
                if out is not None:
                    out.write(full.reshape(-1).view(torch.uint8).numpy().data)
                del full
        finally:
            if out is not None:
                out.close()
    if rank == 0 and len(files) > 1:
        total = sum(shape.numel() * dtype.itemsize for _, _, shape, dtype in layout)
        index = {"metadata": {"total_parameters": sum(shape.numel() for _, _, shape, _ in layout), "total_size": total},
                 "weight_map": {saved: name for name, entries in zip(names, files) for saved, *_ in entries}}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return names


def _write_hf_directory(directory: Path, model: torch.nn.Module, processor: Any, *, rank: int, hf_attr: str,
                        max_shard_bytes: int = HF_SHARD_BYTES) -> None:
    """Collective: config, generation config, processor (rank 0, through `save_pretrained` itself,
    given no weights) and the streamed weights into an existing `directory`."""
    if rank == 0:
        from transformers.utils import logging as hf_logging

        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # its bar would count the zero shards it writes here
        try:  # everything save_pretrained writes, with an empty weights file
            getattr(model, hf_attr).save_pretrained(directory, state_dict={})
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        (directory / "model.safetensors").unlink(missing_ok=True)
        if processor is not None:
            processor.save_pretrained(directory)
    write_hf_weights(directory, model, rank=rank, hf_attr=hf_attr, max_shard_bytes=max_shard_bytes)


def save_hf_model(path: str | Path, model: torch.nn.Module, processor: Any, *, rank: int, hf_attr: str = "hf",
                  max_shard_bytes: int = HF_SHARD_BYTES) -> Path:
    """Collective: write `model.<hf_attr>` (and the processor) as a plain Hugging Face directory."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    distributed.barrier()
    _write_hf_directory(tmp, model, processor, rank=rank, hf_attr=hf_attr, max_shard_bytes=max_shard_bytes)
    distributed.barrier()
    if rank == 0:
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    distributed.barrier()
    return path


# ----------------------------------------------------------------------------------------------
# Save and resume


def _sharded_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """This rank's shards (FSDP2's DTensors; plain tensors in a world of one) of the weights and of
    the optimizer state, keyed by parameter name: no gathering."""
    state = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        state["optimizer"] = get_optimizer_state_dict(model, optimizer)
    return state


def _quiet_dcp(call, *args, **kwargs):
    # In a world of one DCP runs without a process group, and warns that it assumes so each time.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        return call(*args, **kwargs)


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
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob("*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    distributed.barrier()
    _write_hf_directory(tmp, model, processor, rank=rank, hf_attr=hf_attr)
    # An optimizer that has not stepped yet (every step so far skipped) has no state: DCP's state-dict
    # API would create it by stepping with lr 0, changing the run; it is saved as absent instead.
    has_optimizer_state = any(distributed.all_gather_objects(bool(optimizer.state)))
    _quiet_dcp(dcp.save, _sharded_state(model, optimizer if has_optimizer_state else None),
               checkpoint_id=tmp / SHARDED_STATE)
    torch.save(rng_state(), tmp / f"rng_rank{rank}.pt")
    if rank == 0:
        state = {
            "step": step,
            "world_size": _rank_and_world()[1],
            "has_optimizer_state": has_optimizer_state,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            **train_state,
        }
        torch.save(state, tmp / "train_state.pt")
    distributed.barrier()
    write_manifest(tmp)  # after every rank's files are in
    if rank == 0:
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
    """Collective: restore the fp32 weights and the optimizer state (resharded onto this world),
    the scheduler and this rank's RNG; return the saved train state (step, scheduler, world size).

    `model` was built from the checkpoint's Hugging Face files; the sharded state then overwrites
    its parameters with the saved ones (the same values; in whatever dtype the export used).
    """
    checkpoint = Path(checkpoint)
    state = torch.load(checkpoint / "train_state.pt", weights_only=True, map_location="cpu")
    if "optimizer" in state:  # the earlier layout: the full optimizer state, saved by rank 0
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=distributed.is_initialized())
        set_optimizer_state_dict(model, optimizer, optim_state_dict=state.pop("optimizer"), options=options)
    else:
        sharded = _sharded_state(model, optimizer if state["has_optimizer_state"] else None)
        _quiet_dcp(dcp.load, sharded, checkpoint_id=checkpoint / SHARDED_STATE)
        set_model_state_dict(model, sharded["model"])
        if "optimizer" in sharded:
            set_optimizer_state_dict(model, optimizer, optim_state_dict=sharded["optimizer"])
    scheduler_state = state.pop("scheduler")
    if scheduler is not None and scheduler_state is not None:
        scheduler.load_state_dict(scheduler_state)
    rng_file = checkpoint / f"rng_rank{rank}.pt"
    if not rng_file.is_file():  # a rank the saving run did not have (resumed on more ranks)
        rng_file = checkpoint / "rng_rank0.pt"
    set_rng_state(torch.load(rng_file, weights_only=True))
    return state
