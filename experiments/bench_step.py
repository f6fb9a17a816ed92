"""One GRPO step's time, split by phase, and tokens/s: the real `train.py` on a random model.

    python experiments/bench_step.py                       # tiny Qwen2.5-VL on CPU
    python experiments/bench_step.py --size 3b --device cuda --max-new-tokens 512
    torchrun --nproc_per_node 8 experiments/bench_step.py --size 7b ...

`--size tiny` uses the tiny test model; `3b` / `7b` write a random-initialised model with
Qwen2.5-VL-3B / -7B dimensions (bf16, real vocabulary size 151,936) and the tiny tokenizer, so the
compute per token is the real model's. Synthetic five-type data; the first step is a warm-up and
is left out of the averages. Prints the workload, the seconds per phase (rollout, reward,
reference, update) and tokens/s per device (prompt + completion tokens of the step / step time).

`--lengths uniform` (the default) makes the workload's completion lengths spread uniformly from 16
to `--max-new-tokens`, as real rollouts do: the sampler runs with no end-of-sequence token (every
row samples the full length) and each row is then cut to a seeded uniform length, so the reference
and update forwards see that spread. The step runs three times, side by side: sequence packing
(`train.packing`), length-sorted micro-batches each trimmed to its longest row (`train.trim_padding`),
and neither; the last line prints `padded_token_fraction=` (forward positions ÷ real tokens − 1 in
the reference and update forwards) for the three, then each phase's seconds as packed/trimmed/untrimmed.

The public reference is EasyR1's ~1,800 tokens/s/GPU for Qwen2.5-VL-3B on H100 with vLLM rollouts;
compare only at the same workload (prompts, group size, completion length).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import train  # noqa: E402
from mixedr1.models.tiny import build_tiny_model  # noqa: E402

SIZES = {  # Qwen2.5-VL text / vision dimensions (the released configs)
    "3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
               num_key_value_heads=2, vision_out=2048, tie=True),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vision_out=3584, tie=False),
}


def build_sized_model(out_dir: Path, size: str) -> Path:
    """A random Qwen2.5-VL with the real dimensions of `size`, the tiny tokenizer and processor."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    build_tiny_model(out_dir)  # tokenizer, processor, chat template, special token ids
    tiny = json.loads((out_dir / "config.json").read_text())
    dims = SIZES[size]
    text = dict(tiny["text_config"], vocab_size=151936, hidden_size=dims["hidden_size"],
                intermediate_size=dims["intermediate_size"], num_hidden_layers=dims["num_hidden_layers"],
                num_attention_heads=dims["num_attention_heads"], num_key_value_heads=dims["num_key_value_heads"],
                rope_parameters={**tiny["text_config"]["rope_parameters"], "mrope_section": [16, 24, 24]},
                tie_word_embeddings=dims["tie"])
    vision = dict(tiny["vision_config"], depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                  out_hidden_size=dims["vision_out"], fullatt_block_indexes=[7, 15, 23, 31], window_size=112)
    keep = {k: v for k, v in tiny.items() if k not in ("text_config", "vision_config", "architectures")}
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **keep)
    config.tie_word_embeddings = dims["tie"]
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16)
    model.save_pretrained(out_dir)
    return out_dir


def uniform_lengths(rollout_in_chunks, low: int, seed: int = 0):
    """`train.rollout_in_chunks` whose rows are cut to lengths drawn uniformly from [low, T]."""
    generator = torch.Generator().manual_seed(seed)

    def cut(hf, batch, params, seed_of_call, prompts_per_call):
        rollout = rollout_in_chunks(hf, batch, params, seed_of_call, prompts_per_call)
        N, T = rollout.completion_ids.shape
        lengths = torch.randint(min(low, T), T + 1, (N,), generator=generator).to(rollout.completion_ids.device)  # [N]
        keep = torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]  # [N, T]
        rollout.completion_mask = rollout.completion_mask * keep
        rollout.completion_ids = rollout.completion_ids.masked_fill(~keep, params.pad_token_id)
        rollout.sampling_logprobs = rollout.sampling_logprobs * keep
        rollout.finish_reason = ["eos" if n < T else "length" for n in lengths.tolist()]
        return rollout

    return cut


