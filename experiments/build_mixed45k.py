"""Build Mixed-45K (or a mix of your own) from the paper's source datasets in one resumable command.

    python experiments/build_mixed45k.py --sources configs/sources.yaml --model DIR --out DIR \\
        [--preset mixed45k [20k 90k]] [--scale 1] [--seed 0] [--no-repeat] \\
        [--samples 8] [--temperature 1.0] [--batch-size 8] [--max-new-tokens 1024] [--tol 1e-6] [--set KEY=VALUE ...]
    torchrun --nproc_per_node 8 experiments/build_mixed45k.py ...    # stage 2 sharded over the ranks
    torchrun --nnodes N --node_rank R --nproc_per_node 8 --master_addr HOST --master_port PORT \\
        experiments/build_mixed45k.py ...                           # on each node R; OUT shared by the nodes

Three stages, each run per source and skipped when its output is complete for the same inputs:

1. convert (`mixedr1.data.convert`, rank 0 alone): every source listed in --sources, read from its
   public release, into `OUT/<name>.candidates.jsonl` (skipped rows named in
   `<name>.candidates.skipped.jsonl`); images once, content-addressed, under `OUT/images/`.
2. filter (`mixedr1.data_engine`, every rank): the data engine of docs/method.md §5 on each source's
   candidates: --samples responses (8) at --temperature (1.0) from --model (the paper: Qwen2.5-VL-7B),
   an item dropped when its rewards are all equal (all right: too easy; all wrong: too hard), the
   kept items in `OUT/<name>.kept.jsonl`. Under torchrun the ranks share each source's batches.
3. compose (`mixedr1.data.compose`, rank 0): each --preset from the kept items of every source, in
   the YAML's order, into `OUT/<preset>.jsonl`. The presets nest (one seeded order per category): 20k
   is a subset of mixed45k, and 90k takes items NOT in mixed45k first and repeats only when a
   category's filtered pool runs out (how many repeat: the table, the report and a log line);
   --no-repeat leaves such a category short instead.

OUT is the data root of every JSONL in it: train with `data.train_file=mixed45k.jsonl
data.data_root=OUT` (and `data.scale=1` for 20k.jsonl / 90k.jsonl: Table 3's data, already halved /
doubled).

What resumes and what reruns:
- convert: a source whose `<name>.candidates.report.json` (written last) holds the same settings
  (converter, folder, file patterns, limit, id prefix, and each input file's size and mtime) is
  skipped; otherwise it is converted again (images already stored are not written again).
- filter: `<name>.kept.stage.json` holds a fingerprint of what the samples depend on (the SHA-256 of
  the candidates file, the model directory's files, the sampling flags, --seed, --set) and whether the
  source finished. Finished with this fingerprint and --tol: skipped (no model is loaded). Not
  finished: the data engine resumes from its per-rank results files, sampling only what is missing.
  Another fingerprint (a source's rows or the model changed): that source's old results are deleted
  and it is sampled again; other sources are untouched. Another --tol alone: re-decided from the
  stored rewards without sampling.
- compose: `<preset>.report.json` (written after the mix) holds the fingerprint of the kept files
  and the preset's counts, scale, seed and repeat setting; the same fingerprint is skipped.
A kill at any point loses at most the batch being sampled.

The report (`OUT/report.json`, and a table on stdout; rewritten only when it changes): per source
the rows read, rows not converted (by kind) and candidates; per source and problem type, and per
type over all sources: candidates, kept, dropped all right (the data engine's too_easy: every
response formatted and at the reward's maximum), dropped all wrong (too_hard: every response's
accuracy 0) and dropped other (another constant group, e.g. the same partial IoU eight times);
per preset and category: requested, available, taken, repeated, shortfall.

--sources, a YAML file (configs/sources.yaml is the example, with every source's public layout):

    root: ../data/raw            # optional: where relative paths start (default: this file's folder)
    sources:
      - name: chartqa            # file names and record ids: letters, digits, _ and -; unique
        source: chartqa          # the converter: python -m mixedr1.data.convert --help
        in: ChartQA              # the folder holding the release's files
        limit: 20000             # optional: at most this many records
        files: ["**/train-*.parquet"]   # optional: glob patterns under `in` (default: the converter's)
        image_root: coco         # optional: where the release's image paths start (default: `in`)
        id_prefix: chartqa       # optional: record ids start with it (default: name)

Errors in it name the file, the entry and the field.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `mixedr1` and `experiments` importable
    sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from mixedr1 import data_engine, distributed  # noqa: E402
from mixedr1.config import PROBLEM_TYPES, InputError, run_main  # noqa: E402
from mixedr1.data import compose, convert as conv  # noqa: E402
from mixedr1.resumable import file_sha256, rank_files, write_atomically  # noqa: E402

ENTRY_FIELDS = ("name", "source", "in", "limit", "files", "image_root", "id_prefix")
NAME = re.compile(r"[A-Za-z0-9_-]+")
POLL_S = 2.0  # how often ranks other than 0 look for rank 0's files


# ----------------------------------------------------------------------------------------------
# The sources file


@dataclass(frozen=True)
class SourceEntry:
    name: str
    source: str  # a converter of mixedr1.data.convert.CONVERTERS
    in_dir: Path
    limit: Optional[int] = None
    files: Optional[tuple[str, ...]] = None
    image_root: Optional[Path] = None
    id_prefix: Optional[str] = None

    @property
    def prefix(self) -> str:
        return self.id_prefix or self.name


def read_sources(path: Path, check_folders: bool = True) -> list[SourceEntry]:
    """The entries of a sources YAML, every field checked (and, with check_folders, that the folders
    exist); an error names the file, entry and field."""
    if not path.is_file():
        raise FileNotFoundError(f"--sources: file not found: {path}")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise InputError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("sources"), list) or not doc["sources"]:
        raise InputError(f"{path}: expected a mapping with a non-empty list `sources:` (and an optional `root:`)")
    unknown = sorted(set(doc) - {"root", "sources"})
    if unknown:
        raise InputError(f"{path}: unknown top-level key(s) {unknown}; expected `root` and `sources`")
    if doc.get("root") is not None and not isinstance(doc["root"], str):
        raise InputError(f"{path}: field 'root': expected a folder path, got {doc['root']!r}")
    root = path.parent / (doc.get("root") or ".")
    entries: list[SourceEntry] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(doc["sources"]):
        where = f"{path}: sources[{i}]"
        if not isinstance(raw, dict):
            raise InputError(f"{where}: expected a mapping with fields {', '.join(ENTRY_FIELDS)}, got {raw!r}")
        name = raw.get("name")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise InputError(f"{where}: field 'name': expected letters, digits, _ or - (it names files), got {name!r}")
        where = f"{where} (name {name!r})"

        def bad(field_name: str, expected: str) -> InputError:
            return InputError(f"{where}: field {field_name!r}: expected {expected}, got {raw.get(field_name)!r}")

        unknown = sorted(set(raw) - set(ENTRY_FIELDS))
        if unknown:
            raise InputError(f"{where}: unknown field(s) {unknown}; expected {', '.join(ENTRY_FIELDS)}")
        if name in seen:
            raise InputError(f"{where}: field 'name': {name!r} is already the name of sources[{seen[name]}]")
        seen[name] = i
        if raw.get("source") not in conv.CONVERTERS:
            raise bad("source", f"one of {', '.join(sorted(conv.CONVERTERS))}")
        if not isinstance(raw.get("in"), str) or not raw["in"]:
            raise bad("in", "the folder holding the release's files")
        in_dir = root / raw["in"]
        if check_folders and not in_dir.is_dir():
            raise InputError(f"{where}: field 'in': folder not found: {in_dir}")
        limit = raw.get("limit")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise bad("limit", "a whole number >= 1 (or no limit)")
        files = raw.get("files")
        if files is not None and (not isinstance(files, list) or not files or not all(isinstance(f, str) and f for f in files)):
            raise bad("files", "a list of glob patterns")
        image_root = raw.get("image_root")
        if image_root is not None:
            if not isinstance(image_root, str) or not image_root:
                raise bad("image_root", "a folder path")
            image_root = root / image_root
            if check_folders and not image_root.is_dir():
                raise InputError(f"{where}: field 'image_root': folder not found: {image_root}")
        id_prefix = raw.get("id_prefix")
        if id_prefix is not None and (not isinstance(id_prefix, str) or not id_prefix):
            raise bad("id_prefix", "a non-empty string")
        entries.append(SourceEntry(name, raw["source"], in_dir, limit, tuple(files) if files else None, image_root, id_prefix))
    return entries


# ----------------------------------------------------------------------------------------------
# Files and fingerprints


def candidates_file(out: Path, name: str) -> Path:
    return out / f"{name}.candidates.jsonl"


def kept_file(out: Path, name: str) -> Path:
    return out / f"{name}.kept.jsonl"


def stage_file(out: Path, name: str) -> Path:
    return out / f"{name}.kept.stage.json"


def mix_file(out: Path, preset: str) -> Path:
    return out / f"{preset}.jsonl"


def read_json(path: Path) -> dict:
    """A JSON object written by this build, or {} when it is missing or torn."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def fingerprint(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def convert_settings(entry: SourceEntry) -> dict:
    return conv.settings_of(entry.source, entry.in_dir, entry.files, entry.image_root, entry.limit, entry.prefix)


