"""Evaluate a checkpoint on the paper's benchmarks (docs/method.md §6, EVAL.md): args → load → generate → score → write.

    python eval.py --ckpt DIR --data-root DIR \\
        [--benchmarks mathvista,mathvision,mmbench,mmmu,mmstar,ai2d] [--prompt thinking|direct] \\
        [--limit N] [--output FILE] [--batch-size B] [--max-new-tokens N] \\
        [--extractor rule|llm --extractor-model DIR]
    torchrun --nproc-per-node 8 eval.py ...   # items split across ranks by index, gathered to rank 0
    torchrun --nnodes N --node-rank R --nproc-per-node 8 --master-addr HOST --master-port PORT eval.py ...  # node R

Benchmarks are read from the Hugging Face parquet files downloaded under `--data-root`, one folder
per benchmark (the table is `mixedr1.evaluation.benchmarks`'s docstring and `--help`).

Generation is the trainer's sampler (`mixedr1.rollout.generate_rollout`, greedy, one completion per
prompt), capped per benchmark (`mixedr1.evaluation.max_new_tokens`: lmms-eval's caps with the direct
prompt, e.g. 16 new tokens for MMMU and AI2D; 1,024 with the thinking prompt) unless
`--max-new-tokens` sets one cap for all. Each prediction is appended to a JSONL cache next to the
output as soon as its batch is done (`OUTPUT.predictions.rankR.jsonl`, keyed by benchmark, item id,
prompt mode, a hash of the prompt text and the cap), so a killed run picks up where it stopped;
change any of these and the item is generated again. Rank 0 scores everything, writes the JSON (per-benchmark metrics
and per-item records) and a markdown table laid out like the paper's Table 1 (`OUTPUT` with `.md`).

Scoring never stops the run: an answer a scorer cannot handle counts wrong, keeps its error in its
record, and is counted (`unscorable`) and reported. `--extractor llm` reads the answers of MathVista,
MathVerse and MMBench with a local instruction model where lmms-eval asks GPT
(`mixedr1.evaluation.extractor`); each record says which extractor scored it. Under torchrun it runs
on rank 0 while the other ranks wait; for a long extraction run `python eval.py` with the same
arguments afterwards (every prediction comes from the cache, nothing is generated again).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
from tqdm import tqdm

from mixedr1.config import run_main
from mixedr1.distributed import (all_gather_objects, barrier, check_shared_folder, destroy_distributed, init_distributed,
                                 print0)
from mixedr1.evaluation import BENCHMARKS, TABLE1, THINKING_MAX_NEW_TOKENS, EvalItem, limit_items, max_new_tokens
from mixedr1.evaluation.benchmarks import FILES, BenchmarkDataError, check_unique_ids, expected_layout
from mixedr1.evaluation.prompts import PROMPT_MODES, build_messages, prompt_text
from mixedr1.resumable import open_for_append, read_rank_files, write_atomically

DEFAULT_BENCHMARKS = ",".join(TABLE1)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    layout = "\n".join(f"  {name:<20} DATA_ROOT/{expected_layout(name)}" for name in FILES)
    parser = argparse.ArgumentParser(
        prog="eval.py",
        description="Evaluate a checkpoint on MathVista, MathVision, MMBench, MMMU, MMStar, AI2D (docs/method.md §6).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Expected files under --data-root (Hugging Face parquet, shards globbed; mmmu_pro reads both\n"
        "mmmu_pro_standard and mmmu_pro_vision; mm_math is JSON lines, its images under MM_Math/ or in a .zip there):\n" + layout,
    )
    parser.add_argument("--ckpt", required=True, help="local Hugging Face model directory (a training checkpoint or a base model)")
    parser.add_argument("--data-root", required=True, help="folder holding one sub-folder per benchmark (see below)")
    parser.add_argument("--benchmarks", default=DEFAULT_BENCHMARKS, help=f"comma-separated, from: {', '.join(BENCHMARKS)} (default: {DEFAULT_BENCHMARKS})")
    parser.add_argument("--prompt", choices=PROMPT_MODES, default="thinking", help="thinking: docs/method.md §2 <think>/<answer> prompt; direct: the benchmark's own short-answer prompt (lmms-eval)")
    parser.add_argument("--limit", type=int, default=None, help="first N questions of each benchmark (MMBench: N questions with all their rotations)")
    parser.add_argument("--output", default=None, help="results JSON (default: CKPT/eval_<prompt>.json); the table goes to the same name with .md")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generation call, per rank")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="completion length cap for every benchmark (default: per benchmark, lmms-eval's caps with "
                        "--prompt direct, e.g. MMMU 16, MMMU-Pro 256, MathVista 1024; 1024 with --prompt thinking)")
    parser.add_argument("--extractor", choices=("rule", "llm"), default="rule",
                        help="rule: rule-based answer extraction everywhere; llm: a local instruction model reads the "
                        "answers of MathVista, MathVerse and MMBench where lmms-eval asks GPT (falls back to the rules "
                        "on an unparsable reply)")
    parser.add_argument("--extractor-model", default=None, help="local instruction model directory for --extractor llm "
                        "(e.g. Qwen2.5-7B-Instruct)")
    parser.add_argument("--extractor-batch-size", type=int, default=16, help="prompts per extractor generate call")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), bfloat16, float16, float32")
    parser.add_argument("--max-pixels", type=int, default=None, help="cap on H*W of each image after the processor's resize (default: the checkpoint's)")
    parser.add_argument("--min-pixels", type=int, default=None, help="floor on H*W of each image after resize (default: the checkpoint's)")
    args = parser.parse_args(argv)
    args.benchmarks = [b.strip().lower() for b in args.benchmarks.split(",") if b.strip()]
    unknown = [b for b in args.benchmarks if b not in BENCHMARKS]
    if unknown or not args.benchmarks:
        parser.error(f"--benchmarks: unknown {unknown}; choose from {', '.join(BENCHMARKS)}")
    for flag, value in (("--limit", args.limit), ("--batch-size", args.batch_size), ("--max-new-tokens", args.max_new_tokens),
                        ("--extractor-batch-size", args.extractor_batch_size)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be >= 1, got {value}")
    if args.extractor == "llm" and not args.extractor_model:
        parser.error("--extractor llm needs --extractor-model DIR (a local instruction model)")
    if args.extractor_model and not Path(args.extractor_model).expanduser().is_dir():
        parser.error(f"--extractor-model: {args.extractor_model} is not a local model directory")
    args.output = Path(args.output) if args.output else Path(args.ckpt) / f"eval_{args.prompt}.json"
    return args


# ----------------------------------------------------------------------------------------------
# The prediction cache (append-only JSONL, one file per rank)


def cache_key(benchmark: str, item_id: str, prompt_mode: str, prompt_sha: str, max_new_tokens: int) -> str:
    return json.dumps([benchmark, item_id, prompt_mode, prompt_sha, max_new_tokens])


def prompt_sha(item: EvalItem, mode: str) -> str:
    return hashlib.sha1(prompt_text(item, mode).encode("utf-8")).hexdigest()[:16]


def load_cache(output: Path) -> dict[str, str]:
    """Every cached prediction, from all ranks' files (a different world size may have written them).
    A torn last line (the run was killed mid-write) is skipped."""
    cache = {}
    for where, entry in read_rank_files(output, "predictions"):
        try:
            key = cache_key(entry["benchmark"], entry["item_id"], entry["prompt"], entry["prompt_sha"], entry["max_new_tokens"])
        except KeyError as e:
            raise ValueError(f"{where}: a prediction line without {e}; this file is written only by eval.py") from None
        cache[key] = entry["prediction"]
    return cache


# ----------------------------------------------------------------------------------------------
# Generation


def collate_items(items: Sequence[EvalItem], mode: str, processor) -> dict[str, torch.Tensor]:
    """One processor call for a batch of items: chat template, images, LEFT padding (the sampler
    appends completions at the right end)."""
    texts = [processor.apply_chat_template(build_messages(item, mode), add_generation_prompt=True, tokenize=False) for item in items]
    images = [image.convert("RGB") for item in items for image in item.images]
    inputs = processor(text=texts, images=images or None, padding=True, padding_side="left", return_tensors="pt")
    return {
        "input_ids": inputs["input_ids"],  # [B, P]
        "attention_mask": inputs["attention_mask"],  # [B, P]
        "pixel_values": inputs.get("pixel_values"),  # [sum_patches, C*t*p*p] or None
        "image_grid_thw": inputs.get("image_grid_thw"),  # [num_images, 3] or None
    }


def generate_texts(model, processor, items: Sequence[EvalItem], mode: str, params) -> list[str]:
    """Greedy completions of a batch of items, decoded (special tokens dropped)."""
    from mixedr1.rollout import decode_completions, generate_rollout

    rollout = generate_rollout(model, collate_items(items, mode, processor), params)
    return decode_completions(rollout, processor.tokenizer)


def load_generator(args, device: torch.device):
    """The model, its processor and greedy G=1 sampling parameters (the cap is set per benchmark)."""
    from mixedr1.models import load_model, load_processor
    from mixedr1.rollout import SamplingParams

    model = load_model(args.ckpt, dtype=args.dtype, device=device)
    processor = load_processor(args.ckpt, min_pixels=args.min_pixels, max_pixels=args.max_pixels)
    tokenizer = processor.tokenizer
    eos = getattr(model.generation_config, "eos_token_id", None)
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
        eos_ids.append(tokenizer.eos_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
    # max_new_tokens is set per benchmark at generation (`caps` in `main`).
    params = SamplingParams(group_size=1, max_new_tokens=THINKING_MAX_NEW_TOKENS, greedy=True, eos_token_ids=eos_ids, pad_token_id=pad)
    return model, processor, params


# ----------------------------------------------------------------------------------------------
# Scoring and the report


def score_benchmark(name: str, items: Sequence[EvalItem], predictions: dict[str, str], extractions=None) -> dict:
    """Per-item records (prediction, extracted answer, correct, extractor) and the benchmark's metrics.

    `extractions`: one `evaluation.extractor.Extraction` per item (`--extractor llm`), else None
    (rule-based everywhere). A scorer that raises on an answer must not end the run: the answer counts
    wrong, its record keeps the error, and `unscorable` counts such answers."""
    bench = BENCHMARKS[name]
    records, unscorable = [], 0
    for i, item in enumerate(items):
        prediction = predictions[item.item_id]
        extraction = extractions[i] if extractions is not None else None
        record = {"item_id": item.item_id, "prediction": prediction, "extractor": "rule"}
        try:
            if extraction is not None and extraction.extractor == "llm":
                extracted, correct = bench.score_item(item, prediction, extraction=extraction.extraction)
            else:
                extracted, correct = bench.score_item(item, prediction)
        except Exception as e:  # noqa: BLE001 — any scorer bug on any answer: count it, never abort the run
            extracted, correct = None, False
            record["error"] = f"{type(e).__name__}: {e}"[:500]
            unscorable += 1
        if extraction is not None:
            record["extractor"] = extraction.extractor
            if extraction.reply is not None:
                record["llm_reply"] = extraction.reply
        record.update({"extracted": extracted, "answer": item.answer, "correct": bool(correct), "meta": item.meta})
        records.append(record)
    metrics = bench.aggregate(records)
    extractor_counts = {}
    for record in records:
        extractor_counts[record["extractor"]] = extractor_counts.get(record["extractor"], 0) + 1
    return {
        "metric": bench.metric, "score": metrics[bench.metric], "metrics": metrics, "n_items": len(records),
        "unscorable": unscorable, "extractors": extractor_counts, "records": records,
    }


def extract_answers(args, all_items: dict, predictions: dict, device: torch.device) -> dict:
    """`--extractor llm`: {benchmark: [Extraction per item]} for the benchmarks whose reference
    extracts with GPT (MathVista, MathVerse, MMBench); {} with `--extractor rule`."""
    from mixedr1.evaluation.extractor import EXTRACTABLE, load_extractor

    names = [name for name in all_items if name in EXTRACTABLE]
    if args.extractor != "llm" or not names:
        return {}
    extractor = load_extractor(args.extractor_model, device, batch_size=args.extractor_batch_size)
    extractions = {}
    for name in names:
        items = all_items[name]
        extractions[name] = extractor.extract(name, items, [predictions[name][it.item_id] for it in items])
        asked = sum(e.extractor != "rule" for e in extractions[name])
        print0(f"{name}: the extractor model read {asked} of {len(items)} answers")
    return extractions


METRIC_NOTES = {
    "mathvista_rule_based": "rule-based extraction (<answer>, last \\boxed{}, last number), NOT the GPT-judged protocol",
    "circular_accuracy": "circular: a question counts only if all its rotations are right",
    "l2_category_average": "mean of the 18 l2_category accuracies, lmms-eval's and the paper's MMStar number",
    "mathverse_rule_based": "rule-based (letters; numbers at 2 decimals), NOT the GPT-judged protocol",
    "mean_standard_vision": "mean of the standard (10 options) and vision accuracies",
}


def table1_markdown(results: dict, model_name: str, prompt_mode: str) -> str:
    """The paper's Table 1 layout: Avg, then MathVista, MathVision, MMBench, MMMU, MMStar, AI2D;
    benchmarks outside Table 1 follow as extra columns."""
    by_column: dict[str, str] = {}
    for name in results:
        by_column.setdefault(BENCHMARKS[name].column, name)
    table_columns = [BENCHMARKS[n].column for n in TABLE1]
    extra = [c for c in by_column if c not in table_columns]
    scores = [results[by_column[c]]["score"] for c in table_columns if c in by_column]
    average = sum(scores) / len(scores) if scores else None
    avg_text = "–" if average is None else f"{average:.1f}" + ("" if len(scores) == len(table_columns) else "*")
    cells = [f"{results[by_column[c]]['score']:.1f}" if c in by_column else "–" for c in table_columns + extra]
    header = ["model", "prompt", "Avg", *table_columns, *extra]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        "| " + " | ".join([model_name, prompt_mode, avg_text, *cells]) + " |",
        "",
    ]
    if average is not None and len(scores) != len(table_columns):
        lines.append(f"\\* Avg over the {len(scores)} Table 1 benchmarks that were run.")
    for column in table_columns + extra:
        if column in by_column:
            name = by_column[column]
            result = results[name]
            note = METRIC_NOTES.get(result["metric"], "")
            how = f" ({note})" if note else ""
            if set(result.get("extractors", {})) - {"rule"}:
                how += ", answers read by the local extractor model where lmms-eval asks GPT: " + ", ".join(
                    f"{n} {k}" for k, n in sorted(result["extractors"].items()))
            if result.get("unscorable"):
                how += f"; {result['unscorable']} answers could not be scored (counted wrong, see `error` in the records)"
            lines.append(f"- {column}: `{name}`, {result['metric']} over {result['n_items']} items{how}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    dist_info = init_distributed()
    rank, world = dist_info.rank, dist_info.world_size

    # 1. Load every benchmark first, so a missing file fails before the model is loaded.
    all_items, problems = {}, []
    for name in args.benchmarks:  # every missing or broken benchmark is named at once
        try:
            all_items[name] = limit_items(BENCHMARKS[name].load(args.data_root), args.limit)
        except BenchmarkDataError as e:
            problems.append(str(e))
    if problems:
        raise BenchmarkDataError(f"{len(problems)} of {len(args.benchmarks)} benchmarks cannot be read: " + "; ".join(problems))
    for name, items in all_items.items():
        check_unique_ids(name, items)
        print0(f"{name}: {len(items)} items")

    # 2. What this rank still has to generate: its share (by index), minus what the cache holds.
    caps = {name: args.max_new_tokens or max_new_tokens(name, args.prompt) for name in all_items}
    check_shared_folder(args.output.parent, "eval.py's --output (rank 0 reads every rank's predictions)")
    cache = load_cache(args.output)
    barrier()  # every rank has read the caches before any rank appends to its own
    keys = {
        name: {it.item_id: cache_key(name, it.item_id, args.prompt, prompt_sha(it, args.prompt), caps[name]) for it in items}
        for name, items in all_items.items()
    }
    mine = {name: items[rank::world] for name, items in all_items.items()}
    todo = {name: [it for it in items if keys[name][it.item_id] not in cache] for name, items in mine.items()}
    n_todo = sum(len(v) for v in todo.values())
    n_cached = sum(len(v) for v in mine.values()) - n_todo
    print0(f"rank 0: {n_todo} items to generate, {n_cached} from the cache ({args.output.name})")

    # 3. Generate, appending each batch to this rank's cache file as soon as it is done.
    if n_todo:
        model, processor, params = load_generator(args, dist_info.device)
        with open_for_append(args.output, "predictions", rank) as sink:
            for name, items in todo.items():
                benchmark_params = dataclasses.replace(params, max_new_tokens=caps[name])
                bar = tqdm(total=len(items), desc=name, unit="item", disable=rank != 0 or not items, dynamic_ncols=True)
                for start in range(0, len(items), args.batch_size):
                    batch = items[start : start + args.batch_size]
                    texts = generate_texts(model, processor, batch, args.prompt, benchmark_params)
                    for item, text in zip(batch, texts):
                        entry = {
                            "benchmark": name, "item_id": item.item_id, "prompt": args.prompt,
                            "prompt_sha": prompt_sha(item, args.prompt), "max_new_tokens": caps[name],
                            "prediction": text,
                        }
                        sink.write(json.dumps(entry, ensure_ascii=False) + "\n")
                        cache[keys[name][item.item_id]] = text
                    sink.flush()
                    bar.update(len(batch))
                bar.close()
        del model, processor  # the extractor model (if any) may need the memory
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # 4. Gather every rank's predictions on rank 0, score, write.
    local = {name: {it.item_id: cache[keys[name][it.item_id]] for it in items} for name, items in mine.items()}
    gathered = all_gather_objects(local)
    results: dict = {}
    if rank == 0:
        predictions = {name: {item_id: text for part in gathered for item_id, text in part[name].items()} for name in all_items}
        extractions = extract_answers(args, all_items, predictions, dist_info.device)
        for name, items in all_items.items():
            results[name] = score_benchmark(name, items, predictions[name], extractions.get(name))
            if results[name]["unscorable"]:
                print0(f"WARNING {name}: {results[name]['unscorable']} answers could not be scored (counted wrong; "
                       "the records hold each error)")
        ckpt = Path(args.ckpt).resolve()
        model_name = f"{ckpt.parent.name}/{ckpt.name}" if ckpt.parent.name else ckpt.name
        table = table1_markdown(results, model_name, args.prompt)
        report = {
            "checkpoint": str(ckpt),
            "prompt": args.prompt,
            "max_new_tokens": caps,
            "extractor": {"kind": args.extractor, "model": args.extractor_model},
            "unscorable": {name: r["unscorable"] for name, r in results.items()},
            "limit": args.limit,
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "summary": {name: {"metric": r["metric"], "score": r["score"]} for name, r in results.items()},
            "table1_markdown": table,
            "benchmarks": results,
        }
        write_atomically(args.output, json.dumps(report, indent=1, ensure_ascii=False, default=str))
        write_atomically(args.output.with_suffix(".md"), table)
        print0("\n" + table)
        print0(f"wrote {args.output} and {args.output.with_suffix('.md')}")
    barrier()
    destroy_distributed()
    return results


if __name__ == "__main__":
    run_main(main)