LAYOUTS = {  # name -> (train.packing, train.trim_padding)
    "packed": (True, True),
    "trimmed": (False, True),
    "untrimmed": (False, False),
}
PHASES = ("rollout", "reward", "reference", "update", "step")


def run_once(args, work: Path, model_dir: Path, layout: str) -> dict:
    run_dir = work / f"run-{layout}"
    packing, trim = LAYOUTS[layout]
    overrides = [
        f"output_dir={run_dir}", f"model.path={model_dir}", "data.synth_items=8", "data.synth_heldout_items=0",
        f"rollout.group_size={args.group_size}", f"rollout.max_new_tokens={args.max_new_tokens}",
        f"rollout.prompts_per_batch={args.prompts}", f"grpo.beta={args.beta}", f"train.steps={args.steps}",
        f"train.prompts_per_step={args.prompts}", f"train.micro_batch_size={args.micro_batch}",
        "checkpoint.every=0", "checkpoint.keep_last=1", "log.progress_bar=false", "log.tensorboard=false", "train.overwrite=true",
        "train.cpu_threads=1" if args.size == "tiny" else "train.cpu_threads=0", f"train.trim_padding={str(trim).lower()}",
        f"train.packing={str(packing).lower()}",
    ]
    if args.size != "tiny":
        overrides.append("model.gradient_checkpointing=true")
    (work / "bench.yaml").write_text("{}\n")
    real_rollout, real_eos = train.rollout_in_chunks, train.eos_token_ids
    if args.lengths == "uniform":
        train.rollout_in_chunks = uniform_lengths(real_rollout, low=16)
        train.eos_token_ids = lambda hf, tokenizer: [hf.config.get_text_config().vocab_size]  # an id never sampled
    try:
        train.main([str(work / "bench.yaml"), *overrides])
    finally:
        train.rollout_in_chunks, train.eos_token_ids = real_rollout, real_eos
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][1:]
    if not rows:
        raise SystemExit("need --steps >= 2 (the first step is a warm-up)")
    # Per-type metrics are absent from steps without that type: average each key over the steps that have it.
    keys = {key for r in rows for key, value in r.items() if isinstance(value, (int, float))}
    return {key: statistics.mean(r[key] for r in rows if key in r) for key in keys}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "3b", "7b"], default="tiny")
    parser.add_argument("--steps", type=int, default=4, help="GRPO steps; the first is a warm-up")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step (all ranks)")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--lengths", choices=["uniform", "model"], default="uniform",
                        help="uniform: completion lengths spread from 16 to --max-new-tokens; model: as sampled")
    args = parser.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="mixedr1-bench-step-"))
    model_dir = work / f"model-{args.size}"
    if not (model_dir / "config.json").is_file():
        build_tiny_model(model_dir) if args.size == "tiny" else build_sized_model(model_dir, args.size)
    results = {layout: run_once(args, work, model_dir, layout) for layout in LAYOUTS}

    print(f"\nworkload: model={args.size} prompts/step={args.prompts} G={args.group_size} "
          f"max_new_tokens={args.max_new_tokens} lengths={args.lengths} micro_batch={args.micro_batch} beta={args.beta} "
          f"steps averaged={args.steps - 1} mean completion length={results['trimmed']['completions/mean_length']:.1f}")
    print(f"{'phase':<12}" + "".join(f"{layout:>12}" for layout in LAYOUTS) + "   (seconds)")
    for phase in PHASES:
        print(f"{phase:<12}" + "".join(f"{results[layout]['time/' + phase]:>12.3f}" for layout in LAYOUTS))
    print("tokens_per_s_per_device=" + " ".join(f"{layout}:{results[layout]['perf/tokens_per_s_per_device']:.1f}" for layout in LAYOUTS))
    packed, trimmed, untrimmed = (results[layout] for layout in LAYOUTS)
    times = " ".join(f"{phase}={packed['time/' + phase]:.3f}/{trimmed['time/' + phase]:.3f}/{untrimmed['time/' + phase]:.3f}"
                     for phase in PHASES)
    print(f"padded_token_fraction={packed['perf/padded_token_fraction']:.3f} (trimmed: {trimmed['perf/padded_token_fraction']:.3f}, "
          f"untrimmed: {untrimmed['perf/padded_token_fraction']:.3f}) seconds packed/trimmed/untrimmed: {times}")


if __name__ == "__main__":
    main()