def model_files(model: Path) -> list:
    """(path, size, mtime) of every file of the model directory: a replaced model changes it."""
    return [[str(p.relative_to(model)), p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(model.rglob("*")) if p.is_file()]


def engine_argv(args: argparse.Namespace, entry: SourceEntry) -> list[str]:
    argv = ["--model", str(args.model), "--data", str(candidates_file(args.out, entry.name)),
            "--out", str(kept_file(args.out, entry.name)), "--data-root", str(args.out),
            "--samples", str(args.samples), "--temperature", repr(args.temperature), "--batch-size", str(args.batch_size),
            "--max-new-tokens", str(args.max_new_tokens), "--tol", repr(args.tol), "--seed", str(args.seed)]
    for text in args.set:
        argv += ["--set", text]
    return argv


def filter_fingerprint(args: argparse.Namespace, entry: SourceEntry, model: list) -> str:
    """What one source's samples depend on (not --tol: the data engine re-decides from stored rewards)."""
    return fingerprint({
        "candidates": file_sha256(candidates_file(args.out, entry.name)),
        "model": [str(args.model.resolve()), model], "samples": args.samples, "temperature": args.temperature,
        "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens, "seed": args.seed, "set": list(args.set),
    })


def wait_for(ready: Callable[[], bool], what: str) -> None:
    """Ranks other than 0: poll until rank 0 has written what they need (no collective: rank 0 may
    convert for hours, longer than a process group's timeout)."""
    last_note = time.monotonic()
    while not ready():
        if time.monotonic() - last_note > 60:
            print(f"build: waiting for rank 0: {what} (across nodes, --out must be shared by them)", flush=True)
            last_note = time.monotonic()
        time.sleep(POLL_S)


# ----------------------------------------------------------------------------------------------
# The stages


def stage_convert(args: argparse.Namespace, entries: list[SourceEntry], rank: int) -> dict[str, str]:
    """Stage 1 on rank 0; other ranks wait for it. Returns what happened to each source."""
    done = {}
    for entry in entries:
        out = candidates_file(args.out, entry.name)
        settings = convert_settings(entry)
        if conv.finished(out, settings):
            done[entry.name] = "skipped"
            if rank == 0:
                print(f"build: convert {entry.name}: skipped (finished with the same inputs: {conv.report_path(out).name})", flush=True)
            continue
        if rank != 0:
            wait_for(lambda: conv.finished(out, settings), f"convert {entry.name}")
            done[entry.name] = "ran"
            continue
        report = conv.convert(entry.source, entry.in_dir, out, args.out / "images", entry.image_root, entry.files,
                              entry.limit, entry.prefix, progress=True)
        print(conv.summary(report), flush=True)
        done[entry.name] = "ran"
    return done


def stage_filter(args: argparse.Namespace, entries: list[SourceEntry], rank: int) -> dict[str, str]:
    """Stage 2 on every rank, one data engine run per source in one process group."""
    done = {}
    model = model_files(args.model)
    for entry in entries:
        kept, state_path = kept_file(args.out, entry.name), stage_file(args.out, entry.name)
        current = filter_fingerprint(args, entry, model)
        state = read_json(state_path)
        if (state.get("fingerprint") == current and state.get("tol") == args.tol and state.get("complete")
                and kept.is_file() and data_engine.report_file(kept).is_file()):
            done[entry.name] = "skipped"
            if rank == 0:
                print(f"build: filter {entry.name}: skipped (finished with the same candidates, model and settings: "
                      f"{state_path.name})", flush=True)
            continue
        if rank == 0:
            if state.get("fingerprint") not in (None, current):
                stale = rank_files(kept, "results")
                for path in stale:
                    path.unlink()
                print(f"build: filter {entry.name}: its candidates, the model or the sampling settings changed: "
                      f"{len(stale)} old results file(s) deleted, sampling again", flush=True)
            write_atomically(state_path, json.dumps({"fingerprint": current, "tol": args.tol, "complete": False}) + "\n")
        else:
            wait_for(lambda: read_json(state_path).get("fingerprint") == current, f"filter {entry.name} set up")
        data_engine.main(engine_argv(args, entry))
        if rank == 0:
            write_atomically(state_path, json.dumps({"fingerprint": current, "tol": args.tol, "complete": True}) + "\n")
        done[entry.name] = "ran"
    return done


def stage_compose(args: argparse.Namespace, entries: list[SourceEntry]) -> dict[str, str]:
    """Stage 3 (rank 0): each preset from every source's kept items, in the YAML's order."""
    inputs = [kept_file(args.out, entry.name) for entry in entries]
    kept_shas = [[path.name, file_sha256(path)] for path in inputs]
    done = {}
    for preset in args.preset:
        mix = mix_file(args.out, preset)
        counts = compose.PRESETS[preset]
        current = fingerprint({"kept": kept_shas, "counts": counts, "scale": args.scale, "seed": args.seed,
                               "allow_repeat": not args.no_repeat})
        if read_json(compose.report_path(mix)).get("fingerprint") == current and mix.is_file():
            print(f"build: compose {preset}: skipped (the same kept items and settings: {compose.report_path(mix).name})", flush=True)
            done[preset] = "skipped"
            continue
        lines, summary = compose.compose(inputs, counts, args.scale, args.seed, allow_repeat=not args.no_repeat)
        report = {"preset": preset, "counts": counts, "scale": args.scale, "seed": args.seed,
                  "allow_repeat": not args.no_repeat, "inputs": [path.name for path in inputs], "items": len(lines),
                  "categories": summary, "fingerprint": current}
        compose.write_mix(mix, lines, report)
        print(f"build: compose {preset}: {len(lines)} items -> {mix}\n{compose.format_table(summary)}", flush=True)
        for line in compose.notes(summary):
            print(f"build: {preset}: {line}", flush=True)
        done[preset] = "ran"
    return done


# ----------------------------------------------------------------------------------------------
# The report


def build_report(args: argparse.Namespace, entries: list[SourceEntry]) -> dict:
    """Per source, per source and type, per type, and per preset, from the stages' own reports."""
    def counts_of(s: dict) -> dict:
        return {"candidates": s["seen"], "kept": s["kept"], "dropped_all_right": s["too_easy"],
                "dropped_all_wrong": s["too_hard"], "dropped_other": s["other_constant"]}

    zero = {"candidates": 0, "kept": 0, "dropped_all_right": 0, "dropped_all_wrong": 0, "dropped_other": 0}
    sources, by_type = {}, {ptype: dict(zero) for ptype in PROBLEM_TYPES}
    for entry in entries:
        converted = read_json(conv.report_path(candidates_file(args.out, entry.name)))
        filtered = read_json(data_engine.report_file(kept_file(args.out, entry.name)))
        per_type = {ptype: counts_of(s) for ptype, s in filtered["by_problem_type"].items()}
        for ptype, c in per_type.items():
            by_type[ptype] = {k: by_type[ptype][k] + v for k, v in c.items()}
        sources[entry.name] = {"source": entry.source, "in": str(entry.in_dir), "rows": converted["rows"],
                               "not_converted": converted["skipped"], "not_converted_by_kind": converted["skipped_by_kind"],
                               "candidates": converted["records"], "by_problem_type": per_type}
    total = {k: sum(c[k] for c in by_type.values()) for k in zero}
    mixes = {}
    for preset in args.preset:
        report = read_json(compose.report_path(mix_file(args.out, preset)))
        mixes[preset] = {"file": mix_file(args.out, preset).name, "items": report["items"], "categories": report["categories"]}
    return {
        "settings": {"sources": str(args.sources), "model": str(args.model), "samples": args.samples,
                     "temperature": args.temperature, "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
                     "tol": args.tol, "seed": args.seed, "set": list(args.set), "scale": args.scale,
                     "allow_repeat": not args.no_repeat},
        "definitions": {
            "candidates": "records converted from the source (rows not converted are counted apart, by kind)",
            "dropped_all_right": "the data engine's too_easy: every response formatted and at the reward's maximum",
            "dropped_all_wrong": "the data engine's too_hard: every response's accuracy 0, formatted or not",
            "dropped_other": "the data engine's other_constant: equal rewards otherwise (e.g. one partial IoU K times)",
        },
        "sources": sources, "by_problem_type": by_type, "total": total, "mixes": mixes,
    }


def format_report(report: dict) -> str:
    keys = ("candidates", "kept", "dropped_all_right", "dropped_all_wrong", "dropped_other")
    heads = ("candidates", "kept", "all right", "all wrong", "other")
    lines = [f"{'source':<16}{'converter':<13}{'rows':>9}{'not converted':>15}{'candidates':>12}"]
    for name, s in report["sources"].items():
        lines.append(f"{name:<16}{s['source']:<13}{s['rows']:>9}{s['not_converted']:>15}{s['candidates']:>12}")
    lines += ["", "filter (dropped: all right = too easy, all wrong = too hard, other = another constant group)",
              f"{'source':<16}{'type':<13}" + "".join(f"{h:>12}" for h in heads)]
    for name, s in report["sources"].items():
        for ptype, c in s["by_problem_type"].items():
            lines.append(f"{name:<16}{ptype:<13}" + "".join(f"{c[k]:>12}" for k in keys))
    for ptype, c in report["by_problem_type"].items():
        lines.append(f"{'all':<16}{ptype:<13}" + "".join(f"{c[k]:>12}" for k in keys))
    lines.append(f"{'all':<16}{'all':<13}" + "".join(f"{report['total'][k]:>12}" for k in keys))
    for preset, m in report["mixes"].items():
        lines += ["", f"mix {preset}: {m['items']} items ({m['file']})", compose.format_table(m["categories"])]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python experiments/build_mixed45k.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[1:]))
    parser.add_argument("--sources", required=True, type=Path, help="YAML listing the sources (configs/sources.yaml)")
    parser.add_argument("--model", required=True, type=Path, help="the data engine's model: a local Hugging Face directory")
    parser.add_argument("--out", required=True, type=Path, help="output folder: the data root of every file written")
    parser.add_argument("--preset", nargs="+", default=["mixed45k"], choices=sorted(compose.PRESETS),
                        help="mixes to compose (mixedr1/data/compose.py PRESETS)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every preset's counts")
    parser.add_argument("--seed", type=int, default=0, help="the data engine's and the composer's seed")
    parser.add_argument("--no-repeat", action="store_true", help="leave a category short instead of repeating items")
    parser.add_argument("--samples", type=int, default=8, help="responses per item (docs/method.md §5: 8)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (docs/method.md §5: 1.0)")
    parser.add_argument("--batch-size", type=int, default=8, help="items per sampler call")
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="completion length cap")
    parser.add_argument("--tol", type=float, default=1e-6, help="keep an item when max - min of its rewards exceeds this")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="data engine config override, repeatable")
    args = parser.parse_args(argv)
    if not args.scale > 0:
        parser.error(f"--scale must be > 0, got {args.scale}")
    args.preset = list(dict.fromkeys(args.preset))
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    entries = read_sources(args.sources)
    if not args.model.is_dir():
        raise FileNotFoundError(f"--model: model folder not found: {args.model}")
    data_engine.build_config(data_engine.parse_args(engine_argv(args, entries[0])))  # bad sampling flags fail now, not after stage 1
    rank, world_size = distributed.launch_rank()
    args.out.mkdir(parents=True, exist_ok=True)

    stages = {"convert": stage_convert(args, entries, rank)}
    distributed.init_distributed()  # joined after stage 1, which rank 0 runs alone for as long as it takes
    try:
        stages["filter"] = stage_filter(args, entries, rank)
    finally:
        distributed.destroy_distributed()
    if rank != 0:
        return {}
    stages["compose"] = stage_compose(args, entries)

    report = build_report(args, entries)
    text = json.dumps(report, indent=1, ensure_ascii=False) + "\n"
    path = args.out / "report.json"
    if not path.is_file() or path.read_text(encoding="utf-8") != text:  # a rerun with nothing to do rewrites nothing
        write_atomically(path, text)
    print(format_report(report), flush=True)
    ran = {stage: sorted(k for k, v in done.items() if v == "ran") for stage, done in stages.items()}
    print("build: ran " + "; ".join(f"{stage}: {', '.join(names) or 'nothing (all skipped)'}" for stage, names in ran.items())
          + f"; report: {path}", flush=True)
    return {**report, "stages": stages}


if __name__ == "__main__":
    run_main(main)
