"""GRPO with the Mixed-R1 reward (SPEC §3, §4) — or SFT for the paper's "+SFT baseline" rows.

    python train.py configs/demo.yaml [key=value ...]
    torchrun --nproc_per_node 8 train.py configs/mixed_r1_qwen25vl_7b.yaml [key=value ...]

One step, top to bottom (`grpo_step`):
    rollout      G completions per prompt, each prompt and its images encoded once (mixedr1.rollout)
    rewards      R = R_acc + λ·R_fmt per completion, by problem type (mixedr1.rewards)
    advantages   (R − mean_G) / (std_G + δ) per group (mixedr1.grpo.group_advantages)
    reference    log π_ref of the completion tokens, frozen model, no grad (skipped when β = 0)
    update       clipped-ratio loss with k3 KL (mixedr1.grpo.grpo_policy_loss), μ optimizer steps
    log, save    metrics to TensorBoard + metrics.jsonl; an HF checkpoint every N steps

Prompts are split evenly over ranks and a group never straddles ranks, so rewards and advantages
are computed locally; only counts, metrics and gradients are reduced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from tqdm import tqdm

from mixedr1 import distributed
from mixedr1.checkpoint import latest_checkpoint, load_train_state, save_checkpoint, save_hf_model
from mixedr1.config import Config, ConfigError, load_config, save_config
from mixedr1.data.batch import PromptBatch, collate, pixels_for_prompts
from mixedr1.data.dataset import Record, load_records, load_training_records, resolve_data_path
from mixedr1.data.prompt import build_sft_target
from mixedr1.data.synth import write_synthetic_dataset
from mixedr1.grpo import grpo_policy_loss, group_advantages, loss_normalizers
from mixedr1.models import build_tiny_model, load_policy_and_processor, load_model, freeze_vision_tower
from mixedr1.policy import PolicyModel, build_sequences, features_per_prompt, row_image_embeds
from mixedr1.rewards import RewardContext, score_group
from mixedr1.rewards.context import make_reward_context, reward_target, with_embedding_table
from mixedr1.rollout import Rollout, decode_completions, eos_token_ids, generate_rollout, sampling_params_from_config
from mixedr1.runlog import RunLog


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return {}
    try:
        cfg = load_config(argv[0], argv[1:])
    except ConfigError as e:
        raise SystemExit(f"config error: {e}")
    dist = distributed.init_distributed(cfg.distributed.backend)
    run_dir = Path(cfg.output_dir)
    log = RunLog(run_dir, enabled=dist.is_main, tensorboard=cfg.log.tensorboard)
    torch.manual_seed(cfg.train.seed)
    if cfg.train.cpu_threads and dist.device.type == "cpu":
        torch.set_num_threads(cfg.train.cpu_threads)

    # ---- inputs: the demo builds its tiny model and synthetic data into the run directory ----------
    cfg = prepare_demo_inputs(cfg, run_dir, dist)
    if dist.is_main:
        save_config(cfg, run_dir / "config.yaml")
    check_divisibility(cfg, dist.world_size)
    records, report = load_training_records(cfg.data, cfg.train.seed)
    log.info(report.summary())
    heldout = load_heldout(cfg)

    # ---- models: policy (from the latest checkpoint when resuming), frozen reference ---------------
    resume_from = latest_checkpoint(run_dir) if cfg.train.resume else None
    model_cfg = dataclasses.replace(cfg.model, path=str(resume_from)) if resume_from else cfg.model
    if cfg.model.dtype == "auto" and dist.device.type == "cuda":  # fp32 master weights, bf16 compute
        model_cfg = dataclasses.replace(model_cfg, dtype="float32")
    hf_policy, processor, policy_path = load_policy_and_processor(model_cfg, dist.device)
    processor.tokenizer.padding_side = "left"
    policy = PolicyModel(hf_policy.train())
    reference = None
    first_rl_step = cfg.train.sft_warmup_steps if cfg.train.algorithm == "grpo" else 0
    warmed_up_dir = run_dir / "sft_warmup"  # the policy after the SFT warm-up: GRPO's reference
    if cfg.grpo.beta > 0 and cfg.train.algorithm == "grpo":
        ref_path = cfg.model.ref_path or (cfg.model.path if resume_from else policy_path)
        if resume_from and cfg.train.sft_warmup_steps and cfg.model.ref_path is None and warmed_up_dir.is_dir():
            ref_path = warmed_up_dir
        reference = PolicyModel(load_reference(cfg, ref_path, dist.device))
    policy, reference = shard(cfg, dist, policy, reference)
    optimizer = torch.optim.AdamW(
        [p for p in policy.parameters() if p.requires_grad], lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
        eps=cfg.optim.adam_eps, weight_decay=cfg.optim.weight_decay,
    )
    total_steps = cfg.train.sft_warmup_steps + cfg.train.steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg, total_steps))
    start_step, nonfinite_in_a_row = 0, 0
    if resume_from is not None:
        state = load_train_state(resume_from, policy, optimizer, scheduler, rank=dist.rank)
        start_step, nonfinite_in_a_row = state["step"], state["nonfinite_in_a_row"]
        log.info(f"resumed from {resume_from} at step {start_step}")
    reward_ctx = make_reward_context(cfg, processor, dist.device)

    # ---- the loop: SFT warm-up steps first (if any), then GRPO (or SFT throughout for the baseline) --
    summary = {}
    progress = progress_bar(cfg, dist, start_step, total_steps)
    for step in range(start_step, total_steps):
        if step == first_rl_step and step > 0:  # the SFT warm-up is over: GRPO starts from here
            start_grpo_after_warmup(policy, reference, optimizer, processor, warmed_up_dir, cfg, dist, log)
        if heldout and step == first_rl_step:  # the demo's "before": after the SFT warm-up, before GRPO
            summary["before"] = evaluate(policy, processor, heldout, cfg, reward_ctx, dist)
            log.info(f"held-out before {cfg.train.algorithm} (step {step}): " + format_eval(summary["before"]))
        sft = cfg.train.algorithm == "sft" or step < cfg.train.sft_warmup_steps
        step_records = records_for_step(records, step, cfg, dist)
        t0 = time.perf_counter()
        with bf16_autocast(cfg, dist):
            if sft:
                metrics = sft_step(policy, optimizer, processor, step_records, cfg, dist)
            else:
                metrics = grpo_step(policy, reference, optimizer, processor, step_records, cfg, dist, reward_ctx, step, log)
        metrics["time/step"] = time.perf_counter() - t0
        metrics["perf/tokens_per_s_per_device"] = metrics.pop("perf/tokens") / metrics["time/step"] / dist.world_size

        metrics["optim/lr"] = scheduler.get_last_lr()[0]
        if math.isfinite(metrics["loss/total"]):
            scheduler.step()
            nonfinite_in_a_row = 0
        else:  # the optimizer step was skipped inside the step function
            nonfinite_in_a_row += 1
            log.warning(f"step {step}: non-finite loss ({metrics['loss/total']}); optimizer step skipped "
                        f"({nonfinite_in_a_row} in a row, limit train.max_nonfinite_steps={cfg.train.max_nonfinite_steps})")
            if nonfinite_in_a_row >= cfg.train.max_nonfinite_steps:
                raise RuntimeError(f"{nonfinite_in_a_row} non-finite losses in a row: stopping. Lower optim.lr, "
                                   f"check the data and the model dtype, or resume from the last checkpoint.")
        if (step + 1) % cfg.log.every == 0 or step + 1 == total_steps:
            log.metrics(step + 1, metrics)
        progress.update(1)
        progress.set_postfix(reward=f"{metrics.get('reward/total', float('nan')):.3f}", loss=f"{metrics['loss/total']:.4f}")

        every = cfg.checkpoint.every
        if step + 1 == total_steps or (every and (step + 1) % every == 0):
            save_checkpoint(run_dir, step + 1, policy, processor, optimizer, scheduler,
                            {"nonfinite_in_a_row": nonfinite_in_a_row}, rank=dist.rank, keep_last=cfg.checkpoint.keep_last)
    progress.close()

    if heldout:
        summary["after"] = evaluate(policy, processor, heldout, cfg, reward_ctx, dist)
        log.info(f"held-out after {cfg.train.algorithm}: " + format_eval(summary["after"]))
        if "before" in summary:
            distributed.print0(eval_table(summary["before"], summary["after"]))
    log.close()
    distributed.destroy_distributed()
    return summary


# ================================================================================================
# One GRPO step (SPEC §4)


def grpo_step(policy, reference, optimizer, processor, step_records, cfg: Config, dist, reward_ctx, step, log) -> dict:
    G, device, hf = cfg.rollout.group_size, dist.device, policy.hf
    metrics: dict = {}
    batch = collate(step_records, processor, cfg.data.max_prompt_tokens).to(device)

    # ---- rollout and rewards (the policy gathered once under FSDP2; BMAS reads its embedding table) --
    t0 = time.perf_counter()
    tokenizer = processor.tokenizer
    params = sampling_params_from_config(
        cfg.rollout, eos_token_ids=eos_token_ids(hf, tokenizer), pad_token_id=tokenizer.pad_token_id,
    )
    first_prompt = dist.rank * len(step_records)  # global index of this rank's first prompt
    seed_of_call = lambda start: (cfg.train.seed * 1_000_003 + step) * 1_000_003 + first_prompt + start  # noqa: E731
    with distributed.gathered_for_generation(policy, cfg.distributed.reshard_after_forward):
        rollout = rollout_in_chunks(hf, batch, params, seed_of_call, cfg.rollout.prompts_per_batch)
        metrics["time/rollout"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        texts = decode_completions(rollout, tokenizer)
        ctx = with_embedding_table(reward_ctx, hf)
        rewards, breakdowns = score_rollout(batch, texts, G, cfg, ctx)  # rewards [B*G]
    metrics["time/reward"] = time.perf_counter() - t0
    if reward_ctx.judge is not None:
        metrics["time/reward_judge"] = reward_ctx.judge.cost.take()

    # ---- advantages -------------------------------------------------------------------------------
    advantages, zero_variance = group_advantages(
        rewards.to(device), G, eps=cfg.grpo.adv_eps, scale=cfg.grpo.adv_scale, std=cfg.grpo.adv_std
    )  # [B*G], [B]

    # ---- sequences and image features, shared by the reference and every update -------------------
    seq = build_sequences(hf, batch.input_ids, batch.attention_mask, batch.image_grid_thw,
                          rollout.completion_ids, rollout.completion_mask, rollout.prompt_index)
    micro_batches = list(torch.arange(seq.input_ids.shape[0], device=device).split(cfg.train.micro_batch_size))
    frozen_features = None
    if cfg.model.freeze_vision:
        with torch.no_grad():
            frozen_features = features_per_prompt(hf, batch.pixel_values, batch.image_layout, batch.images_per_prompt.tolist())

    # ---- reference log-probs (no grad; none when β = 0) -------------------------------------------
    t0 = time.perf_counter()
    ref_logprobs = None
    if reference is not None:
        with torch.no_grad(), reference_on(reference, device, cfg):
            ref_features = frozen_features if cfg.model.freeze_vision and cfg.model.ref_path is None else \
                features_per_prompt(reference.hf, batch.pixel_values, batch.image_layout, batch.images_per_prompt.tolist())
            ref_logprobs = torch.zeros_like(rollout.sampling_logprobs)  # [B*G, T]
            for idx in micro_batches:
                mb = seq.rows(idx)
                ref_logprobs[idx] = reference(mb, row_image_embeds(ref_features, mb.prompt_index),
                                              temperature=cfg.rollout.temperature)[0]
    metrics["time/reference"] = time.perf_counter() - t0

    # ---- policy update: μ optimizer steps on this rollout ----------------------------------------
    t0 = time.perf_counter()
    counts = torch.tensor(loss_normalizers(seq.completion_mask), dtype=torch.float64, device=device)
    num_sequences, num_tokens = distributed.all_reduce_sum(counts).tolist()
    old_logprobs = None
    if cfg.grpo.updates_per_rollout > 1:  # π_old must stay the sampling policy across the μ updates
        old_logprobs = torch.zeros_like(rollout.sampling_logprobs)
        with torch.no_grad():
            for idx in micro_batches:
                mb = seq.rows(idx)
                old_logprobs[idx] = policy(mb, image_embeds_for(policy, batch, mb, frozen_features),
                                           temperature=cfg.rollout.temperature)[0]
    for _ in range(cfg.grpo.updates_per_rollout):
        stats = defaultdict(float)
        for idx in micro_batches:
            mb = seq.rows(idx)
            logprobs, entropy = policy(mb, image_embeds_for(policy, batch, mb, frozen_features),
                                       temperature=cfg.rollout.temperature, with_entropy=True)
            loss, loss_stats = grpo_policy_loss(
                logprobs, None if old_logprobs is None else old_logprobs[idx],
                None if ref_logprobs is None else ref_logprobs[idx], advantages[idx], mb.completion_mask,
                eps_low=cfg.grpo.eps_low, eps_high=cfg.grpo.eps_high, beta=cfg.grpo.beta, loss_agg=cfg.grpo.loss_agg,
                num_sequences=num_sequences, num_tokens=num_tokens, max_completion_length=cfg.rollout.max_new_tokens,
                entropy=entropy,
            )
            # FSDP2 averages gradients over ranks; the loss is a contribution to a SUM over ranks.
            (loss * dist.world_size).backward()
            stats["loss/total"] += loss.item()
            for key, value in loss_stats.items():
                stats[f"loss/{key}"] += float(value)
        metrics.update(optimizer_step(policy, optimizer, stats, cfg))
    metrics["time/update"] = time.perf_counter() - t0

    # ---- metrics, reduced over ranks ------------------------------------------------------------
    metrics.update(reward_metrics(batch, breakdowns, rollout, zero_variance, G))
    tokens = float(seq.attention_mask.sum())
    metrics["perf/tokens"] = float(distributed.all_reduce_sum(torch.tensor(tokens, device=device)))
    if dist.is_main and step % cfg.log.sample_every == 0:
        log.samples(step, [
            {"id": batch.records[i // G].id, "problem_type": batch.records[i // G].problem_type,
             "reward": breakdowns[i].total, "completion": texts[i]} for i in range(0, len(texts), G)
        ])
    return metrics


def optimizer_step(policy, optimizer, stats: dict, cfg: Config) -> dict:
    """Reduce the loss statistics, clip, step (skipped when the loss or gradient is not finite)."""
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


def image_embeds_for(policy, batch: PromptBatch, mb, frozen_features):
    """The image features of a micro-batch's rows: shared frozen ones, or encoded now with grad."""
    if frozen_features is not None:
        return row_image_embeds(frozen_features, mb.prompt_index)
    prompts = torch.unique(mb.prompt_index)  # each prompt's images once, even when several rows share it
    pixels, grid = pixels_for_prompts(batch, prompts)
    feats = features_per_prompt(policy.hf, pixels, grid, batch.images_per_prompt[prompts].tolist())
    lookup = {int(p): f for p, f in zip(prompts, feats)}
    return torch.cat([lookup[int(p)] for p in mb.prompt_index]) if feats else None


