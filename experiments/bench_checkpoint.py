"""Checkpoint save and load of a sharded model: the sharded checkpoint against gathering it on rank 0.

    torchrun --nproc_per_node 2 experiments/bench_checkpoint.py                 # ~135M parameters, gloo on CPU
    torchrun --nproc_per_node 2 experiments/bench_checkpoint.py --layers 24                    # ~266M

A Qwen2.5-VL with the tiny model's vision tower and vocabulary and a language model of `--layers`
decoder layers of width `--hidden` (MLP 2.75x), built on the meta device, sharded with FSDP2 and only
then given memory, so no rank ever holds more than its shard; AdamW state created by one step. Then,
side by side in one run:

- sharded: `mixedr1.checkpoint.save_checkpoint` (DCP shards per rank, the streamed Hugging Face
  export, the manifest) and `load_train_state` into a fresh sharded model and optimizer;
- gathered: what checkpoints did before: the full weights and optimizer state gathered to rank 0's
  CPU (`full_state_dict=True, cpu_offload=True`), written there with `save_pretrained` and
  `torch.save` and hashed there for the manifest; loaded back with `broadcast_from_rank0`.

The sharded save writes the weights twice (the Hugging Face export and `sharded_state/`) and both
ways hash every file they wrote, so `save_s` compares whole checkpoints, not bytes per second.

Printed per way: `save_s`, `load_s`, and rank 0's peak resident memory during the save (VmHWM,
reset through /proc/self/clear_refs just before) divided by one rank's share of model + optimizer
(its fp32 weight shards and AdamW moments): `peak_rss_rank0_over_shard=`. The peak includes the
process's own memory before any model existed (the Python interpreter, torch, transformers, gloo:
`baseline_mb`), which does not grow with the model; `..._above_baseline=` leaves it out. At ~135M
parameters the baseline alone is about half a shard, so the ratio with it says more at larger sizes.
`rss_before_save_mb` is rank 0's resident memory as the save starts (baseline, its shards and
whatever else the process kept). Also checked: the sharded load restores every local shard bit for bit.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.distributed.checkpoint.state_dict import (  # noqa: E402
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from mixedr1 import distributed  # noqa: E402
from mixedr1.checkpoint import hf_weight_layout, load_train_state, save_checkpoint  # noqa: E402
from mixedr1.resumable import file_sha256  # noqa: E402
from mixedr1.models.tiny import build_tiny_model  # noqa: E402
from mixedr1.policy import PolicyModel  # noqa: E402


def memory_kb(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> None:
    """Give freed memory back to the system, then make VmHWM the current RSS (Linux >= 4.0)."""
    gc.collect()  # a dropped FSDP2 model lives on in reference cycles (its hooks) until collected
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def build(tiny_dir: Path, layers: int, hidden: int):
    """The sharded policy (fp32, random) and its AdamW with state; only the local shards get memory."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(tiny_dir)
    text = config.text_config
    text.hidden_size, text.intermediate_size, text.num_hidden_layers = hidden, int(hidden * 2.75) // 64 * 64, layers
    text.num_attention_heads, text.num_key_value_heads = hidden // 64, 2
    text.layer_types = ["full_attention"] * layers
    config.vision_config.out_hidden_size = hidden
    with torch.device("meta"):
        policy = PolicyModel(AutoModelForImageTextToText.from_config(config, dtype=torch.float32))
    from torch.distributed.fsdp import fully_shard

    for block in distributed.shardable_blocks(policy):  # distributed.shard_model's units, before memory exists
        fully_shard(block)
    fully_shard(policy, reshard_after_forward=False)
    policy.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(torch.distributed.get_rank())
    with torch.no_grad():
        for param in policy.parameters():
            local = param.to_local()
            local.copy_(torch.randn(local.shape, generator=generator) * 0.02)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-5)
    for param in policy.parameters():
        param.grad = torch.zeros_like(param)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return policy, optimizer


def local_state(policy, optimizer) -> list[torch.Tensor]:
    """This rank's shards: weights, then every optimizer state tensor, in a fixed order."""
    tensors = [p.to_local() for p in policy.parameters()]
    for param in policy.parameters():
        for value in optimizer.state[param].values():
            tensors.append(value.to_local() if hasattr(value, "to_local") else value)
    return tensors


def fingerprint(tensors: list[torch.Tensor]) -> str:
    """SHA-256 of the tensors' bytes: compares states bit for bit without a second copy in memory."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def save_gathered(directory: Path, policy, optimizer, rank: int) -> None:
    """The earlier checkpoint: full weights and optimizer state on rank 0, written there."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(policy, options=options)
    optim_state = get_optimizer_state_dict(policy, optimizer, options=options)
    if rank == 0:
        policy.hf.save_pretrained(directory, state_dict={k.removeprefix("hf."): v for k, v in weights.items()})
        torch.save({"optimizer": optim_state}, directory / "train_state.pt")
        del weights, optim_state
        manifest = {p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)} for p in sorted(directory.iterdir())}
        (directory / "manifest.json").write_text(json.dumps({"files": manifest}, indent=1) + "\n")
    else:
        del weights, optim_state
    distributed.barrier()


