"""The rollout sampler vs `model.generate(num_return_sequences=G, do_sample=True)`, side by side.

Same random Qwen2.5-VL, same prompts (B prompts, each with one image of `--grid` x `--grid` patches,
i.e. grid^2 / 4 image tokens, and different text lengths so the batch is left-padded), same
sampling settings (temperature 1, no top-k / top-p, vision tokens suppressed in both), EOS disabled
so every variant generates exactly `--new-tokens` tokens. Variants, alternated over `--repeats`
rounds after one warm-up each; the figure is the median wall time:

- `generate`: transformers' `generate`. In transformers 5.23 it runs the vision encoder once per
  prompt and then repeats its output, but prefills the language model on all B*G rows.
- `dynamic`: `generate_rollout(decode="dynamic")`, the eager sampler that drops finished rows.
- `static`: `generate_rollout(decode="static", compile=False)`: a preallocated cache, fixed shapes.
- `static_compiled`: the same with the decode step under torch.compile (CUDA graphs on CUDA). Its
  warm-up compiles; `compile_s` = that warm-up minus the median (a cold compile: the script turns
  inductor's on-disk caches off).
- `ours_no_share`: the default decode with `share_prefix=False`, prefilling all B*G rows (vision
  tower included), to separate the prefix sharing from the rest of the loop.

`ours` is what `SamplingParams()`'s defaults select (`decode="static"`, `compile="auto"`: compiled on
CUDA, eager on CPU). Then, warm, over one `--check-tokens`-token rollout and a second call with a
longer prompt (another prompt bucket of the static cache), the compiled decode's new graphs
(`recompiles`, torch._dynamo's unique_graphs) and graph breaks; and for one rollout of each decode,
the host syncs in the decode loop (profiler events aten::_local_scalar_dense / aten::item /
aten::nonzero inside the `rollout.decode` range) per sampled token.

The last line: `rollout_time_ratio=<ours / generate> vs_eager=<static compiled / dynamic>
static_eager_vs_eager=<static / dynamic> recompiles= graph_breaks= host_syncs_per_step=<static>
compile_s=`.

    python experiments/bench_rollout.py
    python experiments/bench_rollout.py --device cuda --dtype bfloat16 --hidden 2048 --layers 8 --new-tokens 256
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

# compile_s is a cold compile: inductor's on-disk caches would hide it after the first run.
os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")
warnings.filterwarnings("ignore", message="dynamo_pgo force disabled")
import torch  # noqa: E402
from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mixedr1.rollout import DECODE_RANGE, SamplingParams, banned_token_ids, generate_rollout  # noqa: E402

SYNC_EVENTS = ("aten::_local_scalar_dense", "aten::item", "aten::nonzero")

# Token ids of the random model: ordinary text uses ids >= 16.
PAD, VISION_START, VISION_END, IMAGE, VIDEO = 0, 1, 2, 3, 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--prompts", type=int, default=2, help="B")
    parser.add_argument("--group-size", type=int, default=8, help="G")
    parser.add_argument("--grid", type=int, default=32, help="image patches per side (grid^2 / 4 image tokens)")
    parser.add_argument("--text-tokens", type=int, default=24, help="text tokens of the longest prompt")
    parser.add_argument("--new-tokens", type=int, default=48, help="tokens generated per row (EOS disabled)")
    parser.add_argument("--hidden", type=int, default=256, help="language model hidden size")
    parser.add_argument("--layers", type=int, default=4, help="language model layers")
    # Vision 128 x 4 blocks costs about 0.8x the language model per image token (4 patches per token),
    # close to Qwen2.5-VL-3B's ratio (a 0.67B-parameter encoder on 4 patches per token vs a 3B LM).
    parser.add_argument("--vision-hidden", type=int, default=128)
    parser.add_argument("--vision-depth", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after one warm-up")
    parser.add_argument("--check-tokens", type=int, default=128, help="tokens of the recompile / graph-break check")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: least disturbed on a shared machine)")
    return parser.parse_args(argv)


def build_model(args: argparse.Namespace) -> Qwen2_5_VLForConditionalGeneration:
    heads = max(2, args.hidden // 64)
    head_dim = args.hidden // heads
    quarter = head_dim // 2 // 8  # M-RoPE splits head_dim / 2 frequencies as 2:3:3 (Qwen's 16:24:24)
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=args.vocab,
            hidden_size=args.hidden,
            intermediate_size=4 * args.hidden,
            num_hidden_layers=args.layers,
            num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 2),
            max_position_embeddings=8192,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 1_000_000.0,
                "mrope_section": [2 * quarter, 3 * quarter, 3 * quarter],
            },
            bos_token_id=PAD,
            eos_token_id=None,
            pad_token_id=PAD,
        ),
        vision_config=dict(
            depth=args.vision_depth,
            hidden_size=args.vision_hidden,
            intermediate_size=4 * args.vision_hidden,
            num_heads=max(2, args.vision_hidden // 64),
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[args.vision_depth - 1],
            out_hidden_size=args.hidden,
        ),
        image_token_id=IMAGE,
        video_token_id=VIDEO,
        vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(pad_token_id=PAD, bos_token_id=PAD, eos_token_id=None)
    return model.to(args.device, getattr(torch, args.dtype))


def build_batch(args: argparse.Namespace, text_tokens: int | None = None) -> dict[str, torch.Tensor]:
    """B left-padded prompts: text, <vision_start>, grid^2/4 image pads, <vision_end>, text."""
    generator = torch.Generator().manual_seed(0)
    image_tokens = args.grid * args.grid // 4
    rows = []
    for b in range(args.prompts):
        text = (text_tokens or args.text_tokens) - 3 * b  # different lengths: left padding
        ids = torch.randint(16, args.vocab, (text,), generator=generator).tolist()
        rows.append(ids[: text // 2] + [VISION_START] + [IMAGE] * image_tokens + [VISION_END] + ids[text // 2 :])
    width = max(len(r) for r in rows)
    input_ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])  # [B, P]
    attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])  # [B, P]
    patches = args.prompts * args.grid * args.grid
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "mm_token_type_ids": (input_ids == IMAGE).long(),  # for generate's own M-RoPE positions
        "pixel_values": torch.randn(patches, 3 * 2 * 14 * 14, generator=generator),  # [sum_patches, C]
        "image_grid_thw": torch.tensor([[1, args.grid, args.grid]] * args.prompts),  # [B, 3]
    }


def host_syncs_in_decode(fn) -> int:
    """Reads of a device value on the host (profiler events aten::_local_scalar_dense, aten::item,
    aten::nonzero) inside the sampler's decode loop during `fn()`; one nested in another (item calls
    _local_scalar_dense) counts once."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.events()
    loops = [e.time_range for e in events if e.name == DECODE_RANGE]
    syncs = sorted(
        (e.time_range for e in events
         if e.name in SYNC_EVENTS and any(r.start <= e.time_range.start and e.time_range.end <= r.end for r in loops)),
        key=lambda r: (r.start, -r.end),
    )
    count, outer_end = 0, -1
    for r in syncs:
        if r.start > outer_end:  # not inside the last counted one
            count, outer_end = count + 1, r.end
    return count


