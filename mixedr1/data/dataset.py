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
  edges, finite, x1 < x2 and y1 < y2; a JSON string of such a list is accepted too).
- `images`: non-empty list of paths relative to the data root; each must exist, stay inside the
  root after resolving `..` and symlinks, and be an image PIL reads (see `image_problem`).
- `source`: optional str. Other keys are ignored (e.g. the synthetic data's `meta`).

The file is UTF-8 (a UTF-8 byte-order mark is dropped), decoded line by line so that one bad byte
costs one record. Every bad record is a `DataError` naming the file, line, id (when readable),
field and what was expected; with `on_bad_record="skip"` bad records are left out and each is kept
in the `LoadReport` (`write_skipped` writes them as JSONL).
"""

from __future__ import annotations

import codecs
import json
import math
import random
import re
import reprlib
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Literal, Optional, Union

import torch
from PIL import Image

from mixedr1.config import PROBLEM_TYPES, DataConfig, InputError

Box = tuple[float, float, float, float]

MAX_ASPECT_RATIO = 200  # longer side / shorter side; Qwen2-VL's image processor refuses more than 200

# Values shown in messages are cut short (long strings, huge numbers, deep nesting), so that every
# message stays one readable line whatever a record holds.
_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxstring, _SHORT_REPR.maxlong, _SHORT_REPR.maxother = 80, 40, 80
_SHORT_REPR.maxlist = _SHORT_REPR.maxdict = 8
_SHORT_REPR.maxlevel = 3


def _show(value) -> str:
    return _SHORT_REPR.repr(value)


class DataError(InputError):
    """A record that does not fit the schema. `reason` is a short key (`missing_field`, `wrong_type`,
    `unknown_problem_type`, `bad_answer`, `bad_box`, `missing_image`, `path_escape`, `bad_path`,
    `bad_image`, `broken_json`, `bad_encoding`, `duplicate_id`) used to count skipped records.
    `path` is None for a record built in code rather than read from a file."""

    def __init__(self, path: Optional[Path], line: int, record_id: Optional[str], field: str, reason: str, expected: str):
        self.path, self.line, self.record_id, self.field, self.reason = path, line, record_id, field, reason
        where = f"{path}:{line}: " if path is not None else ""
        id_text = _show(record_id) if record_id is not None else "(unreadable)"
        super().__init__(f"{where}record id={id_text}: field '{field}': {expected}")


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
    origin: Optional[tuple[Path, int]] = field(default=None, compare=False)  # (file, line) it was read from

    def load_images(self) -> list[Image.Image]:
        """The images as RGB (lazily: records are cheap to hold, pixels are read per batch). The
        loader checked each file's header; a body that still fails to decode is a `DataError`
        naming this record, since `collate` would otherwise fail for a whole batch."""
        out = []
        for i, path in enumerate(self.images):
            try:
                with Image.open(path) as image:
                    out.append(image.convert("RGB"))
            except Exception as e:  # whatever the decoder raises (OSError, SyntaxError, ...): re-raised with the record
                raise self._image_error(i, e) from e
        return out

    def image_sizes(self) -> list[tuple[int, int]]:
        """(height, width) of each image, read from the file header only."""
        sizes = []
        for i, path in enumerate(self.images):
            try:
                with Image.open(path) as image:
                    sizes.append((image.height, image.width))
            except Exception as e:  # as in load_images
                raise self._image_error(i, e) from e
        return sizes

    def _image_error(self, index: int, error: Exception) -> DataError:
        file, line = self.origin or (None, 0)
        reason = " ".join(str(error).split())  # one line
        return DataError(file, line, self.id, f"images[{index}]", "bad_image",
                         f"cannot read image {self.images[index]} ({type(error).__name__}: {reason})")


@dataclass(frozen=True)
class SkippedRecord:
    """One record `load_records` left out in skip mode; `message` is the error it would have raised."""

    file: str
    line: int
    id: Optional[str]  # None when the line was unreadable
    field: str
    reason: str  # a `DataError.reason` key
    message: str


@dataclass
class LoadReport:
    """What `load_records` kept and skipped: every skipped record, in file order."""

    path: Path
    n_good: int = 0
    skipped_records: list[SkippedRecord] = field(default_factory=list)

    @property
    def n_bad(self) -> int:
        return len(self.skipped_records)

    @property
    def skipped(self) -> Counter:
        """reason -> count"""
        return Counter(r.reason for r in self.skipped_records)

    @property
    def messages(self) -> list[str]:
        return [r.message for r in self.skipped_records]

    def add(self, error: DataError) -> None:
        self.skipped_records.append(
            SkippedRecord(str(error.path), error.line, error.record_id, error.field, error.reason, str(error))
        )

    def summary(self, shown: int = 5) -> str:
        """One line of counts, then the first `shown` skipped records."""
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())) or "none"
        lines = [f"{self.path}: {self.n_good} records kept, {self.n_bad} skipped ({reasons})"]
        lines += [f"  skipped {message}" for message in self.messages[:shown]]
        if self.n_bad > shown:
            lines.append(f"  ... and {self.n_bad - shown} more")
        return "\n".join(lines)

    def write_skipped(self, path: str | Path) -> Path:
        """Every skipped record as one JSON object per line (file, line, id, field, reason, message)."""
        path = Path(path)
        path.write_text("".join(json.dumps(asdict(r)) + "\n" for r in self.skipped_records), encoding="utf-8")
        return path


def option_letter(index: int) -> str:
    return chr(ord("A") + index)


_ID_IN_RAW_LINE = re.compile(r'"id"\s*:\s*"((?:[^"\\]|\\.)*)"')


def _finite_float(value: int | float) -> Optional[float]:
    try:
        number = float(value)
    except OverflowError:  # an integer of more than ~308 digits
        return None
    return number if math.isfinite(number) else None


def image_problem(path: Path) -> Optional[str]:
    """What makes the image file `path` unusable, or None. Reads the header (format, size) and lets
    `verify` read the rest of the file without decoding pixels, so that `Record.load_images` decodes
    each image once. `verify` checks PNG chunk checksums (truncated or corrupt PNGs); for JPEG and
    most other formats it checks nothing, and a body that fails to decode is named at collate time.
    Refused: empty files, formats PIL cannot read, a side of 0, more than `Image.MAX_IMAGE_PIXELS`
    pixels (PIL's decompression-bomb limit; None turns it off as in PIL), an aspect ratio over
    `MAX_ASPECT_RATIO`."""
    try:
        if path.stat().st_size == 0:
            return "expected an image, got an empty file"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the same limit is checked below
            with Image.open(path) as image:
                width, height = image.size
                if width < 1 or height < 1:
                    return f"expected an image of at least 1x1 pixels, got {width}x{height}"
                limit = Image.MAX_IMAGE_PIXELS
                if limit is not None and width * height > limit:
                    return f"expected at most {limit} pixels (PIL's decompression-bomb limit), got {width}x{height}"
                if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
                    return f"expected an aspect ratio of at most {MAX_ASPECT_RATIO}, got {width}x{height}"
                image.verify()
    except Image.UnidentifiedImageError:
        return "expected an image in a format PIL reads, got an unrecognised file"
    except Image.DecompressionBombError as e:  # over twice the limit: PIL refuses to open it, so no size to show
        pixels = re.search(r"\((\d+) pixels\)", str(e))  # PIL says "Image size (N pixels) exceeds limit ..."
        got = f"{pixels.group(1)} pixels" if pixels else "more than twice that"
        return f"expected at most {Image.MAX_IMAGE_PIXELS} pixels (PIL's decompression-bomb limit), got {got}"
    except Exception as e:  # whatever a damaged file makes PIL raise (OSError, SyntaxError, struct.error, ...)
        return f"expected a readable image, got {type(e).__name__}: {' '.join(str(e).split())}"
    return None


def _parse_record(obj, path: Path, line: int, root: Path, checked_images: Optional[dict[Path, Optional[str]]] = None) -> Record:
    """Validate one decoded JSON object into a `Record`, or raise the first `DataError` found.
    `checked_images` caches `image_problem` by path across the records of one file."""
    checked_images = {} if checked_images is None else checked_images
    record_id = obj.get("id") if isinstance(obj, dict) else None
    rid = record_id if isinstance(record_id, str) else (None if record_id is None else _show(record_id))

    def fail(field_name: str, reason: str, expected: str):
        raise DataError(path, line, rid, field_name, reason, expected)

    if not isinstance(obj, dict):
        fail("<line>", "wrong_type", f"expected a JSON object, got {type(obj).__name__}")
    for name in ("id", "problem_type", "question", "answer", "images"):
        if name not in obj:
            fail(name, "missing_field", "missing (required: id, problem_type, question, answer, images)")
    if not isinstance(record_id, str) or not record_id:
        fail("id", "wrong_type", f"expected a non-empty string, got {_show(record_id)}")
    ptype = obj["problem_type"]
    if not isinstance(ptype, str):
        fail("problem_type", "wrong_type", f"expected a string, one of {PROBLEM_TYPES}, got {_show(ptype)}")
    if ptype not in PROBLEM_TYPES:
        fail("problem_type", "unknown_problem_type", f"expected one of {PROBLEM_TYPES}, got {_show(ptype)}")
    question = obj["question"]
    if not isinstance(question, str) or not question.strip():
        fail("question", "wrong_type", f"expected a non-empty string, got {_show(question)}")

    options = obj.get("options")
    if ptype == "mcq":
        if options is None:
            fail("options", "missing_field", "missing (required for mcq: a list of at least 2 option texts)")
        if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
            fail("options", "wrong_type", f"expected a list of at least 2 strings for mcq, got {_show(options)}")
        if len(options) > 26:
            fail("options", "wrong_type", f"expected at most 26 options (letters A-Z), got {len(options)}")
        options = tuple(options)
    elif options is not None:
        fail("options", "wrong_type", f"expected no options for problem_type {_show(ptype)}, got {_show(options)}")

    answer = obj["answer"]
    if ptype == "grounding":
        if isinstance(answer, str):
            try:
                answer = json.loads(answer)
            except (ValueError, RecursionError):  # bad JSON, an integer over 4300 digits, too deep a nesting
                fail("answer", "bad_box", f"expected a box [x1, y1, x2, y2] (4 numbers, original pixels), got {_show(answer)}")
        if (
            not isinstance(answer, list)
            or len(answer) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in answer)
        ):
            fail("answer", "bad_box", f"expected a box [x1, y1, x2, y2] (4 numbers, original pixels), got {_show(answer)}")
        box = [_finite_float(v) for v in answer]
        if None in box:  # JSON's Infinity/NaN, 1e400 (read as inf), an integer past float range
            fail("answer", "bad_box", f"expected 4 finite numbers, got {_show(answer)}")
        x1, y1, x2, y2 = box
        if not (x1 < x2 and y1 < y2) or min(x1, y1) < 0:
            fail("answer", "bad_box", f"expected x1 < x2, y1 < y2 and non-negative coordinates, got {_show(answer)}")
        answer = (x1, y1, x2, y2)
    else:
        if not isinstance(answer, str) or not answer.strip():
            fail("answer", "wrong_type", f"expected a non-empty string for {ptype}, got {_show(answer)}")
        if ptype == "yorn" and answer.strip().lower() not in ("yes", "no"):
            fail("answer", "bad_answer", f"expected 'yes' or 'no' for yorn, got {_show(answer)}")
        if ptype == "mcq":
            letters = [option_letter(i) for i in range(len(options))]
            if answer.strip().upper() not in letters:
                fail("answer", "bad_answer", f"expected an option letter {letters[0]}-{letters[-1]}, got {_show(answer)}")
            answer = answer.strip().upper()

    images = obj["images"]
    if not isinstance(images, list) or not images or not all(isinstance(p, str) and p for p in images):
        fail("images", "wrong_type", f"expected a non-empty list of paths relative to the data root, got {_show(images)}")
    resolved = []
    for i, rel in enumerate(images):
        name = f"images[{i}]"
        if "\x00" in rel:
            fail(name, "bad_path", f"expected a file path, got one with a NUL character: {_show(rel)}")
        if Path(rel).is_absolute():
            fail(name, "path_escape", f"expected a path relative to the data root {root}, got the absolute path {_show(rel)}")
        try:
            full = (root / rel).resolve()
            if not full.is_relative_to(root):
                fail(name, "path_escape", f"expected a path inside the data root {root}, but {_show(rel)} resolves to {full}")
            if not full.is_file():
                fail(name, "missing_image", f"image file not found: {full}")
        except (OSError, RuntimeError) as e:  # a name too long; a symlink loop (RuntimeError before Python 3.13)
            problem = e.strerror if isinstance(e, OSError) and e.strerror else str(e)  # strerror: without the long path
            fail(name, "bad_path", f"cannot resolve {_show(rel)} under the data root {root}: {problem}")
        resolved.append(full)

    source = obj.get("source")
    if source is not None and not isinstance(source, str):
        fail("source", "wrong_type", f"expected a string or null, got {_show(source)}")
    for i, full in enumerate(resolved):  # last: the only check that reads files
        if full not in checked_images:
            checked_images[full] = image_problem(full)
        if checked_images[full] is not None:
            fail(f"images[{i}]", "bad_image", f"{checked_images[full]}: {full}")
    return Record(record_id, ptype, question, answer, tuple(resolved), options, source, origin=(path, line))


def _non_utf8_encoding(head: bytes) -> Optional[str]:
    """The encoding of a JSONL file that is plainly not UTF-8, from its first 4 bytes: a UTF-16/32
    byte-order mark, or the NUL bytes ASCII has in UTF-16/32 (UTF-8 JSON never holds a raw NUL)."""
    for bom, name in [(codecs.BOM_UTF32_LE, "UTF-32-LE"), (codecs.BOM_UTF32_BE, "UTF-32-BE"),  # before UTF-16:
                      (codecs.BOM_UTF16_LE, "UTF-16-LE"), (codecs.BOM_UTF16_BE, "UTF-16-BE")]:  # FF FE 00 00 starts with FF FE
        if head.startswith(bom):
            return f"{name} (byte-order mark {bom.hex(' ')})"
    if b"\x00" in head:
        return "UTF-16 or UTF-32 (NUL bytes at the start)"
    return None


def _raw_id(text: str) -> Optional[str]:
    """The id of a line that does not parse, if it shows one."""
    match = _ID_IN_RAW_LINE.search(text)
    return match.group(1) if match else None


def _decode_line(raw: bytes, path: Path, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(path, line, _raw_id(raw.decode("utf-8", errors="replace")), "<line>", "bad_encoding",
                        f"expected UTF-8 text, got the byte 0x{raw[e.start]:02x} at byte {e.start + 1} ({e.reason})") from None


def _read_json(text: str, path: Path, line: int):
    """The JSON value of one line, or a `broken_json` DataError."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        problem = f"invalid JSON ({e.msg} at column {e.colno})"
    except ValueError as e:  # an integer of over 4300 digits: Python's limit on int("...")
        problem = f"a number Python will not read ({str(e).split(';')[0]})"
    except RecursionError:
        problem = "JSON nested too deeply to read"
    raise DataError(path, line, _raw_id(text), "<line>", "broken_json", f"expected one JSON object per line, got {problem}")


def load_records(
    path: str | Path, data_root: str | Path, on_bad_record: Literal["error", "skip"] = "error"
) -> tuple[list[Record], LoadReport]:
    """Read and validate a JSONL file of docs/method.md §1 records whose images live under `data_root`.

    `on_bad_record="error"` raises the first `DataError`; `"skip"` leaves bad records out, keeps
    each in the report, and keeps every good one. Blank lines are ignored. Of records sharing an
    id, the first is kept and the later ones are `duplicate_id`. A UTF-16 or UTF-32 file is a
    `DataError` in both modes.
    """
    if on_bad_record not in ("error", "skip"):
        raise ValueError(f"data.on_bad_record: expected 'error' or 'skip', got {on_bad_record!r}")
    path, root = Path(path), Path(data_root).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    if not root.is_dir():
        raise FileNotFoundError(f"data root not found: {root} (images are resolved relative to it)")
    data = path.read_bytes()
    encoding = _non_utf8_encoding(data[:4])
    if encoding is not None:  # every line would be bad, in skip mode too: refuse the file
        raise DataError(path, 1, None, "<file>", "bad_encoding", f"expected a UTF-8 file, got {encoding}; convert it to UTF-8")
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    records: list[Record] = []
    first_line_of: dict[str, int] = {}
    checked_images: dict[Path, Optional[str]] = {}
    report = LoadReport(path)
    # bytes.splitlines breaks at \n, \r\n and \r, as text-mode reading does (data_engine.read_items
    # pairs its lines with these records)
    for line_no, raw in enumerate(data.splitlines(), start=1):
        try:
            text = _decode_line(raw, path, line_no)
            if not text.strip():
                continue
            record = _parse_record(_read_json(text, path, line_no), path, line_no, root, checked_images)
            if record.id in first_line_of:
                raise DataError(path, line_no, record.id, "id", "duplicate_id",
                                f"expected a unique id, but line {first_line_of[record.id]} has the same id")
        except DataError as e:
            if on_bad_record == "error":
                raise
            report.add(e)
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


def load_heldout(cfg: DataConfig) -> tuple[list[Record], Optional[LoadReport]]:
    """The held-out records of `data.eval_file`, of the configured problem types, and the load report
    (no records and no report when `data.eval_file` is unset)."""
    if not cfg.eval_file:
        return [], None
    path = resolve_data_path(cfg.data_root, cfg.eval_file)
    records, report = load_records(path, cfg.data_root, cfg.on_bad_record)
    return [r for r in records if r.problem_type in cfg.problem_types], report


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
            generator = torch.Generator().manual_seed((seed + epoch) % (1 << 63))  # any 64-bit train.seed
            orders[epoch] = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
        out.append(records[orders[epoch][offset]])
    share = per_step // world_size
    return out[rank * share : (rank + 1) * share]