def start_grpo_after_warmup(policy, reference, optimizer, processor, warmed_up_dir, cfg: Config, dist, log) -> None:
    """GRPO's reference is the policy it starts from (SPEC §4), i.e. the warmed-up one, not the model
    before SFT (whose KL to the warmed-up policy is large). Saved so a resumed run uses the same
    reference; the optimizer starts fresh, as a separate GRPO run from that checkpoint would."""
    save_hf_model(warmed_up_dir, policy, processor, rank=dist.rank)
    if reference is not None and cfg.model.ref_path is None:
        with torch.no_grad():
            for ref_param, param in zip(reference.parameters(), policy.parameters()):
                ref_param.copy_(param)  # same module tree and sharding: shard by shard
    optimizer.state.clear()
    log.info(f"SFT warm-up done: policy saved to {warmed_up_dir}; it is GRPO's reference from here")


# ================================================================================================
# One SFT step (the "+SFT baseline" rows, and the optional warm start)


def sft_step(policy, optimizer, processor, step_records, cfg: Config, dist) -> dict:
    """Teacher-forced NLL of `<think>…</think><answer>ground truth</answer><eos>` (token mean)."""
    device, hf, tokenizer = dist.device, policy.hf, processor.tokenizer
    batch = collate(step_records, processor, cfg.data.max_prompt_tokens).to(device)
    eos = eos_token_ids(hf, tokenizer)[0]
    targets = [tokenizer(build_sft_target(r, processor), add_special_tokens=False).input_ids + [eos] for r in step_records]
    T = max(len(t) for t in targets)
    completion_ids = torch.full((len(targets), T), tokenizer.pad_token_id, dtype=torch.long)
    completion_mask = torch.zeros(len(targets), T, dtype=torch.long)
    for i, t in enumerate(targets):
        completion_ids[i, : len(t)] = torch.tensor(t)
        completion_mask[i, : len(t)] = 1
    prompt_index = torch.arange(len(targets), device=device)
    seq = build_sequences(hf, batch.input_ids, batch.attention_mask, batch.image_grid_thw,
                          completion_ids.to(device), completion_mask.to(device), prompt_index)
    frozen = None
    if cfg.model.freeze_vision:
        with torch.no_grad():
            frozen = features_per_prompt(hf, batch.pixel_values, batch.image_layout, batch.images_per_prompt.tolist())
    num_tokens = float(distributed.all_reduce_sum(torch.tensor(float(completion_mask.sum()), device=device)))
    stats = defaultdict(float)
    for idx in torch.arange(len(targets), device=device).split(cfg.train.micro_batch_size):
        mb = seq.rows(idx)
        logprobs, _ = policy(mb, image_embeds_for(policy, batch, mb, frozen))
        loss = -(logprobs * mb.completion_mask).sum() / num_tokens  # contribution to the global token mean
        (loss * dist.world_size).backward()
        stats["loss/total"] += loss.item()
    metrics = optimizer_step(policy, optimizer, stats, cfg)
    metrics["loss/sft_nll"] = metrics["loss/total"]
    metrics["perf/tokens"] = float(distributed.all_reduce_sum(torch.tensor(float(seq.attention_mask.sum()), device=device)))
    return metrics


