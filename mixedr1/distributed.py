"""Everything distributed lives here (STYLE 5): process group, FSDP2 sharding, rank-0 helpers.

The same entry point runs under `python` (world size 1, no process group) and `torchrun` (NCCL on
CUDA, gloo on CPU). Model, loss and reward code never call `torch.distributed`; they get tensors.

FSDP2 (`fully_shard`) shards each decoder layer and each vision block as its own unit, then the root,
over every rank or, with `distributed.mesh: [replicate, shard]`, hybrid: sharded within groups of
`shard` consecutive ranks (a node) and replicated across the groups (`device_mesh`).
Generation needs the whole model gathered: `gathered_for_generation` unshards every unit once and
keeps it unsharded through the decode loop, so no collective runs inside it and a rank whose
sequences finish early never waits on another.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn

from mixedr1.config import InputError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(backend: str = "auto", device: str = "auto") -> DistInfo:
    """Join the torchrun process group when launched by torchrun; otherwise a world of one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if use_cuda else "gloo"
        kwargs = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30), **kwargs)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def destroy_distributed() -> None:
    """Leave the process group, after collecting garbage: FSDP2 modules and finished gloo work still
    holding tensors must not outlive the group into interpreter shutdown, where their destruction can
    abort the process (SIGABRT, "terminate called without an active exception"; seen once for rank 1
    of a two-node gloo test that had finished its work; pytorch/pytorch#179291 describes the mechanism)."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def is_initialized() -> bool:
    """Whether this process has joined a process group (a caller that did not create it leaves it)."""
    return dist.is_available() and dist.is_initialized()


def launch_rank() -> tuple[int, int]:
    """(rank, world size) as torchrun set them, read before any process group exists: (0, 1) under
    plain `python`. For work done before joining (a group joined early times out while rank 0 works
    alone for hours)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _active():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place; the identity in a world of one."""
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (picklable objects; small things like metrics and records)."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


class SharedFolderError(InputError):
    """A folder that a multi-process job needs on one filesystem is not seen alike by every rank."""


def check_shared_folder(folder: Path, purpose: str) -> None:
    """Refuse to start when some rank cannot see what rank 0 writes in `folder`: checkpoints (each rank
    writes its own shards, rank 0 the manifest) and the per-rank result files of eval.py and the data
    engine (rank 0 reads every rank's) need a filesystem shared by all nodes. Rank 0 writes a file with
    a fresh token, every rank reads it back, the ranks that cannot are named with their host. Collective;
    nothing to do in a world of one."""
    if not _active():
        return
    main = dist.get_rank() == 0
    token = broadcast_object(uuid.uuid4().hex if main else None)
    probe = Path(folder) / f".shared-check-{token}"
    if main:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text(token)
    barrier()
    try:
        seen = probe.read_text() == token
    except OSError:
        seen = False
    views = all_gather_objects((seen, socket.gethostname()))
    if main:
        probe.unlink(missing_ok=True)
    blind = [f"rank {rank} on {host}" for rank, (ok, host) in enumerate(views) if not ok]
    if blind:
        raise SharedFolderError(f"{folder}: {', '.join(blind)} cannot see a file rank 0 wrote there; {purpose} needs a "
                                f"folder on a filesystem every node shares (NFS, Lustre, a mounted bucket): set it to one")


def mean_over_ranks(sums: dict[str, float]) -> dict[str, float]:
    """Means over every rank's items of a dict of sums in which each key `k` comes with its count
    `"#k"`: the sums and counts are added over ranks, then divided. Keys in sorted order."""
    total: dict[str, float] = {}
    for part in all_gather_objects(dict(sums)):
        for key, value in part.items():
            total[key] = total.get(key, 0.0) + value
    return {k: total[k] / total["#" + k] for k in sorted(total) if not k.startswith("#")}


def print0(*args, **kwargs) -> None:
    if not _active() or dist.get_rank() == 0:
        print(*args, **kwargs, flush=True)


# ----------------------------------------------------------------------------------------------
# FSDP2


def shardable_blocks(model: nn.Module) -> list[nn.Module]:
    """The modules that become FSDP units of their own, innermost first: decoder layers and vision
    blocks (found by class name, `*DecoderLayer`, `*VisionBlock`, `*EncoderLayer`, so Qwen2-VL,
    Qwen2.5-VL and InternVL's native classes are covered without a per-family table), then the
    whole vision tower (its patch embedding and merger), which training calls on its own to encode
    each prompt's images once.
    """
    from .families import vision_tower  # a bare HF model, or the training root PolicyModel (`.hf`)

    suffixes = ("DecoderLayer", "VisionBlock", "EncoderLayer", "VisionEncoderLayer")
    blocks = [m for m in model.modules() if type(m).__name__.endswith(suffixes)]
    try:
        blocks.append(vision_tower(model))
    except ValueError:
        pass
    return blocks


def device_mesh(shape: list[int], device: torch.device):
    """FSDP2's mesh: None (its default, a 1-D mesh of every rank) for `[]`; for `[replicate, shard]`
    a 2-D mesh whose rows are `shard` consecutive ranks (torchrun numbers a node's ranks
    consecutively), on which `fully_shard` shards along a row and replicates down a column (HSDP)."""
    world_size = dist.get_world_size() if _active() else 1
    if shape and shape[0] * shape[1] != world_size:
        raise SystemExit(f"config error: distributed.mesh={list(shape)} needs {shape[0] * shape[1]} ranks, "
                         f"this run has {world_size}")
    if not shape or world_size == 1:
        return None
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, tuple(shape), mesh_dim_names=("replicate", "shard"))


def shard_model(
    model: nn.Module,
    *,
    param_dtype: torch.dtype | None = None,
    reshard_after_forward: bool = True,
    cpu_offload: bool = False,
    mesh=None,
) -> nn.Module:
    """Apply FSDP2: `fully_shard` on every decoder layer and vision block, then on the root.

    `param_dtype` (bf16 on GPU) is FSDP2's mixed-precision policy: parameters are all-gathered and
    computed in bf16 while the sharded master copy and the optimizer state stay in fp32; gradients
    are reduced in fp32. `mesh`: from `device_mesh` (None: shard over every rank).
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    kwargs: dict[str, Any] = {"reshard_after_forward": reshard_after_forward, "mesh": mesh}
    if param_dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    if cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    for block in shardable_blocks(model):
        fully_shard(block, **kwargs)
    # The root keeps its parameters gathered after forward: backward would gather them again at once.
    fully_shard(model, **{**kwargs, "reshard_after_forward": False})
    # FSDP2 takes the first unit whose forward runs as the root. Training calls the vision tower and
    # generation calls the inner model before the root's own forward, so fix the root now (FSDP2's
    # lazy init, otherwise run on the first root forward; unshard() alone does not do it).
    model._get_fsdp_state()._lazy_init()
    return model


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """FSDP2: whether the next backward reduce-scatters gradients. Off for all but the last
    micro-batch of an optimizer step, gradients accumulate unsharded on each rank and are reduced
    once; a plain model ignores it."""
    if fsdp_units(model):
        model.set_requires_gradient_sync(enabled)


@contextlib.contextmanager
def gathered_for_generation(model: nn.Module, reshard_after_forward: bool = True) -> Iterator[nn.Module]:
    """Keep an FSDP2 model unsharded for a whole decode loop; a plain model passes through.

    Each unit is all-gathered once here (a collective every rank enters together); inside, forwards
    run with no communication. On exit every unit is resharded and its usual policy restored.
    """
    units = fsdp_units(model)
    if not units:
        yield model
        return
    # The root keeps its own setting (never reshard after forward, see shard_model).
    inner = [unit for unit in units if unit is not model]
    for unit in inner:
        unit.set_reshard_after_forward(False, recurse=False)
    for unit in units:
        unit.unshard()
    try:
        yield model
    finally:
        for unit in units:
            unit.reshard()
        for unit in inner:
            unit.set_reshard_after_forward(reshard_after_forward, recurse=False)


def shard_for_training(policy: nn.Module, reference: nn.Module | None, device: torch.device, *, fsdp: bool,
                       reshard_after_forward: bool, ref_cpu_offload: bool, mesh_shape: list[int] = ()):
    """FSDP2 over the ranks (bf16 compute on GPU) for the policy and the frozen reference, on the
    mesh `mesh_shape` (`distributed.mesh`); a world of one runs the plain modules."""
    world_size = dist.get_world_size() if _active() else 1
    mesh = device_mesh(list(mesh_shape), device)
    if world_size == 1 or not fsdp:
        if world_size > 1:
            raise SystemExit("config error: distributed.fsdp=false is only supported in a world of one")
        return policy, reference
    param_dtype = torch.bfloat16 if device.type == "cuda" else None
    print0(f"FSDP2 over {world_size} ranks: " + (f"hybrid, sharded within {mesh_shape[1]} ranks and replicated "
                                                  f"{mesh_shape[0]} times" if mesh is not None else "every parameter sharded over all"))
    policy = shard_model(policy, param_dtype=param_dtype, reshard_after_forward=reshard_after_forward, mesh=mesh)
    if reference is not None:
        reference = shard_model(reference, param_dtype=param_dtype, cpu_offload=ref_cpu_offload, mesh=mesh)
    return policy, reference


def bf16_autocast(model_dtype: str, device: torch.device):
    """bf16 compute over an fp32 policy on a single GPU (`model.dtype: auto`); under FSDP2 its
    mixed-precision policy does this instead, and on CPU everything stays fp32."""
    if model_dtype == "auto" and device.type == "cuda" and not _active():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
