"""Chunked completion log-probs vs the naive `log_softmax(h @ W.T).gather`: peak memory and time.

Both variants run forward + backward (gradients w.r.t. hidden states and the LM-head weight, with
random per-token output gradients, as GRPO's loss gives) on the same workload, side by side in one
run. The last line is `peak_memory_ratio=<x> time_ratio=<y>` (ours / naive).

CPU: each variant runs in a fresh subprocess that reports its own `ru_maxrss`; the peak of a
baseline subprocess that only builds the inputs (and warms up the kernels on one token) is
subtracted, so the figure is the memory the computation itself adds. Variants alternate over
`--rounds` rounds; time is the median over all timed repeats.
CUDA (`--device cuda`): one process, `torch.cuda.max_memory_allocated()` above the inputs.

    python experiments/bench_logprobs.py                  # CPU, N*T = 2048 tokens, D = 256, V = 151936
    python experiments/bench_logprobs.py --device cuda --sequences 16 --completion-len 1024 --hidden 2048 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mixedr1.logprobs import DEFAULT_CHUNK_SIZE, completion_logprobs  # noqa: E402

VARIANTS = ("naive", "chunked")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sequences", type=int, default=8, help="N completions")
    parser.add_argument("--completion-len", type=int, default=256, help="T tokens per completion")
    parser.add_argument("--hidden", type=int, default=256, help="D")
    parser.add_argument("--vocab", type=int, default=151936, help="V (Qwen2.5's vocabulary)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="tokens per chunk")
    parser.add_argument("--repeats", type=int, default=2, help="timed forward+backward per round, after one warm-up")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the variants")
    parser.add_argument("--worker", choices=("baseline",) + VARIANTS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def make_inputs(args: argparse.Namespace):
    generator = torch.Generator().manual_seed(0)
    dtype = getattr(torch, args.dtype)
    n, t, d, v = args.sequences, args.completion_len, args.hidden, args.vocab
    hidden = (torch.randn(n, t, d, generator=generator) / d**0.25).to(args.device, dtype).requires_grad_()  # [N, T, D]
    weight = (torch.randn(v, d, generator=generator) / d**0.25).to(args.device, dtype).requires_grad_()  # [V, D]
    target_ids = torch.randint(0, v, (n, t), generator=generator).to(args.device)  # [N, T]
    grad_out = torch.randn(n, t, generator=generator).to(args.device)  # [N, T] d loss / d logprob
    return hidden, weight, target_ids, grad_out


def naive_logprobs(hidden, weight, target_ids):  # [N, T, D], [V, D], [N, T] -> [N, T]
    logits = (hidden @ weight.t()).float()  # [N, T, V]
    return torch.log_softmax(logits, dim=-1).gather(-1, target_ids.unsqueeze(-1)).squeeze(-1)


def forward_backward(variant: str, hidden, weight, target_ids, grad_out, chunk_size: int) -> torch.Tensor:
    hidden.grad = weight.grad = None
    if variant == "naive":
        logprobs = naive_logprobs(hidden, weight, target_ids)
    else:
        logprobs = completion_logprobs(hidden, weight, target_ids, chunk_size=chunk_size)
    (logprobs * grad_out).sum().backward()
    return logprobs.detach()


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed_runs(variant: str, inputs, args: argparse.Namespace) -> tuple[list[float], dict[str, float]]:
    forward_backward(variant, *inputs, args.chunk_size)  # warm-up (first touch of pages / kernels)
    times = []
    for _ in range(args.repeats):
        synchronize(args.device)
        start = time.perf_counter()
        logprobs = forward_backward(variant, *inputs, args.chunk_size)
        synchronize(args.device)
        times.append(time.perf_counter() - start)
    hidden, weight = inputs[0], inputs[1]
    checksum = {
        "logprob_sum": logprobs.double().sum().item(),
        "grad_hidden_norm": hidden.grad.double().norm().item(),
        "grad_weight_norm": weight.grad.double().norm().item(),
    }
    return times, checksum


def run_worker(args: argparse.Namespace) -> None:
    """One variant in this (fresh) process; prints a JSON line with its times and ru_maxrss."""
    inputs = make_inputs(args)
    if args.worker == "baseline":
        # Load the same kernels on a single token so library start-up is part of the baseline.
        tiny = (inputs[0][:1, :1].detach().requires_grad_(), inputs[1], inputs[2][:1, :1], inputs[3][:1, :1])
        for variant in VARIANTS:
            forward_backward(variant, *tiny, args.chunk_size)
        times, checksum = [], {}
    else:
        times, checksum = timed_runs(args.worker, inputs, args)
    max_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    print(json.dumps({"times": times, "max_rss_bytes": max_rss_bytes, **checksum}))


def run_subprocess(worker: str, argv: list[str]) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", worker]
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def bench_cpu(args: argparse.Namespace, argv: list[str]) -> dict[str, dict]:
    baseline = min(run_subprocess("baseline", argv)["max_rss_bytes"] for _ in range(2))
    results = {variant: {"times": [], "peak": []} for variant in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            report = run_subprocess(variant, argv)
            results[variant]["times"] += report["times"]
            results[variant]["peak"].append(report["max_rss_bytes"] - baseline)
            results[variant]["checksum"] = {k: report[k] for k in ("logprob_sum", "grad_hidden_norm", "grad_weight_norm")}
    for variant in VARIANTS:
        results[variant]["peak"] = min(results[variant]["peak"])
    print(f"baseline process (inputs only): {baseline / 2**30:.2f} GiB max RSS")
    return results


def bench_cuda(args: argparse.Namespace) -> dict[str, dict]:
    inputs = make_inputs(args)
    results = {variant: {"times": [], "peak": 0} for variant in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            inputs[0].grad = inputs[1].grad = None
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            times, checksum = timed_runs(variant, inputs, args)
            peak = torch.cuda.max_memory_allocated() - before
            results[variant]["times"] += times
            results[variant]["peak"] = max(results[variant]["peak"], peak)
            results[variant]["checksum"] = checksum
    return results


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return
    torch.manual_seed(0)
    n, t, d, v = args.sequences, args.completion_len, args.hidden, args.vocab
    bytes_per = torch.finfo(getattr(torch, args.dtype)).bits // 8
    print(
        f"workload: N={n} T={t} (N*T={n * t} tokens) D={d} V={v} dtype={args.dtype} device={args.device} "
        f"chunk_size={args.chunk_size} threads={torch.get_num_threads()}"
    )
    print(
        f"sizes: fp32 logits [N*T, V] = {n * t * v * 4 / 2**30:.2f} GiB, one fp32 chunk [C, V] = "
        f"{min(args.chunk_size, n * t) * v * 4 / 2**30:.3f} GiB, weight [V, D] = {v * d * bytes_per / 2**30:.3f} GiB"
    )
    results = bench_cuda(args) if args.device == "cuda" else bench_cpu(args, argv)

    print(f"{'variant':<10}{'peak memory (GiB)':>20}{'fwd+bwd median (s)':>22}{'runs':>6}   checksum (logprob sum, |grad h|, |grad W|)")
    for variant in VARIANTS:
        r = results[variant]
        c = r["checksum"]
        print(
            f"{variant:<10}{r['peak'] / 2**30:>20.3f}{statistics.median(r['times']):>22.3f}{len(r['times']):>6}   "
            f"{c['logprob_sum']:.4f}, {c['grad_hidden_norm']:.4f}, {c['grad_weight_norm']:.4f}"
        )
    memory_ratio = results["chunked"]["peak"] / results["naive"]["peak"]
    time_ratio = statistics.median(results["chunked"]["times"]) / statistics.median(results["naive"]["times"])
    print(f"peak_memory_ratio={memory_ratio:.3f} time_ratio={time_ratio:.3f}")


if __name__ == "__main__":
    main()