# ================================================================================================
# Rewards


def rollout_in_chunks(hf, batch: PromptBatch, params, seed_of_call, prompts_per_call: int):
    """Sample in calls of `prompts_per_call` prompts (bounds the KV cache), then stitch the rows.

    Each call's generator is seeded from the global index of its first prompt, so the samples do not
    depend on how prompts are spread over ranks (when prompts_per_call divides each rank's share).
    """
    B = batch.input_ids.shape[0]
    parts = []
    for start in range(0, B, prompts_per_call):
        prompts = torch.arange(start, min(B, start + prompts_per_call), device=batch.input_ids.device)
        pixels, layout = pixels_for_prompts(batch, prompts)
        keep = batch.attention_mask[prompts].any(0)  # drop columns that are padding in every prompt of the call
        inputs = {"input_ids": batch.input_ids[prompts][:, keep], "attention_mask": batch.attention_mask[prompts][:, keep],
                  "pixel_values": pixels}
        if batch.tiles_per_image is None:  # Qwen's grid; InternVL's tiles need no extra input
            inputs["image_grid_thw"] = layout
        elif not pixels.numel():  # InternVL: text-only prompts take no pixel_values at all
            del inputs["pixel_values"]
        generator = torch.Generator(device=batch.input_ids.device).manual_seed(seed_of_call(start))
        parts.append(generate_rollout(hf, inputs, params, generator=generator))
    if len(parts) == 1:
        return parts[0]
    return concat_rollouts(parts, params.pad_token_id)


