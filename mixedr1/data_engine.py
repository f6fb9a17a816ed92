"""The data engine of docs/method.md §5: keep an item only if K responses of the baseline model do not all get
the same reward (a group with equal rewards has zero GRPO advantage and teaches nothing).

    python -m mixedr1.data_engine --model DIR --data IN.jsonl --out OUT.jsonl [--data-root DIR] \\
        [--samples 8] [--temperature 1.0] [--batch-size 8] [--max-new-tokens 1024] [--tol 1e-6] \\
        [--seed 0] [--set reward.open_ended=bmas ...]
    torchrun --nproc_per_node 8 -m mixedr1.data_engine ...   # batches split over ranks, merged by rank 0

For every item of IN.jsonl (docs/method.md §1 records; images under --data-root, default IN's folder), sample
K = --samples responses with the model at --temperature, with the training prompt
(`mixedr1.data.collate`), the training sampler (`mixedr1.rollout.generate_rollout`) and the
training reward (`mixedr1.rewards.score_group` under the `reward.*` config, BMAS reading the model's
input embedding table, judges loaded by `make_judge` when configured). An item is KEPT when its
total rewards R = R_acc + λ·R_fmt spread: max − min > --tol (the tolerance matters for the
continuous IoU and BMAS rewards). A dropped item is classified, in this order:

- `too_easy`: every response is formatted (R_fmt = 1) and its accuracy is at the reward's maximum
  (≥ max − tol): 1 for matching, chart, IoU and the judges; 2 for BMAS / bipartite with
  `reward.bmas_combine=sum`, 1 with `mean` (`MAX_ACCURACY`).
- `too_hard`: every response has accuracy 0 (|R_acc| ≤ tol), formatted or not. This holds the
  "all zero total reward" groups and also the "all formatted, all wrong" ones (R = λ for every
  response), which is what the paper calls too hard ("all wrong").
- `other_constant`: any other constant group (e.g. the same partial IoU eight times, or correct but
  unformatted answers).

Outputs, next to OUT.jsonl:
- `OUT.jsonl`: the kept items as their ORIGINAL input lines, in input order.
- `OUT.report.json` (and a table on stdout): per problem type, per source and in total: seen,
  kept, too_easy, too_hard, other_constant, mean reward, format rate, clipped rate (completions cut
  at --max-new-tokens) and the per-item reward spread (mean / min / max / histogram).
- `OUT.results.rankR.jsonl`: one line per item (`id`, input `index`, a hash of its input line, a
  hash of the settings, `rewards`/`accuracy`/`format` [K], `clipped`, `decision`), appended and
  flushed after every batch.

Resuming: rerun the same command. Items already in any rank's results file are not sampled again;
OUT.jsonl and the report are always rebuilt from the results files at the end (with the current
--tol, so changing only --tol re-decides without re-sampling; the `decision` in a results line is
that of the run that sampled it). Results written under other settings (model, data line, K,
temperature, batch size, seed, reward config, ...) are an error naming the file and line, never
mixed in. A line torn by a kill is dropped and re-sampled.

Determinism: item i belongs to batch i // --batch-size, the same batches whatever the number of
ranks (batch k runs on rank k mod world size), and each batch's sampler call gets a generator
seeded from (--seed, index of its first item). The sampler draws each row's random numbers
independently of the other rows' tokens, so results depend on the batches, never on the ranks, nor
on where a run was interrupted (a half-written batch is sampled again whole, and only its missing
items are written). Changing --batch-size changes the samples; it is part of the settings.

Ranks run no collective after start-up: rank 0 polls the results files until every item is in,
then writes OUT.jsonl and the report, so ranks may finish hours apart without meeting the process
group's timeout. Across nodes (`torchrun --nnodes N`) OUT's folder must be one every node mounts:
rank 0 reads every rank's results file.

Input records must all be valid (the loader's errors name file, line and field): the paper's filter
assumes data already in the training format.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from mixedr1.config import JUDGE_NAMES, Config, ConfigError, load_config, run_main
from mixedr1.data.batch import PromptBatch, collate
from mixedr1.data.dataset import Record, load_records
from mixedr1.resumable import open_for_append, rank_file, read_rank_files, write_atomically
from mixedr1.rewards import reward_name_for
from mixedr1.rollout import SamplingParams, decode_completions, derive_seed, generate_rollout, sampling_params_from_config

# The trainer's own helpers, so the filter samples and scores exactly as training does (this import
# needs the repository root on the path, as `python -m mixedr1.data_engine` run from it has).
from mixedr1.rewards.context import make_reward_context, score_groups, with_embedding_table
from mixedr1.rollout import eos_token_ids

# `--set` may change these (the rest of the config does not reach the filter).
SETTABLE = ("reward.", "model.dtype", "model.attn_implementation", "model.min_pixels", "model.max_pixels",
            "model.trust_remote_code", "rollout.top_p", "rollout.top_k", "data.max_prompt_tokens")

DECISIONS = ("kept", "too_easy", "too_hard", "other_constant")

# The largest accuracy each reward gives (the `too_easy` test); BMAS-like rewards depend on combine.
MAX_ACCURACY = {"matching": 1.0, "chart": 1.0, "iou": 1.0, **{judge: 1.0 for judge in JUDGE_NAMES}}
EMBEDDING_REWARDS = ("bmas", "bipartite")  # range [-2, 2] with combine=sum, [-1, 1] with mean (docs/method.md §3)

# Upper edges of the spread histogram's bins after the "constant" bin (spread <= tol); the last is open.
SPREAD_EDGES = (0.25, 0.5, 1.0, 1.5, 2.0)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mixedr1.data_engine", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n".join(__doc__.split("\n")[1:]),
    )
    parser.add_argument("--model", required=True, help="baseline model: a local Hugging Face directory")
    parser.add_argument("--data", required=True, help="candidate items, JSONL in the schema of docs/method.md §1")
    parser.add_argument("--out", required=True, help="kept items (JSONL); the report and results files go next to it")
    parser.add_argument("--data-root", default=None, help="folder the image paths are relative to (default: the folder of --data)")
    parser.add_argument("--samples", type=int, default=8, help="K responses per item (docs/method.md §5: 8)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (docs/method.md §5: 1.0)")
    parser.add_argument("--batch-size", type=int, default=8, help="items per sampler call (part of the settings: it fixes the seeds)")
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="completion length cap")
    parser.add_argument("--tol", type=float, default=1e-6, help="keep an item when max - min of its rewards exceeds this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"config override, repeatable; keys starting with: {', '.join(SETTABLE)}")
    args = parser.parse_args(argv)
    for flag, value, low in (("--samples", args.samples, 2), ("--batch-size", args.batch_size, 1),
                             ("--max-new-tokens", args.max_new_tokens, 1)):
        if value < low:
            parser.error(f"{flag} must be >= {low}, got {value}")
    if not args.temperature > 0:
        parser.error(f"--temperature must be > 0, got {args.temperature}")
    if not args.tol >= 0:
        parser.error(f"--tol must be >= 0, got {args.tol}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    for text in args.set:
        if not text.split("=", 1)[0].strip().startswith(SETTABLE):
            parser.error(f"--set {text}: not a setting the filter uses; settable: {', '.join(SETTABLE)} "
                         f"(sampling has its own flags: --samples, --temperature, --max-new-tokens, --batch-size)")
    args.out = Path(args.out)
    args.data = Path(args.data)
    args.data_root = Path(args.data_root) if args.data_root else args.data.parent
    return args


def build_config(args: argparse.Namespace) -> Config:
    """The training config's defaults, the `--set` overrides, then the sampling flags."""
    try:
        cfg = load_config(None, args.set)
        cfg = dataclasses.replace(
            cfg,
            model=dataclasses.replace(cfg.model, path=str(args.model)),
            rollout=dataclasses.replace(cfg.rollout, group_size=args.samples, temperature=args.temperature,
                                        max_new_tokens=args.max_new_tokens, prompts_per_batch=args.batch_size),
        )
        return cfg.validate()
    except ConfigError as e:
        raise SystemExit(f"config error: {e}")


