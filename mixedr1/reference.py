"""GRPO's frozen reference policy π_ref (docs/method.md §4): loading, CPU offload, and re-basing after an SFT warm-up."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from mixedr1.checkpoint import checkpoint_step, save_hf_model
from mixedr1.config import Config
from mixedr1.models import freeze_vision_tower, load_model


def reference_path(cfg: Config, policy_path, resume_from, warmed_up_dir: Path):
    """`model.ref_path`, else the policy's starting point: the model itself, or, when resuming past an
    SFT warm-up, the warmed-up policy saved in `warmed_up_dir`."""
    if cfg.model.ref_path:
        return cfg.model.ref_path
    if resume_from and cfg.train.sft_warmup_steps and warmed_up_dir.is_dir():
        return warmed_up_dir
    if resume_from and 0 < cfg.train.sft_warmup_steps < checkpoint_step(Path(resume_from)):
        raise FileNotFoundError(f"{warmed_up_dir}: missing, but the run resumes after its SFT warm-up and GRPO's "
                                f"reference is the warmed-up policy; restore that folder or set model.ref_path")
    return cfg.model.path if resume_from else policy_path


def load_reference(cfg: Config, path, device) -> torch.nn.Module:
    """The frozen reference. With model.ref_cpu_offload it lives on the CPU: under FSDP2 through its
    CPU-offload policy, in a world of one moved to the device only for the reference phase."""
    offload = cfg.model.ref_cpu_offload and not torch.distributed.is_initialized()
    model = load_model(path, dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation,
                       trust_remote_code=cfg.model.trust_remote_code, device="cpu" if offload else device)
    freeze_vision_tower(model)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


@contextlib.contextmanager
def reference_on(reference, device, cfg: Config):
    """Bring a CPU-offloaded reference (world of one) to the device for the reference phase only."""
    offloaded = cfg.model.ref_cpu_offload and not torch.distributed.is_initialized()
    if offloaded:
        reference.to(device)
    try:
        yield reference
    finally:
        if offloaded:
            reference.to("cpu")


def rebase_reference_after_warmup(policy, reference, processor, warmed_up_dir: Path, cfg: Config, rank: int) -> None:
    """GRPO's reference is the policy it starts from (docs/method.md §4), i.e. the warmed-up one, not the model
    before SFT (whose KL to the warmed-up policy is large). Saved so a resumed run uses the same
    reference. Same module tree and sharding on both sides, so the copy goes shard by shard."""
    save_hf_model(warmed_up_dir, policy, processor, rank=rank)
    if reference is not None and cfg.model.ref_path is None:
        with torch.no_grad():
            for ref_param, param in zip(reference.parameters(), policy.parameters()):
                ref_param.copy_(param)