def concat_rollouts(parts, pad_token_id: int):
    """One Rollout from consecutive calls: completions right-padded to the longest, prompt indices offset."""
    T = max(p.completion_ids.shape[1] for p in parts)
    pad = lambda t, value: torch.nn.functional.pad(t, (0, T - t.shape[1]), value=value)  # noqa: E731
    prompt_offset, prompt_index = 0, []
    for p in parts:
        prompt_index.append(p.prompt_index + prompt_offset)
        prompt_offset += int(p.prompt_index.max()) + 1
    return Rollout(
        completion_ids=torch.cat([pad(p.completion_ids, pad_token_id) for p in parts]),
        completion_mask=torch.cat([pad(p.completion_mask, 0) for p in parts]),
        sampling_logprobs=torch.cat([pad(p.sampling_logprobs, 0.0) for p in parts]),
        prompt_index=torch.cat(prompt_index),
        finish_reason=[r for p in parts for r in p.finish_reason],
    )




def score_rollout(batch: PromptBatch, texts: list[str], G: int, cfg: Config, ctx: RewardContext):
    """Rewards `[B*G]` (R = R_acc + λ·R_fmt) and their breakdowns, one group per prompt."""
    breakdowns = []
    for b in range(len(batch.records)):
        breakdowns += score_group(texts[b * G : (b + 1) * G], reward_target(batch, b), cfg.reward, ctx)
    return torch.tensor([r.total for r in breakdowns], dtype=torch.float32), breakdowns