def main(argv: list[str] | None = None) -> None:
    from torch._dynamo.utils import counters

    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    model = build_model(args)
    dtype = getattr(torch, args.dtype)

    def prompts(text_tokens: int | None = None) -> dict[str, torch.Tensor]:
        batch = {k: v.to(device) for k, v in build_batch(args, text_tokens).items()}
        batch["pixel_values"] = batch["pixel_values"].to(dtype)
        return batch

    batch = prompts()
    suppress = banned_token_ids(model.config)

    def params(**kwargs) -> SamplingParams:
        return SamplingParams(group_size=args.group_size, max_new_tokens=args.new_tokens, pad_token_id=PAD, seed=0,
                              **kwargs)

    defaults = params()
    ours = "static" if defaults.decode == "static" and not (defaults.compile is True or device.type == "cuda") else (
        "static_compiled" if defaults.decode == "static" else "dynamic")

    def run_generate():
        out = model.generate(
            **batch,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            num_return_sequences=args.group_size,
            max_new_tokens=args.new_tokens,
            suppress_tokens=suppress,
        )
        return out.shape[1] - batch["input_ids"].shape[1]

    def run_ours(p: SamplingParams, share_prefix: bool = True):
        return generate_rollout(model, batch, p, share_prefix=share_prefix).completion_ids.shape[1]

    variants = {
        "generate": run_generate,
        "dynamic": lambda: run_ours(params(decode="dynamic")),
        "static": lambda: run_ours(params(decode="static", compile=False)),
        "static_compiled": lambda: run_ours(params(decode="static", compile=True)),
        "ours_no_share": lambda: run_ours(defaults, share_prefix=False),
    }

    text_cfg, vision_cfg = model.config.text_config, model.config.vision_config
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"model: Qwen2.5-VL random, {n_params / 1e6:.1f}M params, {args.dtype} on {args.device}; "
        f"LM hidden {text_cfg.hidden_size}, {text_cfg.num_hidden_layers} layers, {text_cfg.num_attention_heads} heads "
        f"({text_cfg.num_key_value_heads} kv), vocab {text_cfg.vocab_size}; vision hidden {vision_cfg.hidden_size}, "
        f"depth {vision_cfg.depth}"
    )
    prompt_len = batch["input_ids"].shape[1]
    print(
        f"workload: B={args.prompts} prompts x G={args.group_size} samples, prompt {prompt_len} tokens "
        f"({args.grid * args.grid // 4} image tokens from a {args.grid}x{args.grid}-patch image each), "
        f"{args.new_tokens} new tokens per row (EOS disabled), temperature 1.0, threads {torch.get_num_threads()}; "
        f"ours = {ours} (SamplingParams defaults: decode={defaults.decode!r}, compile={defaults.compile!r})"
    )

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        produced = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        assert produced == args.new_tokens, f"generated {produced} tokens, expected {args.new_tokens}"
        return time.perf_counter() - start

    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.no_grad():
        warmup = {name: timed(fn) for name, fn in variants.items()}  # static_compiled's compiles
        for _ in range(args.repeats):
            for name, fn in variants.items():
                times[name].append(timed(fn))

        # Warm: the compiled decode over a longer rollout, then a longer prompt (another prompt bucket).
        counters.clear()
        check = params(decode="static", compile=True)
        check.max_new_tokens = args.check_tokens
        generate_rollout(model, batch, check)
        longer = prompts(args.text_tokens + 2 * 64)
        generate_rollout(model, longer, check)
        recompiles = counters["stats"]["unique_graphs"]
        graph_breaks = sum(counters["graph_break"].values())

        syncs = {
            name: host_syncs_in_decode(lambda p=p: generate_rollout(model, batch, p)) / args.new_tokens
            for name, p in (("dynamic", params(decode="dynamic")), ("static", params(decode="static", compile=False)),
                            ("static_compiled", params(decode="static", compile=True)))
        }

    medians = {name: statistics.median(t) for name, t in times.items()}
    medians["ours"] = medians[ours]
    times["ours"] = times[ours]
    print(f"{'variant':<17}{'median s':>10}{'min s':>10}{'vs generate':>13}{'vs dynamic':>12}{'syncs/token':>13}")
    for name, t in times.items():
        sync = f"{syncs[name]:.3f}" if name in syncs else "-"
        print(f"{name:<17}{medians[name]:>10.3f}{min(t):>10.3f}{medians[name] / medians['generate']:>13.3f}"
              f"{medians[name] / medians['dynamic']:>12.3f}{sync:>13}")
    compile_s = warmup["static_compiled"] - medians["static_compiled"]
    print(f"checks: compiled decode of {args.check_tokens} tokens, then a {longer['input_ids'].shape[1]}-token prompt "
          f"(was {prompt_len}); static decode syncs once per sync_every={defaults.sync_every} steps")
    print(
        f"rollout_time_ratio={medians['ours'] / medians['generate']:.3f} "
        f"vs_eager={medians['static_compiled'] / medians['dynamic']:.3f} "
        f"static_eager_vs_eager={medians['static'] / medians['dynamic']:.3f} "
        f"recompiles={recompiles} graph_breaks={graph_breaks} "
        f"host_syncs_per_step={syncs['static_compiled' if ours == 'static_compiled' else 'static']:.3f} "
        f"compile_s={compile_s:.1f}"
    )


if __name__ == "__main__":
    main()
