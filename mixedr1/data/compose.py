"""Compose the training mix from filtered items: so many items of each problem type (docs/method.md §1, Table 3).

    python -m mixedr1.data.compose --in KEPT.jsonl [MORE.jsonl ...] --out MIX.jsonl \\
        (--counts yorn=9000,mcq=20000,chart=6000,grounding=5000,open_ended=5000 | --preset mixed45k|20k|90k) \\
        [--scale 0.5|2] [--seed 0] [--allow-repeat]

Reads the input files in the order given (lines in file order), groups the items by `problem_type`,
and takes `round(scale * count)` of each requested type (`all`: every item of the type, unscaled; a
type not named is left out). Taken items are written in input order as their ORIGINAL lines.

Which items: each category's items are put in one seeded order (a shuffle by
`random.Random(f"{seed}:{type}")`, so other categories and files do not change it), and a mix takes
the first k of that order. So with one seed and one filtered pool the mixes nest: the 20K preset is a
subset of Mixed-45K, and the 90K preset holds every Mixed-45K item plus items NOT in it, as many as
the pool has. Only when a category's pool runs out (k > its n items) is there a shortfall, reported;
with --allow-repeat it is filled by repeats instead, taken in the same order cycled (whole passes,
then a partial one), each written after the originals with its id suffixed `@rep1`, `@rep2`, ...
(the training loader rejects duplicate ids; this one line is re-serialised). How many items had
to repeat is in the table, the report and a log line.

Presets (`PRESETS`, each number's source next to it): `mixed45k` is our reading of the paper §3.1
(9K yes/no and 20K multiple choice are the paper's; its per-category figure gives no other numbers,
so the remaining 16K, chart / grounding / open-ended, are split by us); `20k` and `90k` are Table 3's
rows, "reducing it by half or doubling it for each category" (§4.2), i.e. `mixed45k` at scale 0.5
and 2 (`--preset mixed45k --scale 0.5` is the same mix as `--preset 20k`).

Input lines are checked only for what composing needs (valid JSON, a string `id` unique over all
inputs, a known `problem_type`), errors naming file and line; the trainer's loader validates the
rest. Prints a table of requested / available / taken / repeated / shortfall per category and
writes it to `MIX.report.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from mixedr1.config import PROBLEM_TYPES

# Mixed-45K per category. The paper (§3.1 "Dataset Types and Distribution"; docs/method.md §1) gives
# the total and two of the five categories in its text; its Fig. 2 (the distribution) gives no
# numbers we can read.
MIXED45K = {
    # Paper §3.1: "We extracted approximately 9K samples" (YORN). §4.2 (Table 2's discussion) says
    # "YORN only has 8K samples"; we follow §3.1, the dataset's own description.
    "yorn": 9000,
    # Paper §3.1: "the largest category, containing around 20K samples" (MCQ).
    "mcq": 20000,
    # Not given in the paper: our choice. The 16K left of the 45K (title, §3.1 "a dataset of 45K
    # samples") after yes/no and mcq, split 6K / 5K / 5K: chart a little larger because it draws on
    # four sources (ChartQA, DocVQA, InfoVQA, MultiHiertt), grounding (RefCOCOg) and open-ended
    # (ALLaVA) one each; any such split keeps mcq the largest category, as §3.1 says.
    "chart": 6000,
    "grounding": 5000,  # not given in the paper: our choice (see chart)
    "open_ended": 5000,  # not given in the paper: our choice (see chart)
}
PRESETS = {
    "mixed45k": MIXED45K,
    # Table 3 and §4.2: "we take the 45K data as the baseline, reducing it by half or doubling it for
    # each category". Half of each category is 22.5K in all: the paper labels the row "20K"; we follow
    # the text (halve each category), not the label.
    "20k": {ptype: n // 2 for ptype, n in MIXED45K.items()},
    "90k": {ptype: 2 * n for ptype, n in MIXED45K.items()},  # Table 3 / §4.2: each category doubled
}
ALL = -1  # `type=all` in --counts
REPEAT_SUFFIX = "@rep"


@dataclass(frozen=True)
class Line:
    position: int  # over all inputs, in order: the output order
    id: str
    problem_type: str
    text: str  # the original line, without its line ending
    where: str  # "file:line" for messages


def read_lines(paths: Sequence[Path]) -> list[Line]:
    """Every non-blank line of the inputs, checked for JSON, a unique string id and a known type."""
    out: list[Line] = []
    first_seen: dict[str, str] = {}
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"input file not found: {path}")
        with open(path, encoding="utf-8") as f:
            for line_no, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                where = f"{path}:{line_no}"
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{where}: expected one JSON object per line ({e.msg} at column {e.colno})") from None
                record_id = obj.get("id") if isinstance(obj, dict) else None
                if not isinstance(record_id, str) or not record_id:
                    raise ValueError(f"{where}: field 'id': expected a non-empty string, got {record_id!r}")
                ptype = obj.get("problem_type")
                if ptype not in PROBLEM_TYPES:
                    raise ValueError(f"{where}: record id={record_id!r}: field 'problem_type': expected one of {PROBLEM_TYPES}, got {ptype!r}")
                if record_id in first_seen:
                    raise ValueError(f"{where}: record id={record_id!r}: field 'id': duplicate of {first_seen[record_id]}")
                first_seen[record_id] = where
                out.append(Line(len(out), record_id, ptype, text.rstrip("\r\n"), where))
    return out


def parse_counts(text: str) -> dict[str, int]:
    """`yorn=9000,mcq=20000,chart=all` -> {type: count}; `all` is ALL."""
    counts: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or name not in PROBLEM_TYPES:
            raise ValueError(f"--counts {part!r}: expected TYPE=N with TYPE one of {PROBLEM_TYPES}")
        if name in counts:
            raise ValueError(f"--counts: {name} given twice")
        if value == "all":
            counts[name] = ALL
            continue
        try:
            counts[name] = int(value)
        except ValueError:
            raise ValueError(f"--counts {part!r}: expected a whole number or 'all', got {value!r}") from None
        if counts[name] < 0:
            raise ValueError(f"--counts {part!r}: expected a count >= 0")
    if not counts:
        raise ValueError("--counts: expected at least one TYPE=N")
    return counts


def requested(counts: dict[str, int], available: dict[str, int], scale: float) -> dict[str, int]:
    """The number of items asked of each type: round(scale * count), or every item for `all`."""
    return {t: available.get(t, 0) if n == ALL else round(scale * n) for t, n in counts.items()}


def draw_order(n: int, seed: int, ptype: str) -> list[int]:
    """The order in which every mix draws a category's n items: one shuffle seeded by (seed, type)
    alone, so other categories and other input files' sizes do not change it. A mix of k items
    takes the first k, so mixes of one seed and pool nest (module docstring)."""
    order = list(range(n))
    random.Random(f"{seed}:{ptype}").shuffle(order)
    return order


def take(lines: list[Line], k: int, seed: int, ptype: str, allow_repeat: bool) -> tuple[list[Line], list[list[Line]]]:
    """`k` of one category's lines: the originals taken (input order) and, with allow_repeat and k
    beyond the pool, the repeat passes (each in input order): the draw order cycled, so the items
    repeated first are those the smaller mixes hold."""
    order = draw_order(len(lines), seed, ptype)
    originals = [lines[i] for i in sorted(order[:k])]
    if k <= len(lines) or not allow_repeat or not lines:
        return originals, []
    passes, left = [], k - len(lines)
    while left > 0:
        passes.append([lines[i] for i in sorted(order[:left])])
        left -= len(passes[-1])
    return originals, passes


def repeated_line(line: Line, copy: int) -> str:
    obj = json.loads(line.text)
    obj["id"] = f"{line.id}{REPEAT_SUFFIX}{copy}"
    return json.dumps(obj, ensure_ascii=False)


def compose(inputs: Sequence[Path], counts: dict[str, int], scale: float = 1.0, seed: int = 0,
            allow_repeat: bool = False) -> tuple[list[str], dict]:
    """The output lines and the per-category summary (requested, available, taken, repeated, shortfall)."""
    if scale <= 0:
        raise ValueError(f"--scale: expected > 0, got {scale}")
    lines = read_lines(inputs)
    by_type: dict[str, list[Line]] = {t: [] for t in PROBLEM_TYPES}
    for line in lines:
        by_type[line.problem_type].append(line)
    available = {t: len(v) for t, v in by_type.items()}
    asked = requested(counts, available, scale)

    originals: list[Line] = []
    repeat_passes: list[list[tuple[Line, int]]] = []
    summary = {}
    for ptype in PROBLEM_TYPES:
        if ptype not in asked:
            summary[ptype] = {"requested": None, "available": available[ptype], "taken": 0, "repeated": 0, "shortfall": 0}
            continue
        taken, passes = take(by_type[ptype], asked[ptype], seed, ptype, allow_repeat)
        originals += taken
        for copy, chosen in enumerate(passes, start=1):
            while len(repeat_passes) < copy:
                repeat_passes.append([])
            repeat_passes[copy - 1] += [(line, copy) for line in chosen]
        repeats = sum(len(p) for p in passes)
        summary[ptype] = {"requested": asked[ptype], "available": available[ptype], "taken": len(taken) + repeats,
                          "repeated": repeats, "shortfall": asked[ptype] - len(taken) - repeats}
    out = [line.text for line in sorted(originals, key=lambda line: line.position)]
    ids = {line.id for line in lines}
    for chosen in repeat_passes:
        for line, copy in sorted(chosen, key=lambda pair: pair[0].position):
            if f"{line.id}{REPEAT_SUFFIX}{copy}" in ids:
                raise ValueError(f"{line.where}: the repeat of id={line.id!r} would be named {line.id}{REPEAT_SUFFIX}{copy}, "
                                 f"which an input record already uses")
            out.append(repeated_line(line, copy))
    return out, summary


def format_table(summary: dict) -> str:
    lines = [f"{'problem_type':<14}{'requested':>11}{'available':>11}{'taken':>9}{'repeated':>10}{'shortfall':>11}"]
    for ptype, s in summary.items():
        asked = "-" if s["requested"] is None else str(s["requested"])
        lines.append(f"{ptype:<14}{asked:>11}{s['available']:>11}{s['taken']:>9}{s['repeated']:>10}{s['shortfall']:>11}")
    total = lambda key: sum(s[key] or 0 for s in summary.values())  # noqa: E731
    lines.append(f"{'all':<14}{total('requested'):>11}{total('available'):>11}{total('taken'):>9}"
                 f"{total('repeated'):>10}{total('shortfall'):>11}")
    return "\n".join(lines)


def notes(summary: dict) -> list[str]:
    """One log line per category that ran out of items: how many repeat, or how many are missing."""
    out = []
    for ptype, s in summary.items():
        if s["repeated"] > 0:
            out.append(f"compose: {ptype}: asked for {s['requested']}, the pool has {s['available']}: every one taken, "
                       f"and {s['repeated']} had to repeat")
        if s["shortfall"] > 0:
            out.append(f"compose: {ptype}: asked for {s['requested']}, only {s['available']} available "
                       f"(short by {s['shortfall']}; --allow-repeat fills it with repeats)")
    return out


def report_path(out: Path) -> Path:
    return out.with_name(out.stem + ".report.json")


def write_mix(out: Path, out_lines: list[str], report: dict) -> None:
    """The mix, then its report, each through a temporary file and a rename (the report last: its
    presence means the mix is whole)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for path, text in ((out, "".join(line + "\n" for line in out_lines)), (report_path(out), json.dumps(report, indent=1) + "\n")):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m mixedr1.data.compose", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[1:]))
    parser.add_argument("--in", dest="inputs", nargs="+", required=True, type=Path, help="filtered JSONL files, in this order")
    parser.add_argument("--out", required=True, type=Path, help="the mix (JSONL); the summary goes to OUT's stem + .report.json")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--counts", help="TYPE=N[,TYPE=N...]; N may be 'all'; types not named are left out")
    which.add_argument("--preset", choices=sorted(PRESETS), help="per-category counts (PRESETS: Mixed-45K and Table 3's 20K / 90K)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every count (Table 3: 0.5 or 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--allow-repeat", action="store_true", help="fill a category's shortfall by repeating its items")
    args = parser.parse_args(argv)
    try:
        counts = dict(PRESETS[args.preset]) if args.preset else parse_counts(args.counts)
        out_lines, summary = compose(args.inputs, counts, args.scale, args.seed, args.allow_repeat)
    except ValueError as e:
        parser.error(str(e))
    report = {"inputs": [str(p) for p in args.inputs], "preset": args.preset, "scale": args.scale, "seed": args.seed,
              "allow_repeat": args.allow_repeat, "categories": summary}
    write_mix(args.out, out_lines, report)
    print(format_table(summary))
    for line in notes(summary):
        print(line)
    print(f"compose: wrote {len(out_lines)} items to {args.out}")
    return report


if __name__ == "__main__":
    main()