def settings_of(args: argparse.Namespace, cfg: Config) -> dict:
    """Everything that changes the sampled responses or their rewards (not --tol, not --out)."""
    return {
        "model": str(Path(args.model).resolve()),
        "samples": args.samples, "temperature": args.temperature, "top_p": cfg.rollout.top_p, "top_k": cfg.rollout.top_k,
        "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "seed": args.seed,
        "dtype": cfg.model.dtype, "min_pixels": cfg.model.min_pixels, "max_pixels": cfg.model.max_pixels,
        "max_prompt_tokens": cfg.data.max_prompt_tokens, "reward": dataclasses.asdict(cfg.reward),
    }


def sha16(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Input: the validated records with their original lines


@dataclass(frozen=True)
class Item:
    index: int  # position among the input's records (blank lines skipped): fixes the batch and its seed
    record: Record
    line: str  # the original JSON line, without its line ending
    line_sha: str


def read_items(path: Path, data_root: Path) -> list[Item]:
    """Every record of `path` (an invalid one is an error naming file, line and field) and its line."""
    records, _ = load_records(path, data_root, on_bad_record="error")
    with open(path, encoding="utf-8-sig") as f:  # the loader's way of splitting lines (BOM dropped), blank ones skipped
        lines = [text.rstrip("\r\n") for text in f if text.strip()]
    if len(lines) != len(records):  # cannot happen with on_bad_record="error"; guards the pairing below
        raise RuntimeError(f"{path}: {len(lines)} non-blank lines but {len(records)} records")
    return [Item(i, record, line, sha16(line)) for i, (record, line) in enumerate(zip(records, lines))]


# ----------------------------------------------------------------------------------------------
# Results files: one per rank, append-only JSONL


def results_file(out: Path, rank: int) -> Path:
    return rank_file(out, "results", rank)


def report_file(out: Path) -> Path:
    return out.parent / f"{out.stem}.report.json"


def load_results(out: Path, items: list[Item], settings_sha: str) -> dict[str, dict]:
    """Every finished item's result, from all ranks' files (a run with another world size may have
    written them), keyed by id. A torn last line (a kill mid-write) is skipped; results of other
    settings or of another input are an error naming the file and line."""
    by_id = {item.record.id: item for item in items}
    results: dict[str, dict] = {}
    for where, entry in read_rank_files(out, "results"):
        if not {"id", "index", "line_sha", "settings", "rewards"} <= set(entry):
            raise ValueError(f"{where}: expected a results line with id, index, line_sha, settings, rewards")
        if entry["settings"] != settings_sha:
            raise ValueError(f"{where}: item {entry['id']!r} was sampled with other settings (model, sampling, "
                             f"seed, batch size or reward config differ); delete the results files or use another --out")
        item = by_id.get(entry["id"])
        if item is None or item.index != entry["index"] or item.line_sha != entry["line_sha"]:
            raise ValueError(f"{where}: item {entry['id']!r} (input position {entry['index']}) is not the same line "
                             f"of the input any more; the input changed: delete the results files or use another --out")
        results.setdefault(entry["id"], entry)
    return results


# ----------------------------------------------------------------------------------------------
# Sampling and scoring one batch


def batch_seed(seed: int, first_index: int) -> int:
    """The generator seed of the batch starting at input position `first_index`."""
    return derive_seed(seed, first_index)


def sample_completions(hf, batch: PromptBatch, params: SamplingParams, generator: torch.Generator, tokenizer) -> tuple[list[str], list[bool]]:
    """K completions of each of the batch's B prompts with the training sampler: texts `[B*K]` (row
    b*K + k) and whether each was cut at max_new_tokens `[B*K]`."""
    rollout = generate_rollout(hf, batch.model_inputs(), params, generator=generator)
    return decode_completions(rollout, tokenizer), [reason == "length" for reason in rollout.finish_reason]


def max_accuracy(problem_type: str, cfg: Config) -> float:
    name = reward_name_for(problem_type, cfg.reward)
    if name in EMBEDDING_REWARDS:
        return 2.0 if cfg.reward.bmas_combine == "sum" else 1.0
    if name not in MAX_ACCURACY:
        raise ValueError(f"reward {name!r}: its largest accuracy is not known to the filter; add it to MAX_ACCURACY")
    return MAX_ACCURACY[name]


def decide(rewards: Sequence[float], accuracy: Sequence[float], fmt: Sequence[float], best: float, tol: float) -> str:
    """kept | too_easy | too_hard | other_constant for one item's K responses (module docstring)."""
    if max(rewards) - min(rewards) > tol:
        return "kept"
    if all(f == 1 for f in fmt) and all(a >= best - tol for a in accuracy):
        return "too_easy"
    if all(abs(a) <= tol for a in accuracy):
        return "too_hard"
    return "other_constant"


def score_batch(batch: PromptBatch, texts: list[str], clipped: list[bool], cfg: Config, ctx, settings_sha: str,
                items: list[Item], tol: float) -> list[dict]:
    """One results line per item of the batch, from its K completions."""
    K = cfg.rollout.group_size
    out = []
    for b, (item, breakdowns) in enumerate(zip(items, score_groups(batch, texts, K, cfg.reward, ctx))):
        rewards = [r.total for r in breakdowns]  # [K]
        accuracy = [r.accuracy for r in breakdowns]  # [K]
        fmt = [r.format for r in breakdowns]  # [K]
        best = max_accuracy(item.record.problem_type, cfg)
        out.append({
            "id": item.record.id, "index": item.index, "line_sha": item.line_sha, "settings": settings_sha,
            "problem_type": item.record.problem_type, "source": item.record.source,
            "rewards": rewards, "accuracy": accuracy, "format": fmt, "clipped": sum(clipped[b * K : (b + 1) * K]),
            "decision": decide(rewards, accuracy, fmt, best, tol),
        })
    return out


def sample_ranks_share(args, cfg: Config, items: list[Item], done: set[str], settings_sha: str, dist) -> int:
    """Sample and score this rank's unfinished batches, appending to its results file; returns the
    number of items sampled. The model is loaded only when there is something to sample."""
    from tqdm import tqdm

    from mixedr1.models import load_model, load_processor

    size = args.batch_size
    starts = list(range(0, len(items), size))[dist.rank :: dist.world_size]  # batch k on rank k mod world
    todo = [s for s in starts if any(item.record.id not in done for item in items[s : s + size])]
    mine = sum(len(items[s : s + size]) for s in starts)
    remaining = sum(sum(item.record.id not in done for item in items[s : s + size]) for s in todo)
    if not todo:
        return 0

    hf = load_model(args.model, dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation,
                    trust_remote_code=cfg.model.trust_remote_code, device=dist.device)
    processor = load_processor(args.model, min_pixels=cfg.model.min_pixels, max_pixels=cfg.model.max_pixels,
                               trust_remote_code=cfg.model.trust_remote_code)
    tokenizer = processor.tokenizer
    params = sampling_params_from_config(cfg.rollout, eos_token_ids=eos_token_ids(hf, tokenizer), pad_token_id=tokenizer.pad_token_id)
    ctx = with_embedding_table(make_reward_context(cfg, processor, dist.device), hf)

    sampled = 0
    bar = tqdm(total=mine, initial=mine - remaining, desc=f"filter (rank {dist.rank})", unit="item",
               disable=not dist.is_main, dynamic_ncols=True)
    with open_for_append(args.out, "results", dist.rank) as sink, torch.no_grad():
        for start in todo:
            batch_items = items[start : start + size]
            batch = collate([item.record for item in batch_items], processor, cfg.data.max_prompt_tokens).to(dist.device)
            generator = torch.Generator(device=dist.device).manual_seed(batch_seed(args.seed, start))
            texts, clipped = sample_completions(hf, batch, params, generator, tokenizer)  # [B*K], [B*K]
            sampled += len(batch_items)
            for entry in score_batch(batch, texts, clipped, cfg, ctx, settings_sha, batch_items, args.tol):
                if entry["id"] not in done:  # a half-written batch is sampled whole, its missing items written
                    sink.write(json.dumps(entry, ensure_ascii=False) + "\n")
            sink.flush()
            bar.update(sum(item.record.id not in done for item in batch_items))
    bar.close()
    return sampled


# ----------------------------------------------------------------------------------------------
# The report, rebuilt from the results


def spread_bins() -> list[str]:
    labels, lower = ["constant"], 0.0
    for upper in SPREAD_EDGES:
        labels.append(f"({lower:g}, {upper:g}]")
        lower = upper
    return labels + [f"> {lower:g}"]


def spread_bin(spread: float, tol: float) -> str:
    if spread <= tol:
        return "constant"
    lower = 0.0
    for upper in SPREAD_EDGES:
        if spread <= upper:
            return f"({lower:g}, {upper:g}]"
        lower = upper
    return f"> {lower:g}"


def summarize(entries: list[dict], tol: float) -> dict:
    """Counts by decision and the reward statistics of a group of items' results."""
    spreads = [max(e["rewards"]) - min(e["rewards"]) for e in entries]
    counts = Counter(e["decision"] for e in entries)
    responses = sum(len(e["rewards"]) for e in entries)
    histogram = Counter(spread_bin(s, tol) for s in spreads)
    mean = lambda values, n: round(sum(values) / n, 6) if n else None  # noqa: E731
    return {
        "seen": len(entries), **{d: counts[d] for d in DECISIONS},
        "kept_frac": round(counts["kept"] / len(entries), 6) if entries else None,
        "mean_reward": mean([r for e in entries for r in e["rewards"]], responses),
        "format_rate": mean([f for e in entries for f in e["format"]], responses),
        "clipped_rate": mean([e["clipped"] for e in entries], responses),
        "spread": {
            "mean": mean(spreads, len(spreads)),
            "min": round(min(spreads), 6) if spreads else None,
            "max": round(max(spreads), 6) if spreads else None,
            "histogram": {label: histogram[label] for label in spread_bins()},
        },
    }


def build_report(args, cfg: Config, items: list[Item], results: dict[str, dict]) -> tuple[dict, list[str]]:
    """The report and the kept lines, in input order, with decisions taken under the current --tol."""
    entries, kept_lines = [], []
    for item in items:
        entry = results[item.record.id]
        best = max_accuracy(item.record.problem_type, cfg)
        entry = {**entry, "decision": decide(entry["rewards"], entry["accuracy"], entry["format"], best, args.tol)}
        entries.append(entry)
        if entry["decision"] == "kept":
            kept_lines.append(item.line)
    by_type: dict[str, list[dict]] = {}
    by_source: dict[str, list[dict]] = {}
    for entry in entries:
        by_type.setdefault(entry["problem_type"], []).append(entry)
        by_source.setdefault(entry["source"] or "(none)", []).append(entry)
    report = {
        "data": str(args.data), "model": str(args.model), "tol": args.tol,
        "settings": settings_of(args, cfg),
        "definitions": {
            "kept": "max - min of the K total rewards > tol",
            "too_easy": "constant; every response formatted (R_fmt = 1) with accuracy >= max accuracy - tol",
            "too_hard": "constant; every response has accuracy 0 (|R_acc| <= tol), formatted or not",
            "other_constant": "constant, neither too_easy nor too_hard",
            "max_accuracy": {t: max_accuracy(t, cfg) for t in by_type},
            "spread": "max - min of an item's K total rewards R = R_acc + format_weight * R_fmt",
        },
        "total": summarize(entries, args.tol),
        "by_problem_type": {t: summarize(v, args.tol) for t, v in by_type.items()},
        "by_source": {s: summarize(v, args.tol) for s, v in by_source.items()},
    }
    return report, kept_lines


def format_table(report: dict) -> str:
    header = f"{'':<22}{'seen':>7}{'kept':>7}{'easy':>7}{'hard':>7}{'other':>7}{'kept%':>8}{'spread':>9}{'max':>7}"
    lines = [f"filter: K={report['settings']['samples']} responses per item, tol={report['tol']:g}", header]

    def row(name: str, s: dict) -> str:
        pct = f"{100 * s['kept_frac']:.1f}" if s["seen"] else "-"
        spread = f"{s['spread']['mean']:.3f}" if s["seen"] else "-"
        top = f"{s['spread']['max']:.3f}" if s["seen"] else "-"
        return (f"  {name:<20}{s['seen']:>7}{s['kept']:>7}{s['too_easy']:>7}{s['too_hard']:>7}"
                f"{s['other_constant']:>7}{pct:>8}{spread:>9}{top:>7}")

    for title, key in (("problem_type", "by_problem_type"), ("source", "by_source")):
        lines.append(title)
        lines += [row(name, s) for name, s in report[key].items()]
    lines.append(row("all", report["total"]))
    return "\n".join(lines)


def wait_for_all(args, items: list[Item], settings_sha: str, poll_s: float) -> dict[str, dict]:
    """Rank 0: the results of every item, polling the files while other ranks still write theirs."""
    last_note = time.monotonic()
    while True:
        results = load_results(args.out, items, settings_sha)
        missing = len(items) - sum(item.record.id in results for item in items)
        if missing == 0:
            return results
        if time.monotonic() - last_note > 60:
            print(f"filter: waiting for {missing} items from the other ranks (read from their results files: "
                  f"across nodes, {args.out.parent} must be shared by them)", flush=True)
            last_note = time.monotonic()
        time.sleep(poll_s)


# ----------------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None, poll_s: float = 2.0) -> dict:
    from mixedr1 import distributed

    args = parse_args(argv)
    cfg = build_config(args)
    joined = distributed.is_initialized()  # a caller's group is left to it (experiments/build_mixed45k.py: one group, one run per source)
    dist = distributed.init_distributed(cfg.distributed.backend)
    settings = settings_of(args, cfg)
    settings_sha = sha16(json.dumps(settings, sort_keys=True))

    items = read_items(args.data, args.data_root)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    distributed.check_shared_folder(args.out.parent, "the data engine's --out (rank 0 reads every rank's results)")
    done = set(load_results(args.out, items, settings_sha))
    distributed.print0(f"filter: {len(items)} items in {args.data}, {len(done)} already scored ({results_file(args.out, 0).name} ...)")
    sample_ranks_share(args, cfg, items, done, settings_sha, dist)

    report: dict = {}
    if dist.is_main:
        results = wait_for_all(args, items, settings_sha, poll_s)
        report, kept_lines = build_report(args, cfg, items, results)
        write_atomically(args.out, "".join(line + "\n" for line in kept_lines))
        write_atomically(report_file(args.out), json.dumps(report, indent=1, ensure_ascii=False) + "\n")
        print(format_table(report), flush=True)
        print(f"filter: wrote {len(kept_lines)} of {len(items)} items to {args.out} and {report_file(args.out)}", flush=True)
    if not joined:  # a destroyed group cannot be joined again in this process (gloo: stale store keys)
        distributed.destroy_distributed()
    return report


if __name__ == "__main__":
    run_main(main)
