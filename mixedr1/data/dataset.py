"""The canonical JSONL schema of docs/method.md §1, its loader, and the data-mixture ablations (Tables 2, 3).

One JSON object per line:

    {"id": "chartqa-17", "problem_type": "chart", "question": "What is the value of bar B?",
     "answer": "42", "images": ["chartqa/17.png"], "source": "ChartQA"}

- `id`: str, unique in the file.
- `problem_type`: one of yorn | mcq | chart | grounding | open_ended.
- `question`: non-empty str.
- `options`: list of >= 2 str for mcq; absent or null otherwise.
- `answer`: str; for yorn "yes"/"no"; for mcq an option letter (A, B, ...) within the options; for
  grounding a list of 4 numbers [x1, y1, x2, y2] in the ORIGINAL image's pixels (continuous pixel
  edges, x1 < x2 and y1 < y2; a JSON string of such a list is accepted too).
- `images`: non-empty list of paths relative to the data root; each must exist and stay inside the
  root after resolving `..` and symlinks.
- `source`: optional str. Other keys are ignored (e.g. the synthetic data's `meta`).

Every bad record is a `DataError` naming the file, line, id (when readable), field and what was
expected; with `on_bad_record="skip"` bad records are counted per reason and left out instead.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal, Optional, Union

import torch
from PIL import Image

from mixedr1.config import PROBLEM_TYPES, DataConfig

Box = tuple[float, float, float, float]


class DataError(ValueError):
    """A record that does not fit the schema. `reason` is a short key (`missing_field`, `wrong_type`,
    `unknown_problem_type`, `bad_answer`, `bad_box`, `missing_image`, `path_escape`, `broken_json`,
    `duplicate_id`) used to count skipped records."""

    def __init__(self, path: Path, line: int, record_id: Optional[str], field: str, reason: str, expected: str):
        self.path, self.line, self.record_id, self.field, self.reason = path, line, record_id, field, reason
        id_text = repr(record_id) if record_id is not None else "(unreadable)"
        super().__init__(f"{path}:{line}: record id={id_text}: field '{field}': {expected}")


@dataclass(frozen=True)
class Record:
    """One validated item. `images` are absolute, resolved paths; pixels are read on demand."""

    id: str
    problem_type: str
    question: str
    answer: Union[str, Box]  # a Box (original pixels) for grounding, else text
    images: tuple[Path, ...]
    options: Optional[tuple[str, ...]] = None  # mcq only
    source: Optional[str] = None

    def load_images(self) -> list[Image.Image]:
        """The images as RGB (lazily: records are cheap to hold, pixels are read per batch)."""
        out = []
        for path in self.images:
            with Image.open(path) as image:
                out.append(image.convert("RGB"))
        return out

    def image_sizes(self) -> list[tuple[int, int]]:
        """(height, width) of each image, read from the file header only."""
        sizes = []
        for path in self.images:
            with Image.open(path) as image:
                sizes.append((image.height, image.width))
        return sizes


@dataclass
class LoadReport:
    """What `load_records` kept and skipped: counts per reason and every message."""

    path: Path
    n_good: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    messages: list[str] = field(default_factory=list)

    @property
    def n_bad(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())) or "none"
        return f"{self.path}: {self.n_good} records kept, {self.n_bad} skipped ({reasons})"


def option_letter(index: int) -> str:
    return chr(ord("A") + index)


_ID_IN_RAW_LINE = re.compile(r'"id"\s*:\s*"((?:[^"\\]|\\.)*)"')


def _parse_record(obj, path: Path, line: int, root: Path) -> Record:
    """Validate one decoded JSON object into a `Record`, or raise the first `DataError` found."""
    record_id = obj.get("id") if isinstance(obj, dict) else None
    rid = record_id if isinstance(record_id, str) else (None if record_id is None else str(record_id))

    def fail(field_name: str, reason: str, expected: str):
        raise DataError(path, line, rid, field_name, reason, expected)

    if not isinstance(obj, dict):
        fail("<line>", "wrong_type", f"expected a JSON object, got {type(obj).__name__}")
    for name in ("id", "problem_type", "question", "answer", "images"):
        if name not in obj:
            fail(name, "missing_field", "missing (required: id, problem_type, question, answer, images)")
    if not isinstance(record_id, str) or not record_id:
        fail("id", "wrong_type", f"expected a non-empty string, got {record_id!r}")
    ptype = obj["problem_type"]
    if not isinstance(ptype, str):
        fail("problem_type", "wrong_type", f"expected a string, one of {PROBLEM_TYPES}, got {ptype!r}")
    if ptype not in PROBLEM_TYPES:
        fail("problem_type", "unknown_problem_type", f"expected one of {PROBLEM_TYPES}, got {ptype!r}")
    question = obj["question"]
    if not isinstance(question, str) or not question.strip():
        fail("question", "wrong_type", f"expected a non-empty string, got {question!r}")

    options = obj.get("options")
    if ptype == "mcq":
        if options is None:
            fail("options", "missing_field", "missing (required for mcq: a list of at least 2 option texts)")
        if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
            fail("options", "wrong_type", f"expected a list of at least 2 strings for mcq, got {options!r}")
        if len(options) > 26:
            fail("options", "wrong_type", f"expected at most 26 options (letters A-Z), got {len(options)}")
        options = tuple(options)
    elif options is not None:
        fail("options", "wrong_type", f"expected no options for problem_type {ptype!r}, got {options!r}")

    answer = obj["answer"]
    if ptype == "grounding":
        if isinstance(answer, str):
            try:
                answer = json.loads(answer)
            except json.JSONDecodeError:
                fail("answer", "bad_box", f"expected a box [x1, y1, x2, y2] (4 numbers, original pixels), got {answer!r}")
        if (
            not isinstance(answer, list)
            or len(answer) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in answer)
        ):
            fail("answer", "bad_box", f"expected a box [x1, y1, x2, y2] (4 numbers, original pixels), got {answer!r}")
        x1, y1, x2, y2 = (float(v) for v in answer)
        if not (x1 < x2 and y1 < y2) or min(x1, y1) < 0:
            fail("answer", "bad_box", f"expected x1 < x2, y1 < y2 and non-negative coordinates, got {answer!r}")
        answer = (x1, y1, x2, y2)
    else:
        if not isinstance(answer, str) or not answer.strip():
            fail("answer", "wrong_type", f"expected a non-empty string for {ptype}, got {answer!r}")
        if ptype == "yorn" and answer.strip().lower() not in ("yes", "no"):
            fail("answer", "bad_answer", f"expected 'yes' or 'no' for yorn, got {answer!r}")
        if ptype == "mcq":
            letters = [option_letter(i) for i in range(len(options))]
            if answer.strip().upper() not in letters:
                fail("answer", "bad_answer", f"expected an option letter {letters[0]}-{letters[-1]}, got {answer!r}")
            answer = answer.strip().upper()

    images = obj["images"]
    if not isinstance(images, list) or not images or not all(isinstance(p, str) and p for p in images):
        fail("images", "wrong_type", f"expected a non-empty list of paths relative to the data root, got {images!r}")
    resolved = []
    for i, rel in enumerate(images):
        name = f"images[{i}]"
        if Path(rel).is_absolute():
            fail(name, "path_escape", f"expected a path relative to the data root {root}, got the absolute path {rel!r}")
        full = (root / rel).resolve()
        if not full.is_relative_to(root):
            fail(name, "path_escape", f"expected a path inside the data root {root}, but {rel!r} resolves to {full}")
        if not full.is_file():
            fail(name, "missing_image", f"image file not found: {full}")
        resolved.append(full)

    source = obj.get("source")
    if source is not None and not isinstance(source, str):
        fail("source", "wrong_type", f"expected a string or null, got {source!r}")
    return Record(record_id, ptype, question, answer, tuple(resolved), options, source)


def load_records(
    path: str | Path, data_root: str | Path, on_bad_record: Literal["error", "skip"] = "error"
) -> tuple[list[Record], LoadReport]:
    """Read and validate a JSONL file of docs/method.md §1 records whose images live under `data_root`.

    `on_bad_record="error"` raises the first `DataError`; `"skip"` leaves bad records out, counts
    them per reason in the report, and keeps every good one. Blank lines are ignored. Of records
    sharing an id, the first is kept and the later ones are `duplicate_id`.
    """
    if on_bad_record not in ("error", "skip"):
        raise ValueError(f"data.on_bad_record: expected 'error' or 'skip', got {on_bad_record!r}")
    path, root = Path(path), Path(data_root).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    if not root.is_dir():
        raise FileNotFoundError(f"data root not found: {root} (images are resolved relative to it)")
    records: list[Record] = []
    first_line_of: dict[str, int] = {}
    report = LoadReport(path)
    with open(path, encoding="utf-8") as f:
        for line_no, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    match = _ID_IN_RAW_LINE.search(text)
                    raise DataError(path, line_no, match.group(1) if match else None, "<line>", "broken_json",
                                    f"expected one JSON object per line, got invalid JSON ({e.msg} at column {e.colno})") from None
                record = _parse_record(obj, path, line_no, root)
                if record.id in first_line_of:
                    raise DataError(path, line_no, record.id, "id", "duplicate_id",
                                    f"expected a unique id, but line {first_line_of[record.id]} has the same id")
            except DataError as e:
                if on_bad_record == "error":
                    raise
                report.skipped[e.reason] += 1
                report.messages.append(str(e))
                continue
            first_line_of[record.id] = line_no
            records.append(record)
    report.n_good = len(records)
    return records, report


# ----------------------------------------------------------------------------------------------
# The data-mixture ablations


def select_problem_types(records: Iterable[Record], problem_types: Iterable[str]) -> list[Record]:
    """Keep the records of the given types (Table 2 adds reward types one by one)."""
    wanted = set(problem_types)
    unknown = wanted - set(PROBLEM_TYPES)
    if unknown:
        raise ValueError(f"data.problem_types: unknown {sorted(unknown)}, expected some of {PROBLEM_TYPES}")
    return [r for r in records if r.problem_type in wanted]


def scale_by_category(records: list[Record], scale: float, seed: int) -> list[Record]:
    """Keep round(scale * n) records of each problem_type (Table 3 halves or doubles each category).

    Deterministic given `seed`. Below 1, a seeded sample without replacement, in the original order.
    Above 1, whole passes over the category, each in a fresh seeded order, then a partial one; so
    every record appears floor(scale) or ceil(scale) times (with the same id). Types keep the order
    of their first appearance.
    """
    if scale <= 0:
        raise ValueError(f"data.scale: expected > 0, got {scale}")
    by_type: dict[str, list[Record]] = {}
    for r in records:
        by_type.setdefault(r.problem_type, []).append(r)
    out: list[Record] = []
    for ptype, items in by_type.items():
        n, k = len(items), round(scale * len(items))
        rng = random.Random(f"{seed}:{ptype}")
        if k <= n:
            keep = sorted(rng.sample(range(n), k))
            out.extend(items[i] for i in keep)
            continue
        taken = 0
        while taken < k:
            order = list(range(n))
            if taken > 0:  # the first pass keeps the file order; each repeat is reshuffled
                rng.shuffle(order)
            order = order[: k - taken]
            out.extend(items[i] for i in order)
            taken += len(order)
    return out


def resolve_data_path(data_root: str | Path, file: str | Path) -> Path:
    """A data file named in the config: absolute as given; relative to `data_root` first, then to the
    working directory (so both `train.jsonl` and `data/train.jsonl` work with `data_root: data`)."""
    file = Path(file)
    if file.is_absolute():
        return file
    under_root = Path(data_root) / file
    return under_root if under_root.exists() or not file.exists() else file


def load_training_records(data_cfg: DataConfig, seed: int) -> tuple[list[Record], LoadReport]:
    """`data.train_file`, filtered to `data.problem_types` and scaled by `data.scale` (Tables 2, 3),
    as the training run uses it."""
    if not data_cfg.train_file:
        raise ValueError("data.train_file: required (a JSONL in the schema of docs/method.md §1)")
    path = resolve_data_path(data_cfg.data_root, data_cfg.train_file)
    records, report = load_records(path, data_cfg.data_root, data_cfg.on_bad_record)
    records = select_problem_types(records, data_cfg.problem_types)
    return scale_by_category(records, data_cfg.scale, seed), report


def load_heldout(cfg: DataConfig) -> list[Record]:
    """The held-out records of `data.eval_file` (none when unset), of the configured problem types."""
    if not cfg.eval_file:
        return []
    path = resolve_data_path(cfg.data_root, cfg.eval_file)
    records, _ = load_records(path, cfg.data_root, cfg.on_bad_record)
    return [r for r in records if r.problem_type in cfg.problem_types]


def records_for_step(records: list[Record], step: int, prompts_per_step: int, seed: int, shuffle: bool,
                     rank: int = 0, world_size: int = 1) -> list[Record]:
    """This rank's prompts of global step `step`: a seeded permutation per epoch, cut in order.

    A function of the step alone, so a resumed run sees exactly the prompts it would have seen.
    """
    per_step, n = prompts_per_step, len(records)
    if n == 0:
        raise SystemExit("no training records left after data.problem_types / data.scale")
    orders: dict[int, list[int]] = {}
    out = []
    for position in range(step * per_step, (step + 1) * per_step):
        epoch, offset = divmod(position, n)
        if epoch not in orders:
            generator = torch.Generator().manual_seed(seed + epoch)
            orders[epoch] = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
        out.append(records[orders[epoch][offset]])
    share = per_step // world_size
    return out[rank * share : (rank + 1) * share]
