"""Benchmark: fused, batched BMAS (docs/method.md §3, Eq. 3-4) against loops and against a bare matmul.

One group of G responses (N tokens each) against a ground truth of M tokens, embedding size D, for
D = 2048 and 3584 (the input embedding sizes of Qwen2.5-VL-3B and -7B). Timed side by side in one
run, since the machines are noisy (STYLE.md §11):

  fused          `bmas_scores`: inverse norms, one batched matmul into a mask-preloaded
                 accumulator, masked row / column maxima.
  pair loop      a Python loop over the G (response, truth) pairs; per pair F.normalize both
                 sides, one matmul, row max mean + column max mean: what a peer codebase would
                 naturally write. It does the same matmul work as the fused path.
  row loop       per response, per response token i: one matvec against the normalised truth
                 (vectorised over truth tokens j), running column max.
  token-pair loop  the obvious double loop of the definition: per response, per token i, per
                 truth token j, cos = <e_i, g_j> / (|e_i| |g_j|) with torch ops, then the maxima.
  bmm            bare `torch.bmm` of the same operands: the floor.

The fused path, the pair loop and bmm are timed in interleaved rounds (median); the two slow loops
are run fewer times (the count is printed) on the full workload: nothing is extrapolated. Ratios
between the interleaved candidates are medians of per-round ratios, robust to the load of other
processes changing during the run.

    python experiments/bench_bmas.py [--device cuda] [--threads 2] [--rounds 30] [--token-pair-repeats 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from mixedr1.rewards.bmas import bmas_scores


def pair_loop_bmas(responses: list[torch.Tensor], truth: torch.Tensor) -> torch.Tensor:
    """Per (response, truth) pair: normalise, matmul, maxima. responses: G × [N_g, D]; truth [M, D]."""
    scores = []
    for response in responses:
        sim = F.normalize(response, dim=-1) @ F.normalize(truth, dim=-1).T  # [N_g, M]
        scores.append(sim.max(dim=1).values.mean() + sim.max(dim=0).values.mean())
    return torch.stack(scores)  # [G]


def row_loop_bmas(responses: list[torch.Tensor], truth: torch.Tensor) -> torch.Tensor:
    """Per response, per response token: one matvec against the normalised truth [M, D]."""
    truth_unit = F.normalize(truth, dim=-1)  # [M, D]
    scores = []
    for response in responses:
        row_max_sum = 0.0
        col_max = torch.full((truth.shape[0],), float("-inf"), device=truth.device)  # [M]
        for token in response:  # token: [D]
            sims = truth_unit @ (token / token.norm())  # [M]
            row_max_sum = row_max_sum + sims.max()
            col_max = torch.maximum(col_max, sims)
        scores.append(row_max_sum / response.shape[0] + col_max.mean())
    return torch.stack(scores)  # [G]


def token_pair_loop_bmas(responses: list[torch.Tensor], truth: torch.Tensor) -> list[float]:
    """The obvious double loop: every (response token, truth token) cosine by its formula."""
    scores = []
    for response in responses:
        n, m = response.shape[0], truth.shape[0]
        row_max = [float("-inf")] * n
        col_max = [float("-inf")] * m
        for i in range(n):
            for j in range(m):
                cos = float(
                    torch.dot(response[i], truth[j]) / (response[i].norm() * truth[j].norm())
                )
                row_max[i] = max(row_max[i], cos)
                col_max[j] = max(col_max[j], cos)
        scores.append(sum(row_max) / n + sum(col_max) / m)
    return scores


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time_once(fn, device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def interleaved_timings(candidates: dict, device: str, warmup: int, rounds: int) -> dict:
    """Seconds per candidate per round; every round runs each once, in a rotating order, so the
    runs of one round see the same machine load and their ratio is a fair side-by-side one."""
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    _sync(device)
    times = {name: [] for name in names}
    for r in range(rounds):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            times[name].append(_time_once(candidates[name], device))
    return times


def paired_ratio(times: dict, numerator: str, denominator: str) -> float:
    """Median over rounds of the per-round ratio numerator / denominator."""
    return statistics.median(a / b for a, b in zip(times[numerator], times[denominator]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--group-size", type=int, default=8, help="G")
    parser.add_argument("--response-tokens", type=int, default=256, help="N")
    parser.add_argument("--truth-tokens", type=int, default=256, help="M")
    parser.add_argument("--dims", type=int, nargs="+", default=[2048, 3584], help="D values")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--row-loop-repeats", type=int, default=3)
    parser.add_argument("--token-pair-repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    G, N, M = args.group_size, args.response_tokens, args.truth_tokens
    device = args.device
    torch.manual_seed(0)
    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} dtype=float32")
    print(f"workload: G={G} responses x N={N} tokens vs a ground truth of M={M} tokens, "
          f"D in {args.dims}; S is [G, N, M] = {G * N * M} cosines, "
          f"matmul {2 * G * N * M:,} x D flops")
    print("loops: pair = Python loop over the G pairs (normalise+matmul+max per pair); "
          "row = loop over G x N response tokens (matvec over truth tokens); "
          "token-pair = loop over G x N x M token pairs (explicit cosine formula)")
    print(f"timing: fused / pair loop / bmm interleaved, median of {args.rounds} rounds after "
          f"{args.warmup} warm-up; row loop median of {args.row_loop_repeats}; "
          f"token-pair loop median of {args.token_pair_repeats} (1 warm-up pass on one pair)")

    header = (f"{'D':>5} {'truth':>12} {'fused ms':>9} {'bmm ms':>8} {'pair ms':>8} "
              f"{'row ms':>8} {'tokpair ms':>11} {'fused/bmm':>9} {'(of mins)':>9} {'pair/fused':>10} "
              f"{'row/fused':>9} {'tokpair/fused':>13}")
    rows, final = [], {}
    with torch.inference_mode():
        for D in args.dims:
            responses = torch.randn(G, N, D, device=device)  # [G, N, D]
            response_mask = torch.ones(G, N, dtype=torch.bool, device=device)  # [G, N]
            shared_truth = torch.randn(M, D, device=device)  # [M, D]
            shared_mask = torch.ones(M, dtype=torch.bool, device=device)  # [M]
            group_truth = torch.randn(G, M, D, device=device)  # [G, M, D]
            group_mask = torch.ones(G, M, dtype=torch.bool, device=device)  # [G, M]
            response_list = list(responses.unbind(0))  # G x [N, D]

            # Agreement check before timing: all implementations compute the same numbers.
            fused = bmas_scores(responses, response_mask, shared_truth, shared_mask)
            assert torch.allclose(fused, pair_loop_bmas(response_list, shared_truth), atol=1e-5)

            timings = {
                "shared": interleaved_timings(
                    {
                        "fused": lambda: bmas_scores(
                            responses, response_mask, shared_truth, shared_mask
                        ),
                        "pair": lambda: pair_loop_bmas(response_list, shared_truth),
                        "bmm": lambda: torch.bmm(responses, shared_truth.T.expand(G, D, M)),
                    },
                    device, args.warmup, args.rounds,
                ),
                "per-response": interleaved_timings(
                    {
                        "fused": lambda: bmas_scores(
                            responses, response_mask, group_truth, group_mask
                        ),
                        "bmm": lambda: torch.bmm(responses, group_truth.transpose(1, 2)),
                    },
                    device, args.warmup, args.rounds,
                ),
            }
            shared = timings["shared"]
            shared["row"] = [
                _time_once(lambda: row_loop_bmas(response_list, shared_truth), device)
                for _ in range(args.row_loop_repeats)
            ]
            token_pair_loop_bmas([response_list[0][:2]], shared_truth[:2])  # warm-up
            token_pair_scores = []
            shared["tokpair"] = [
                _time_once(
                    lambda: token_pair_scores.append(
                        token_pair_loop_bmas(response_list, shared_truth)
                    ),
                    device,
                )
                for _ in range(args.token_pair_repeats)
            ]
            assert torch.allclose(fused.cpu(), torch.tensor(token_pair_scores[0]), atol=1e-5)

            for truth_kind, times in timings.items():
                median = {key: statistics.median(ts) for key, ts in times.items()}

                def ms(key):
                    return f"{median[key] * 1e3:.2f}" if key in median else "-"

                def slow_ratio(key):  # the slow loops ran apart: ratio of medians
                    return f"{median[key] / median['fused']:.1f}x" if key in median else "-"

                pair = f"{paired_ratio(times, 'pair', 'fused'):.2f}x" if "pair" in times else "-"
                rows.append(
                    f"{D:>5} {truth_kind:>12} {ms('fused'):>9} {ms('bmm'):>8} {ms('pair'):>8} "
                    f"{ms('row'):>8} {ms('tokpair'):>11} "
                    f"{paired_ratio(times, 'fused', 'bmm'):>9.3f} "
                    f"{min(times['fused']) / min(times['bmm']):>9.3f} {pair:>10} "
                    f"{slow_ratio('row'):>9} {slow_ratio('tokpair'):>13}"
                )
            final = {
                "D": D,
                "tokpair": statistics.median(shared["tokpair"]) / statistics.median(shared["fused"]),
                "row": statistics.median(shared["row"]) / statistics.median(shared["fused"]),
                "pair": paired_ratio(shared, "pair", "fused"),
                "overhead": paired_ratio(shared, "fused", "bmm"),
            }

    print(header)
    print("\n".join(rows))
    print("fused/bmm and pair/fused are medians of per-round ratios (same-round runs, same load); "
          "'(of mins)' is min fused / min bmm, the least-disturbed runs;")
    print(f"load average during the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"summary at D={final['D']} (the larger), shared truth (one ground truth per group, as "
          f"bmas_reward scores it): fused vs token-pair double loop {final['tokpair']:.0f}x, "
          f"vs row loop {final['row']:.1f}x, vs per-pair loop over G {final['pair']:.2f}x; "
          f"the final line: loop = token-pair double loop, overhead = median per-round fused/bmm")
    print(f"speedup_vs_loop={final['tokpair']:.1f} overhead_vs_matmul={final['overhead']:.3f}")


if __name__ == "__main__":
    main()
