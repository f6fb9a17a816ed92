"""Inspect the reward of one response by hand; prints JSON with accuracy, format and total.

    python -m mixedr1.rewards --problem-type chart --answer 12.5 \
        --response '<think>read the bar</think><answer>12.5</answer>'
    python -m mixedr1.rewards --problem-type mcq --answer B --options red blue green --response ...
    python -m mixedr1.rewards --problem-type grounding --answer '[10, 20, 50, 60]' \
        --orig-size 480 640 --model-size 448 616 --response ...
    python -m mixedr1.rewards --problem-type open_ended --answer 'a red circle' --model DIR --response ...
    python -m mixedr1.rewards --problem-type open_ended --answer 'a red circle' --response ... \
        --set open_ended=sbert --set judge_model=DIR          # Table 4's external judges

Any `reward.*` config field can be set with `--set key=value` (e.g. `--set bmas_combine=mean`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config import JUDGE_NAMES, PROBLEM_TYPES, ConfigError, load_config
from . import RewardContext, RewardTarget, extract_answer, score_group


def load_input_embeddings(model_dir: str | Path):
    """The input embedding table `[V, D]` and tokenizer of a local HF model, reading only that tensor."""
    import torch
    from safetensors import safe_open
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
    elif (model_dir / "model.safetensors").is_file():
        with safe_open(model_dir / "model.safetensors", framework="pt") as f:
            weight_map = {k: "model.safetensors" for k in f.keys()}
    else:
        raise FileNotFoundError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")
    keys = sorted(k for k in weight_map if k.endswith("embed_tokens.weight") and "vision" not in k)
    if not keys:
        raise KeyError(f"{model_dir}: no '*embed_tokens.weight' tensor among {len(weight_map)} weights")
    with safe_open(model_dir / weight_map[keys[0]], framework="pt") as f:
        table = f.get_tensor(keys[0]).to(torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    return tokenizer, table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mixedr1.rewards", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problem-type", required=True, choices=PROBLEM_TYPES)
    parser.add_argument("--answer", required=True, help="ground truth; for grounding a JSON list [x1, y1, x2, y2]")
    parser.add_argument("--response", required=True, action="append",
                        help="a model response; repeat to score a group together")
    parser.add_argument("--options", nargs="+", help="mcq options in order A, B, ...")
    parser.add_argument("--orig-size", nargs=2, type=int, metavar=("H", "W"), help="grounding: original image size")
    parser.add_argument("--model-size", nargs=2, type=int, metavar=("H", "W"), help="grounding: size the model saw")
    parser.add_argument("--model", help="open_ended: local model directory (tokenizer + input embeddings)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a reward.* config field")
    args = parser.parse_args(argv)

    try:
        cfg = load_config(None, [f"reward.{kv}" for kv in args.set]).reward
    except ConfigError as e:
        parser.error(str(e))
    answer = args.answer
    if args.problem_type == "grounding":
        try:
            answer = json.loads(args.answer)
            assert isinstance(answer, list) and len(answer) == 4
        except (ValueError, AssertionError):
            parser.error(f"--answer for grounding must be a JSON list of 4 numbers, got {args.answer!r}")
    if args.problem_type == "mcq" and not args.options:
        parser.error("--options is required for mcq")
    embedder = None
    if args.problem_type == "open_ended" and cfg.open_ended in JUDGE_NAMES:
        from .judges import make_judge

        embedder = RewardContext(judge=make_judge(cfg, "cpu"))  # needs --set judge_model=DIR
    elif args.problem_type == "open_ended":
        if not args.model:
            parser.error("--model DIR is required for open_ended (BMAS uses the model's tokenizer and embeddings)")
        embedder = RewardContext(*load_input_embeddings(args.model))
    target = RewardTarget(
        problem_type=args.problem_type, answer=answer, options=args.options,
        orig_hw=tuple(args.orig_size) if args.orig_size else None,
        model_hw=tuple(args.model_size) if args.model_size else None,
    )
    results = score_group(args.response, target, cfg, embedder)
    rows = [
        {"accuracy": r.accuracy, "format": r.format, "total": r.total, "reward": r.reward_name,
         "extracted_answer": extract_answer(resp)}
        for r, resp in zip(results, args.response)
    ]
    json.dump(rows[0] if len(rows) == 1 else rows, sys.stdout, indent=2, ensure_ascii=False)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