def reward_metrics(batch: PromptBatch, breakdowns, rollout, zero_variance, G: int) -> dict:
    """Reward per type and per reward function, format rate, lengths; summed over ranks, then averaged."""
    sums: dict[str, float] = defaultdict(float)
    for i, r in enumerate(breakdowns):
        ptype = batch.records[i // G].problem_type
        for key, value in (("reward/total", r.total), ("reward/accuracy", r.accuracy), ("reward/format_rate", r.format),
                           (f"reward/type/{ptype}", r.total), (f"accuracy/{ptype}", r.accuracy),
                           (f"reward/fn/{r.reward_name}", r.accuracy)):
            sums[key] += value
            sums["#" + key] += 1
    lengths = rollout.completion_lengths.float()
    sums["completion/length_mean"] += float(lengths.sum())
    sums["#completion/length_mean"] += len(lengths)
    sums["completion/clipped_ratio"] += sum(r == "length" for r in rollout.finish_reason)
    sums["#completion/clipped_ratio"] += len(lengths)
    sums["grpo/zero_variance_frac"] += float(zero_variance.sum())
    sums["#grpo/zero_variance_frac"] += len(zero_variance)
    gathered = distributed.all_gather_objects(dict(sums))
    total: dict[str, float] = defaultdict(float)
    for part in gathered:
        for k, v in part.items():
            total[k] += v
    out = {k: total[k] / total["#" + k] for k in total if not k.startswith("#")}
    out["completion/length_max"] = max(distributed.all_gather_objects(float(lengths.max())))
    return out




# ================================================================================================
# Held-out evaluation (greedy; the demo prints it before and after training)


def evaluate(policy, processor, records: list[Record], cfg: Config, reward_ctx, dist) -> dict:
    """Mean reward and accuracy per problem type on held-out records, greedy, one sample each."""
    hf, tokenizer = policy.hf, processor.tokenizer
    params = dataclasses.replace(
        sampling_params_from_config(cfg.rollout, eos_token_ids=eos_token_ids(hf, tokenizer),
                                    pad_token_id=tokenizer.pad_token_id, greedy=True), group_size=1)
    mine = records[dist.rank :: dist.world_size]
    sums: dict = defaultdict(float)
    with torch.no_grad(), bf16_autocast(cfg, dist), distributed.gathered_for_generation(policy, cfg.distributed.reshard_after_forward):
        ctx = with_embedding_table(reward_ctx, hf)
        for start in range(0, len(mine), cfg.rollout.prompts_per_batch):
            batch = collate(mine[start : start + cfg.rollout.prompts_per_batch], processor).to(dist.device)
            rollout = generate_rollout(hf, batch.model_inputs(), params)
            texts = decode_completions(rollout, tokenizer)
            for b, text in enumerate(texts):
                (r,) = score_group([text], reward_target(batch, b), cfg.reward, ctx)
                ptype = batch.records[b].problem_type
                for key, value in ((f"reward/{ptype}", r.total), (f"accuracy/{ptype}", r.accuracy),
                                   ("reward/all", r.total), ("accuracy/all", r.accuracy), ("format/all", r.format)):
                    sums[key] += value
                    sums["#" + key] += 1
    total: dict = defaultdict(float)
    for part in distributed.all_gather_objects(dict(sums)):
        for k, v in part.items():
            total[k] += v
    return {k: total[k] / total["#" + k] for k in sorted(total) if not k.startswith("#")}


def format_eval(result: dict) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in result.items())


