"""The optimizer, its learning-rate schedule, and one clipped optimizer step.

AdamW over the trainable parameters; the schedule multiplies `optim.lr` per training step:
`train.sft_lr` during an SFT warm-up, then a linear warm-up over `optim.warmup_steps`, then constant
or cosine to 0 (`optim.schedule`).
"""

from __future__ import annotations

import math
import warnings

import torch

from mixedr1 import distributed
from mixedr1.config import Config


# The trainer steps the schedule on every step, also when a non-finite loss skipped the optimizer
# step (the schedule follows the global step); torch warns when that happens on the very first step.
warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")


def build_optimizer(policy: torch.nn.Module, cfg: Config) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    optimizer = torch.optim.AdamW(
        [p for p in policy.parameters() if p.requires_grad], lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
        eps=cfg.optim.adam_eps, weight_decay=cfg.optim.weight_decay,
    )
    total_steps = cfg.train.sft_warmup_steps + cfg.train.steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg, total_steps))
    return optimizer, scheduler


def lr_factor(step: int, cfg: Config, total_steps: int) -> float:
    """Multiplier of optim.lr at training step `step` (the scheduler steps once per training step):
    train.sft_lr during the SFT warm-up, then linear warm-up to optim.lr, then constant or cosine to 0."""
    if cfg.train.algorithm == "grpo" and step < cfg.train.sft_warmup_steps:
        return (cfg.train.sft_lr or cfg.optim.lr) / cfg.optim.lr
    step -= cfg.train.sft_warmup_steps if cfg.train.algorithm == "grpo" else 0
    total_steps -= cfg.train.sft_warmup_steps if cfg.train.algorithm == "grpo" else 0
    warmup = cfg.optim.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    if cfg.optim.schedule == "cosine":
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def optimizer_step(policy: torch.nn.Module, optimizer: torch.optim.Optimizer, stats: dict, cfg: Config) -> dict:
    """Sum the loss statistics over ranks, clip, step; the step is skipped (and `loss/total` is NaN)
    when the loss or the gradient norm is not finite."""
    keys = sorted(stats)
    reduced = distributed.all_reduce_sum(torch.tensor([stats[k] for k in keys], dtype=torch.float64,
                                                      device=next(policy.parameters()).device))
    out = dict(zip(keys, reduced.tolist()))
    params = [p for p in policy.parameters() if p.requires_grad]
    max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    out["optim/grad_norm"] = grad_norm
    if math.isfinite(out["loss/total"]) and math.isfinite(grad_norm):
        optimizer.step()
    else:
        out["loss/total"] = float("nan")
    optimizer.zero_grad(set_to_none=True)
    return out