def load_gathered(directory: Path, policy, optimizer, rank: int) -> None:
    from safetensors.torch import load_file

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    source = {saved: name for saved, name, _, _ in hf_weight_layout(policy.hf)}  # file's names -> the model's
    weights = {"hf." + source[k]: v for k, v in load_file(directory / "model.safetensors").items()} if rank == 0 else {}
    set_model_state_dict(policy, weights, options=options)
    state = torch.load(directory / "train_state.pt", weights_only=True) if rank == 0 else {"optimizer": {}}
    set_optimizer_state_dict(policy, optimizer, state["optimizer"], options=options)


def timed(call, *args) -> tuple[float, int, int]:
    """(seconds, this rank's RSS as the call starts and its peak RSS during it, in kB) of a collective call."""
    distributed.barrier()
    reset_peak()
    before_kb = memory_kb("VmRSS")
    t0 = time.perf_counter()
    call(*args)
    distributed.barrier()
    return time.perf_counter() - t0, before_kb, memory_kb("VmHWM")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--out", default=None, help="folder for the checkpoints (default: a temporary one, removed)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # save_pretrained's bar, one line per save
    dist = distributed.init_distributed("gloo", "cpu")
    if dist.world_size < 2:
        raise SystemExit("run under torchrun --nproc_per_node 2 (or more): the point is a sharded model")
    rank = dist.rank
    baseline_kb = memory_kb("VmRSS")
    out = Path(distributed.broadcast_object(args.out or (tempfile.mkdtemp(prefix="bench_checkpoint_") if rank == 0
                                                         else None)))  # one folder, rank 0's
    tiny_dir = out / "tiny"
    if rank == 0:
        build_tiny_model(tiny_dir)
    distributed.barrier()

    policy, optimizer = build(tiny_dir, args.layers, args.hidden)
    params = sum(p.numel() for p in policy.parameters())
    share_bytes = sum(t.numel() * t.element_size() for t in local_state(policy, optimizer))
    expected = fingerprint(local_state(policy, optimizer))

    results = {}
    save_s, before, peak = timed(lambda: save_checkpoint(out / "sharded", 1, policy, None, optimizer, None, {},
                                                         rank=rank, keep_last=1))
    fresh = build(tiny_dir, args.layers, args.hidden)
    load_s, _, _ = timed(lambda: load_train_state(out / "sharded" / "checkpoints" / "step-000001", *fresh, None,
                                                  rank=rank))
    exact = fingerprint(local_state(*fresh)) == expected
    exact = all(distributed.all_gather_objects(exact))
    results["sharded"] = (save_s, load_s, before, peak)
    del fresh

    gathered_dir = out / "gathered"
    if rank == 0:
        gathered_dir.mkdir(parents=True, exist_ok=True)
    save_s, before, peak = timed(save_gathered, gathered_dir, policy, optimizer, rank)
    fresh = build(tiny_dir, args.layers, args.hidden)
    load_s, _, _ = timed(load_gathered, gathered_dir, *fresh, rank)
    results["gathered"] = (save_s, load_s, before, peak)

    if rank == 0:
        mb = 1024
        print(f"workload: {params / 1e6:.1f}M parameters ({args.layers} layers, hidden {args.hidden}), fp32 + AdamW, "
              f"{dist.world_size} ranks (gloo, CPU); one rank's share of model + optimizer {share_bytes / 2**20:.0f} MB; "
              f"baseline_mb={baseline_kb / mb:.0f}")
        for way, (save_s, load_s, before_kb, peak_kb) in results.items():
            print(f"{way:9s} save_s={save_s:.2f} load_s={load_s:.2f} rss_before_save_mb={before_kb / mb:.0f} "
                  f"peak_rss_rank0_mb={peak_kb / mb:.0f} "
                  f"peak_rss_rank0_over_shard={peak_kb * 1024 / share_bytes:.2f} "
                  f"peak_rss_rank0_over_shard_above_baseline={(peak_kb - baseline_kb) * 1024 / share_bytes:.2f}")
        print(f"sharded restore bit-exact on every rank: {exact}")
        print(json.dumps({way: dict(zip(("save_s", "load_s", "rss_before_save_kb", "peak_rss_rank0_kb"), r))
                          for way, r in results.items()}))
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    distributed.destroy_distributed()


if __name__ == "__main__":
    main()
