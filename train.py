"""GRPO with the Mixed-R1 reward (docs/method.md §3, §4) — or SFT for the paper's "+SFT baseline" rows.

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

import dataclasses
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

from mixedr1.config import Config, ConfigError, load_config, run_main, save_config


def parse_command_line(argv: list[str]) -> Config | None:
    """The config of `train.py CONFIG [key=value ...]`; None for --help. Runs before torch is imported,
    so --help and config errors answer at once."""
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return None
    try:
        return load_config(argv[0], argv[1:])
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__" and parse_command_line(sys.argv[1:]) is None:
    raise SystemExit(0)

import torch  # noqa: E402  (after the command line is checked: importing torch takes seconds)

from mixedr1 import distributed  # noqa: E402
from mixedr1.checkpoint import checkpoint_step, load_train_state, save_checkpoint  # noqa: E402
from mixedr1.data.batch import collate, sft_completions  # noqa: E402
from mixedr1.data.dataset import Record, load_heldout, load_training_records, records_for_step  # noqa: E402
from mixedr1.grpo import grpo_policy_loss, group_advantages, loss_normalizers  # noqa: E402
from mixedr1.heldout import HeldoutEval  # noqa: E402
from mixedr1.metrics import add_loss_stats, rollout_metrics, sample_rows  # noqa: E402
from mixedr1.models import load_policy_and_processor  # noqa: E402
from mixedr1.models.tiny import prepare_demo_inputs  # noqa: E402
from mixedr1.optim import build_optimizer, optimizer_step  # noqa: E402
from mixedr1.policy import PolicyModel, build_sequences, features_per_prompt, image_embeds_for, row_image_embeds  # noqa: E402
from mixedr1.reference import load_reference, rebase_reference_after_warmup, reference_on, reference_path  # noqa: E402
from mixedr1.rewards.context import make_reward_context, score_groups, with_embedding_table  # noqa: E402
from mixedr1.rollout import decode_completions, derive_seed, eos_token_ids, rollout_in_chunks, sampling_params_from_config  # noqa: E402
from mixedr1.runlog import RunLog, claim_run_dir, progress_bar  # noqa: E402


@dataclasses.dataclass
class Run:
    """What every step needs, built once by `setup`."""

    cfg: Config
    dist: distributed.DistInfo
    log: RunLog
    policy: PolicyModel  # trained; the FSDP2 root under torchrun
    reference: PolicyModel | None  # frozen π_ref; None when β = 0 or for SFT
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    processor: object  # tokenizer + image processor of the policy
    reward_ctx: object  # rewards.RewardContext: tokenizer and, if configured, the external judge


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_command_line(sys.argv[1:] if argv is None else argv)
    if cfg is None:
        return {}
    dist = distributed.init_distributed(cfg.distributed.backend)
    if cfg.train.prompts_per_step % dist.world_size:
        raise SystemExit(f"config error: train.prompts_per_step={cfg.train.prompts_per_step} must be divisible by "
                         f"the number of ranks ({dist.world_size}) so that every group stays on one rank")
    run_dir = Path(cfg.output_dir)
    resume_from, passed_over = claim_run_dir(run_dir, cfg.train.resume, cfg.train.overwrite, dist.is_main)
    total_steps = cfg.train.sft_warmup_steps + cfg.train.steps
    if resume_from is not None and checkpoint_step(resume_from) >= total_steps:
        distributed.print0(f"{run_dir}: finished at step {checkpoint_step(resume_from)} of {total_steps}; nothing to do")
        distributed.destroy_distributed()
        return {}
    log = RunLog(run_dir, enabled=dist.is_main, tensorboard=cfg.log.tensorboard,
                 resume_step=checkpoint_step(resume_from) if resume_from else (0 if cfg.train.resume else None))
    try:
        for line in passed_over:
            log.warning(line)
        summary = train(cfg, dist, log, run_dir, resume_from, total_steps)
        distributed.barrier()  # every rank has finished before any tears the group down
        return summary
    finally:
        log.close()
        distributed.destroy_distributed()


def train(cfg: Config, dist: distributed.DistInfo, log: RunLog, run_dir: Path, resume_from: Path | None,
          total_steps: int) -> dict:
    torch.manual_seed(cfg.train.seed)
    if cfg.train.cpu_threads and dist.device.type == "cpu":
        torch.set_num_threads(cfg.train.cpu_threads)

    # ---- inputs: the demo builds its tiny model and synthetic data into the run directory ----------
    cfg = prepare_demo_inputs(cfg, run_dir, dist.is_main)
    if dist.is_main:
        save_config(cfg, run_dir / "config.yaml")
    records, report = load_training_records(cfg.data, cfg.train.seed)
    warmup_records, warmup_report = load_training_records(dataclasses.replace(cfg.data, train_file=cfg.data.sft_warmup_file),
                                                          cfg.train.seed) if cfg.data.sft_warmup_file else (records, None)
    heldout, heldout_report = load_heldout(cfg.data)
    for part in filter(None, (report, warmup_report, heldout_report)):
        log.info(part.summary())
    if dist.is_main and report.n_bad:
        log.info(f"skipped records: {report.write_skipped(run_dir / 'skipped.jsonl')}")

    # ---- models, optimizer, and the state of a resumed run ---------------------------------------
    run = setup(cfg, dist, log, resume_from)
    start_step, nonfinite_in_a_row = 0, 0
    if resume_from is not None:
        state = load_train_state(resume_from, run.policy, run.optimizer, run.scheduler, rank=dist.rank)
        start_step, nonfinite_in_a_row = state["step"], state["nonfinite_in_a_row"]
        log.info(f"resumed from {resume_from} at step {start_step}")
    elif cfg.train.resume:
        log.info(f"train.resume: no checkpoint in {run_dir / 'checkpoints'}; starting at step 0")

    # ---- the loop: SFT warm-up steps first (if any), then GRPO (or SFT throughout for the baseline) --
    first_rl_step = cfg.train.sft_warmup_steps if cfg.train.algorithm == "grpo" else 0
    heldout_eval = HeldoutEval(heldout, cfg, first_rl_step)
    progress = progress_bar(total_steps, start_step, enabled=dist.is_main and cfg.log.progress_bar)
    for step in range(start_step, total_steps):
        if step == first_rl_step and step > 0:  # the SFT warm-up is over: GRPO starts from here
            rebase_reference_after_warmup(run.policy, run.reference, run.processor, run_dir / "sft_warmup", cfg, dist.rank)
            run.optimizer.state.clear()  # a fresh optimizer, as a separate GRPO run from that checkpoint would have
            log.info(f"SFT warm-up done: policy saved to {run_dir / 'sft_warmup'}; it is GRPO's reference from here")
        if heldout_eval.due(step):  # held-out metrics before the first GRPO step, then every log.eval_every steps
            heldout_eval(run, step)
        step_records = records_for_step(warmup_records if step < cfg.train.sft_warmup_steps else records, step,
                                        cfg.train.prompts_per_step, cfg.train.seed, cfg.data.shuffle, dist.rank, dist.world_size)
        t0 = time.perf_counter()
        with distributed.bf16_autocast(cfg.model.dtype, dist.device):
            if cfg.train.algorithm == "sft" or step < cfg.train.sft_warmup_steps:
                metrics = sft_step(run, step_records)
            else:
                metrics = grpo_step(run, step_records, step)
        metrics["time/step"] = time.perf_counter() - t0
        metrics["perf/tokens_per_s_per_device"] = metrics.pop("perf/tokens") / metrics["time/step"] / dist.world_size
        metrics["optim/lr"] = run.scheduler.get_last_lr()[0]
        run.scheduler.step()  # every step, skipped or not: the schedule follows the global step

        # Steps are numbered from 1 in the log, metrics and checkpoints (step + 1 steps are done).
        finite = math.isfinite(metrics["loss/total"])
        nonfinite_in_a_row = 0 if finite else nonfinite_in_a_row + 1
        if not finite or (step + 1) % cfg.log.every == 0 or step + 1 == total_steps:
            log.metrics(step + 1, metrics)
        if not finite:  # the optimizer step was skipped inside the step function
            log.warning(f"step {step + 1}: non-finite loss ({metrics['loss/total']}); optimizer step skipped "
                        f"({nonfinite_in_a_row} in a row, limit train.max_nonfinite_steps={cfg.train.max_nonfinite_steps})")
            if nonfinite_in_a_row >= cfg.train.max_nonfinite_steps:
                raise RuntimeError(f"{nonfinite_in_a_row} non-finite losses in a row: stopping. Lower optim.lr, "
                                   f"check the data and the model dtype, or resume from the last checkpoint.")
        progress.update(1)
        progress.set_postfix(reward=f"{metrics.get('reward/total', float('nan')):.3f}", loss=f"{metrics['loss/total']:.4f}")

        every = cfg.checkpoint.every
        if step + 1 == total_steps or (every and (step + 1) % every == 0):
            save_checkpoint(run_dir, step + 1, run.policy, run.processor, run.optimizer, run.scheduler,
                            {"nonfinite_in_a_row": nonfinite_in_a_row}, rank=dist.rank, keep_last=cfg.checkpoint.keep_last)
    progress.close()

    heldout_eval(run, total_steps)  # after the last step; the before/after table
    if heldout_eval.table():
        distributed.print0(heldout_eval.table())
    log.plot_curves()  # curves.png: training reward per type, held-out accuracy, completion length, KL
    return heldout_eval.summary()


# ================================================================================================
# One GRPO step (docs/method.md §4)


def grpo_step(run: Run, step_records: list[Record], step: int) -> dict:
    cfg, dist, policy, G = run.cfg, run.dist, run.policy, run.cfg.rollout.group_size
    device, hf, tokenizer = dist.device, run.policy.hf, run.processor.tokenizer
    metrics: dict = {}
    batch = collate(step_records, run.processor, cfg.data.max_prompt_tokens).to(device)

    # ---- rollout and rewards (the policy gathered once under FSDP2; BMAS reads its embedding table) --
    t0 = time.perf_counter()
    params = sampling_params_from_config(cfg.rollout, eos_token_ids=eos_token_ids(hf, tokenizer),
                                         pad_token_id=tokenizer.pad_token_id)
    first_prompt = dist.rank * len(step_records)  # global index of this rank's first prompt
    seed_of_call = lambda start: derive_seed(cfg.train.seed, step, first_prompt + start)  # noqa: E731
    with distributed.gathered_for_generation(policy, cfg.distributed.reshard_after_forward):
        rollout = rollout_in_chunks(hf, batch, params, seed_of_call, cfg.rollout.prompts_per_batch)
        metrics["time/rollout"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        texts = decode_completions(rollout, tokenizer)
        groups = score_groups(batch, texts, G, cfg.reward, with_embedding_table(run.reward_ctx, hf))
    breakdowns = [r for group in groups for r in group]  # [B*G]
    rewards = torch.tensor([r.total for r in breakdowns], dtype=torch.float32)  # [B*G]
    metrics["time/reward"] = time.perf_counter() - t0
    if run.reward_ctx.judge is not None:
        metrics["time/reward_judge"] = run.reward_ctx.judge.cost.take()

    # ---- advantages -------------------------------------------------------------------------------
    advantages, zero_variance = group_advantages(
        rewards.to(device), G, eps=cfg.grpo.adv_eps, scale=cfg.grpo.adv_scale, std=cfg.grpo.adv_std
    )  # [B*G], [B]

    # ---- sequences and image features, shared by the reference and every update -------------------
    seq = build_sequences(hf, batch.input_ids, batch.attention_mask, batch.image_layout,
                          rollout.completion_ids, rollout.completion_mask, rollout.prompt_index)
    micro_batches = seq.micro_batches(cfg.train.micro_batch_size, trim=cfg.train.trim_padding, packing=cfg.train.packing,
                                      max_tokens=cfg.train.max_tokens_per_micro_batch)  # [(rows [n], micro-batch)]
    frozen_features = None
    if cfg.model.freeze_vision:
        with torch.no_grad():
            frozen_features = features_per_prompt(hf, batch.pixel_values, batch.image_layout, batch.images_per_prompt.tolist())

    # ---- reference log-probs (no grad; none when β = 0) -------------------------------------------
    t0 = time.perf_counter()
    ref_logprobs = None
    if run.reference is not None:
        with torch.no_grad(), reference_on(run.reference, device, cfg):
            ref_features = frozen_features if cfg.model.freeze_vision and cfg.model.ref_path is None else \
                features_per_prompt(run.reference.hf, batch.pixel_values, batch.image_layout, batch.images_per_prompt.tolist())
            ref_logprobs = torch.zeros_like(rollout.sampling_logprobs)  # [B*G, T]
            for idx, mb in micro_batches:
                ref_logprobs[idx, : mb.num_completion_tokens] = run.reference(
                    mb, row_image_embeds(ref_features, mb.prompt_index), temperature=cfg.rollout.temperature)[0]
    metrics["time/reference"] = time.perf_counter() - t0

    # ---- policy update: μ optimizer steps on this rollout ----------------------------------------
    t0 = time.perf_counter()
    counts = torch.tensor(loss_normalizers(seq.completion_mask), dtype=torch.float64, device=device)
    num_sequences, num_tokens = distributed.all_reduce_sum(counts).tolist()
    old_logprobs = None
    if cfg.grpo.updates_per_rollout > 1:  # π_old must stay the sampling policy across the μ updates
        old_logprobs = torch.zeros_like(rollout.sampling_logprobs)
        with torch.no_grad():
            for idx, mb in micro_batches:
                old_logprobs[idx, : mb.num_completion_tokens] = policy(
                    mb, image_embeds_for(policy, batch, mb, frozen_features), temperature=cfg.rollout.temperature)[0]
    skipped_updates = 0
    for _ in range(cfg.grpo.updates_per_rollout):
        stats = defaultdict(float)
        for i, (idx, mb) in enumerate(micro_batches):
            T = mb.num_completion_tokens
            logprobs, entropy = policy(mb, image_embeds_for(policy, batch, mb, frozen_features),
                                       temperature=cfg.rollout.temperature, with_entropy=True)
            loss, loss_stats = grpo_policy_loss(
                logprobs, None if old_logprobs is None else old_logprobs[idx, :T],
                None if ref_logprobs is None else ref_logprobs[idx, :T], advantages[idx], mb.completion_mask,
                eps_low=cfg.grpo.eps_low, eps_high=cfg.grpo.eps_high, beta=cfg.grpo.beta, loss_agg=cfg.grpo.loss_agg,
                num_sequences=num_sequences, num_tokens=num_tokens, max_completion_length=cfg.rollout.max_new_tokens,
                entropy=entropy,
            )
            # FSDP2 averages gradients over ranks; the loss is a contribution to a SUM over ranks.
            distributed.set_gradient_sync(policy, cfg.distributed.sync_every_micro_batch or i == len(micro_batches) - 1)
            (loss * dist.world_size).backward()
            stats["loss/total"] += loss.item()
            add_loss_stats(stats, loss_stats)  # kl, entropy, clip_ratio/* (metrics.LOSS_STAT_TAGS)
        metrics.update(optimizer_step(policy, run.optimizer, stats, cfg))
        skipped_updates += not math.isfinite(metrics["loss/total"])
    if skipped_updates:  # one non-finite update of μ makes the step non-finite, whatever the last one gave
        metrics["loss/total"] = float("nan")
    metrics["optim/skipped_updates"] = skipped_updates
    metrics["time/update"] = time.perf_counter() - t0

    # ---- metrics, averaged over ranks --------------------------------------------------------------
    metrics.update(rollout_metrics([r.problem_type for r in batch.records], breakdowns, rollout.completion_lengths,
                                   rollout.finish_reason, zero_variance, G))
    metrics["perf/tokens"] = float(distributed.all_reduce_sum(seq.attention_mask.sum().double()))
    processed, real = distributed.all_reduce_sum(torch.tensor(seq.padded_tokens(micro_batches), dtype=torch.float64, device=device)).tolist()
    metrics["perf/padded_token_fraction"] = processed / real - 1  # forward positions spent on padding
    if dist.is_main and ((step + 1) % cfg.log.sample_every == 0 or step + 1 == cfg.train.sft_warmup_steps + cfg.train.steps):
        run.log.samples(step + 1, sample_rows(batch.records, texts, breakdowns, advantages.tolist(), G))  # numbered as metrics
    return metrics


# ================================================================================================
# One SFT step (the "+SFT baseline" rows, and the optional warm start)


def sft_step(run: Run, step_records: list[Record]) -> dict:
    """Teacher-forced NLL of `<think>…</think><answer>ground truth</answer><eos>` (token mean)."""
    cfg, dist, policy, device = run.cfg, run.dist, run.policy, run.dist.device
    batch = collate(step_records, run.processor, cfg.data.max_prompt_tokens).to(device)
    completion_ids, completion_mask = sft_completions(step_records, run.processor, eos_token_ids(policy.hf, run.processor.tokenizer)[0],
                                                      think=cfg.train.sft_think)
    prompt_index = torch.arange(len(step_records), device=device)
    seq = build_sequences(policy.hf, batch.input_ids, batch.attention_mask, batch.image_layout,
                          completion_ids.to(device), completion_mask.to(device), prompt_index)
    frozen = None
    if cfg.model.freeze_vision:
        with torch.no_grad():
            frozen = features_per_prompt(policy.hf, batch.pixel_values, batch.image_layout, batch.images_per_prompt.tolist())
    num_tokens = float(distributed.all_reduce_sum(completion_mask.sum().double().to(device)))
    stats = defaultdict(float)
    micro_batches = seq.micro_batches(cfg.train.micro_batch_size, trim=cfg.train.trim_padding, packing=cfg.train.packing,
                                      max_tokens=cfg.train.max_tokens_per_micro_batch)  # [(rows [n], micro-batch)]
    for i, (idx, mb) in enumerate(micro_batches):
        logprobs, _ = policy(mb, image_embeds_for(policy, batch, mb, frozen))
        loss = -(logprobs * mb.completion_mask).sum() / num_tokens  # contribution to the global token mean
        distributed.set_gradient_sync(policy, cfg.distributed.sync_every_micro_batch or i == len(micro_batches) - 1)
        (loss * dist.world_size).backward()
        stats["loss/total"] += loss.item()
    metrics = optimizer_step(policy, run.optimizer, stats, cfg)
    metrics["loss/sft_nll"] = metrics["loss/total"]
    metrics["perf/tokens"] = float(distributed.all_reduce_sum(seq.attention_mask.sum().double()))
    return metrics


# ================================================================================================
# Setup


def setup(cfg: Config, dist: distributed.DistInfo, log: RunLog, resume_from: Path | None) -> Run:
    """Policy (from `resume_from` when resuming), frozen reference, sharding, optimizer, reward context."""
    model_cfg = dataclasses.replace(cfg.model, path=str(resume_from)) if resume_from else cfg.model
    if cfg.model.dtype == "auto" and dist.device.type == "cuda":  # fp32 master weights, bf16 compute
        model_cfg = dataclasses.replace(model_cfg, dtype="float32")
    hf_policy, processor, policy_path = load_policy_and_processor(model_cfg, dist.device)
    processor.tokenizer.padding_side = "left"
    policy, reference = PolicyModel(hf_policy.train()), None
    if cfg.grpo.beta > 0 and cfg.train.algorithm == "grpo":
        ref_path = reference_path(cfg, policy_path, resume_from, Path(cfg.output_dir) / "sft_warmup")
        reference = PolicyModel(load_reference(cfg, ref_path, dist.device))
    policy, reference = distributed.shard_for_training(
        policy, reference, dist.device, fsdp=cfg.distributed.fsdp,
        reshard_after_forward=cfg.distributed.reshard_after_forward, ref_cpu_offload=cfg.model.ref_cpu_offload,
        mesh_shape=cfg.distributed.mesh)
    optimizer, scheduler = build_optimizer(policy, cfg)
    return Run(cfg, dist, log, policy, reference, optimizer, scheduler, processor,
               make_reward_context(cfg, processor, dist.device))


if __name__ == "__main__":
    run_main(main)