def eval_table(before: dict, after: dict) -> str:
    types = sorted({k.split("/")[1] for k in before if k.startswith("reward/")})
    lines = ["", "held-out, greedy     reward before -> after    accuracy before -> after",
             "-" * 70]
    for t in types:
        lines.append(f"{t:<18}  {before[f'reward/{t}']:7.3f} -> {after[f'reward/{t}']:7.3f}      "
                     f"{before[f'accuracy/{t}']:7.3f} -> {after[f'accuracy/{t}']:7.3f}")
    return "\n".join(lines)


# ================================================================================================
# Setup


def prepare_demo_inputs(cfg: Config, run_dir: Path, dist) -> Config:
    """`model.path: tiny` and `data.synth_items > 0` build their inputs into the run directory (rank 0)."""
    if cfg.model.path == "tiny":
        tiny_dir = run_dir / "tiny-model"
        if dist.is_main and not (tiny_dir / "config.json").is_file():
            build_tiny_model(tiny_dir, seed=cfg.train.seed)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=str(tiny_dir)))
    if cfg.data.synth_items > 0:
        data_dir = run_dir / "data"
        if dist.is_main and not (data_dir / "train.jsonl").is_file():
            write_synthetic_dataset(data_dir, cfg.data.synth_items, seed=cfg.train.seed,
                                    heldout_per_type=cfg.data.synth_heldout_items)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(
            cfg.data, data_root=str(data_dir), train_file="train.jsonl"))
    distributed.barrier()
    return cfg


def check_divisibility(cfg: Config, world_size: int) -> None:
    if cfg.train.prompts_per_step % world_size:
        raise SystemExit(f"config error: train.prompts_per_step={cfg.train.prompts_per_step} must be divisible by "
                         f"the number of ranks ({world_size}) so that every group stays on one rank")


def load_heldout(cfg: Config) -> list[Record]:
    if not cfg.data.eval_file:
        return []
    path = resolve_data_path(cfg.data.data_root, cfg.data.eval_file)
    records, _ = load_records(path, cfg.data.data_root, cfg.data.on_bad_record)
    return [r for r in records if r.problem_type in cfg.data.problem_types]


def load_reference(cfg: Config, path, device):
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


def bf16_autocast(cfg: Config, dist):
    """bf16 compute over the fp32 policy on a single GPU (`model.dtype: auto`); under FSDP2 its
    mixed-precision policy does this instead, and on CPU everything stays fp32."""
    if cfg.model.dtype == "auto" and dist.device.type == "cuda" and not torch.distributed.is_initialized():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def shard(cfg: Config, dist, policy, reference):
    """FSDP2 over the ranks (bf16 compute on GPU); a world of one runs the plain modules."""
    if dist.world_size == 1 or not cfg.distributed.fsdp:
        if dist.world_size > 1:
            raise SystemExit("config error: distributed.fsdp=false is only supported in a world of one")
        return policy, reference
    param_dtype = torch.bfloat16 if dist.device.type == "cuda" else None
    policy = distributed.shard_model(policy, param_dtype=param_dtype, reshard_after_forward=cfg.distributed.reshard_after_forward)
    if reference is not None:
        reference = distributed.shard_model(reference, param_dtype=param_dtype, cpu_offload=cfg.model.ref_cpu_offload)
    return policy, reference


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


def records_for_step(records: list[Record], step: int, cfg: Config, dist) -> list[Record]:
    """This rank's prompts of global step `step`: a seeded permutation per epoch, cut in order.

    A function of the step alone, so a resumed run sees exactly the prompts it would have seen.
    """
    per_step, n = cfg.train.prompts_per_step, len(records)
    if n == 0:
        raise SystemExit("no training records left after data.problem_types / data.scale")
    orders: dict[int, list[int]] = {}
    out = []
    for position in range(step * per_step, (step + 1) * per_step):
        epoch, offset = divmod(position, n)
        if epoch not in orders:
            generator = torch.Generator().manual_seed(cfg.train.seed + epoch)
            orders[epoch] = torch.randperm(n, generator=generator).tolist() if cfg.data.shuffle else list(range(n))
        out.append(records[orders[epoch][offset]])
    share = per_step // dist.world_size
    return out[dist.rank * share : (dist.rank + 1) * share]


def progress_bar(cfg: Config, dist, start: int, total: int):
    return tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True,
                disable=not (dist.is_main and cfg.log.progress_bar))


if __name__ == "__main__":
    main()
