"""Benchmark loaders: the Hugging Face parquet files a user downloaded → a list of `EvalItem`.

Nothing is downloaded here. Each benchmark lives in its own folder under `DATA_ROOT`, laid out as
`hf download REPO --repo-type dataset --local-dir DATA_ROOT/FOLDER` leaves it; a glob
takes every shard (`-00000-of-00003`, ...), read in sorted order. Folder names match case-insensitively.

| name | FOLDER / files (glob) | Hugging Face dataset, split |
|---|---|---|
| mathvista | `MathVista/data/testmini-*.parquet` | AI4Math/MathVista, testmini (1000) |
| mathvision | `MathVision/data/test-*.parquet` | MathLLMs/MathVision, test (3040) |
| mathvision_testmini | `MathVision/data/testmini-*.parquet` | MathLLMs/MathVision, testmini (304) |
| mmbench | `MMBench/en/dev-*.parquet` | lmms-lab/MMBench, config en, dev (~4.3k rows) |
| mmmu | `MMMU/data/validation-*.parquet` | lmms-lab/MMMU, validation (900) |
| mmstar | `MMStar/mmstar.parquet` | Lin-Chen/MMStar, val (1500) |
| ai2d | `ai2d/data/test-*.parquet` | lmms-lab/ai2d, test (3088) |
| mathverse (optional) | `MathVerse/testmini.parquet` | CaraJ/MathVerse-lmmseval, testmini (3940) |
| mmmu_pro (optional) | `MMMU_Pro/standard (10 options)/test-*.parquet` and `MMMU_Pro/vision/test-*.parquet` | MMMU/MMMU_Pro, test (1730 each) |
| mmiq (optional) | `MM-IQ/test-*.parquet` | huanqia/MM-IQ, test (2710) |
| m3cot (optional) | `M3CoT/data/test-*.parquet` | LightChen2333/M3CoT, test (2318) |
| mm_math (optional) | `MM_Math/MM_Math.jsonl` and its images (`file_name`) anywhere under `MM_Math/`, unzipped or in a `.zip` there | THU-KEG/MM_Math (5929) |

The parquet-converter branch's layout (`refs/convert/parquet`: `CONFIG/SPLIT/*.parquet`, e.g.
`MMBench/en/dev/0000.parquet`, `MMStar/mmstar/val/0000.parquet`) is accepted as a second choice.

Images are parquet struct columns `{"bytes": ..., "path": ...}` (the `datasets` Image feature) and
are opened with PIL from the bytes, lazily (pixels are read when the processor needs them). A
missing folder, file or column, or a bad value, is a `BenchmarkDataError` naming the file (and row
and column) and what was expected.
"""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from mixedr1.config import InputError
from mixedr1.evaluation.scoring import MMBENCH_CIRCULAR_BASE, ai2d_letter, all_boxed, letters_for, parse_options_literal


class BenchmarkDataError(InputError):
    """A benchmark file that is missing or does not have the expected schema."""


@dataclass
class EvalItem:
    """One benchmark question, in the form the prompts and scorers use."""

    benchmark: str
    item_id: str  # the benchmark's own id (MathVista pid, MMBench index, ...); AI2D: its row number
    question: str  # text before the options (MMBench: hint + question; MathVista: + "(Unit: u)")
    images: list = field(default_factory=list)  # PIL images, in the order the prompt shows them
    options: list[str] = field(default_factory=list)  # lettered A, B, ... ; [] for open questions and MMStar
    answer: str = ""  # what the scorer compares with (see each loader)
    multiple_choice: bool = False
    meta: dict = field(default_factory=dict)  # JSON-safe fields the scorer / aggregate reads
    source: str = ""  # "file.parquet row N", for error messages


@dataclass(frozen=True)
class BenchmarkFiles:
    """Where a benchmark's parquet files are and which columns they must have."""

    folder: str
    patterns: tuple[str, ...]  # globs under the folder, tried in order; the first that matches wins
    hf_dataset: str
    split: str
    columns: tuple[str, ...]  # required
    optional_columns: tuple[str, ...] = ()


MMMU_IMAGE_COLUMNS = tuple(f"image_{k}" for k in range(1, 8))

FILES: dict[str, BenchmarkFiles] = {
    "mathvista": BenchmarkFiles(
        "MathVista", ("data/testmini-*.parquet", "default/testmini/*.parquet"), "AI4Math/MathVista", "testmini",
        ("pid", "question", "decoded_image", "choices", "unit", "precision", "answer", "question_type", "answer_type"),
        ("query",),
    ),
    "mathvision": BenchmarkFiles(
        "MathVision", ("data/test-*.parquet", "default/test/*.parquet"), "MathLLMs/MathVision", "test",
        ("id", "question", "options", "decoded_image", "answer"), ("subject", "level"),
    ),
    "mathvision_testmini": BenchmarkFiles(
        "MathVision", ("data/testmini-*.parquet", "default/testmini/*.parquet"), "MathLLMs/MathVision", "testmini",
        ("id", "question", "options", "decoded_image", "answer"), ("subject", "level"),
    ),
    "mmbench": BenchmarkFiles(
        "MMBench", ("en/dev-*.parquet", "en/dev/*.parquet"), "lmms-lab/MMBench (config en)", "dev",
        ("index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image"), ("E", "L2-category"),
    ),
    "mmmu": BenchmarkFiles(
        "MMMU", ("data/validation-*.parquet", "default/validation/*.parquet"), "lmms-lab/MMMU", "validation",
        ("id", "question", "options", "answer", "question_type", "image_1"), MMMU_IMAGE_COLUMNS[1:] + ("subfield",),
    ),
    "mmstar": BenchmarkFiles(
        "MMStar", ("mmstar.parquet", "mmstar/val/*.parquet", "val/*.parquet"), "Lin-Chen/MMStar", "val",
        ("index", "question", "image", "answer", "category", "l2_category"),
    ),
    "ai2d": BenchmarkFiles("ai2d", ("data/test-*.parquet", "default/test/*.parquet"), "lmms-lab/ai2d", "test", ("question", "options", "answer", "image")),
    # Optional benchmarks (EVAL.md)
    "mathverse": BenchmarkFiles(
        "MathVerse", ("testmini.parquet", "testmini/testmini/*.parquet"), "CaraJ/MathVerse-lmmseval", "testmini",
        ("sample_index", "problem_version", "question", "image", "answer", "question_type", "query_wo"),
    ),
    "mmmu_pro_standard": BenchmarkFiles(
        "MMMU_Pro", ("standard (10 options)/test-*.parquet", "standard (10 options)/test/*.parquet"), "MMMU/MMMU_Pro (config 'standard (10 options)')", "test",
        ("id", "question", "options", "answer", "image_1"), MMMU_IMAGE_COLUMNS[1:] + ("subject",),
    ),
    "mmmu_pro_vision": BenchmarkFiles(
        "MMMU_Pro", ("vision/test-*.parquet", "vision/test/*.parquet"), "MMMU/MMMU_Pro (config vision)", "test",
        ("id", "image", "options", "answer"), ("subject",),
    ),
    "mmiq": BenchmarkFiles(
        "MM-IQ", ("test-*.parquet", "data/test-*.parquet", "default/test/*.parquet"), "huanqia/MM-IQ", "test",
        ("question", "image", "answer", "category"), ("data_id",),
    ),
    "m3cot": BenchmarkFiles(
        "M3CoT", ("data/test-*.parquet", "default/test/*.parquet"), "LightChen2333/M3CoT", "test",
        ("question", "choices", "answer", "image"), ("id", "context", "domain"),
    ),
    # JSON lines and an image folder (or the zip it comes in), not parquet: `load_mm_math`.
    "mm_math": BenchmarkFiles(
        "MM_Math", ("MM_Math.jsonl", "*.jsonl"), "THU-KEG/MM_Math", "train",
        ("question", "file_name", "solution"), ("year", "difficult", "knowledge"),
    ),
}


def expected_layout(name: str) -> str:
    spec = FILES[name]
    return f"{spec.folder}/{spec.patterns[0]}  ({spec.hf_dataset}, split {spec.split})"


# ----------------------------------------------------------------------------------------------
# Reading parquet


def find_benchmark_files(name: str, data_root: str | Path) -> list[Path]:
    """The sorted parquet files of benchmark `name` under `data_root`, or an error saying where they
    were looked for and how to get them."""
    spec = FILES[name]
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise BenchmarkDataError(f"--data-root {root} is not a directory")
    folders = [p for p in root.iterdir() if p.is_dir() and p.name.lower() == spec.folder.lower()]
    download = (
        f"download it with `hf download {spec.hf_dataset.split(' ')[0]} --repo-type dataset "
        f"--local-dir {root / spec.folder}`"
    )
    if not folders:
        raise BenchmarkDataError(f"{name}: no folder {root / spec.folder} (expected {expected_layout(name)}); {download}")
    folder = sorted(folders)[0]
    for pattern in spec.patterns:
        files = sorted(folder.glob(pattern))
        if files:
            return files
    tried = ", ".join(str(folder / p) for p in spec.patterns)
    raise BenchmarkDataError(f"{name}: no parquet file matches {tried} (expected {expected_layout(name)}); {download}")


def read_rows(name: str, data_root: str | Path) -> list[tuple[str, dict]]:
    """Every row of the benchmark's files as `(where, row)`, `where` = "file row N" for errors.
    Only the needed columns are read; a file missing a required column is an error listing them."""
    import pyarrow.parquet as pq

    spec = FILES[name]
    rows = []
    for path in find_benchmark_files(name, data_root):
        try:
            names = pq.read_schema(path).names
        except Exception as e:  # pyarrow raises several types for a broken file
            raise BenchmarkDataError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from None
        missing = [c for c in spec.columns if c not in names]
        if missing:
            raise BenchmarkDataError(
                f"{path}: missing column(s) {missing}; {name} ({spec.hf_dataset}, split {spec.split}) needs columns "
                f"{list(spec.columns)}; the file has {names}"
            )
        columns = [c for c in spec.columns + spec.optional_columns if c in names]
        for i, row in enumerate(pq.read_table(path, columns=columns).to_pylist()):
            rows.append((f"{path} row {i}", row))
    return rows


def open_image(value: Any, where: str):
    """A PIL image from a `{"bytes", "path"}` struct (or raw bytes); opened lazily, not decoded yet."""
    from PIL import Image, UnidentifiedImageError

    data = value.get("bytes") if isinstance(value, dict) else value
    if not isinstance(data, (bytes, bytearray)) or not data:
        path = value.get("path") if isinstance(value, dict) else None
        raise BenchmarkDataError(
            f"{where}: expected an image struct {{'bytes': <encoded image>, 'path': ...}} with bytes, got "
            f"{type(value).__name__}" + (f" without bytes (path={path!r})" if isinstance(value, dict) else "")
        )
    try:
        return Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError) as e:
        raise BenchmarkDataError(f"{where}: the image bytes are not a readable image ({e})") from None


def _is_missing(value: Any) -> bool:
    """None, NaN, or the string "nan" (how MMBench's TSV-born parquet writes an absent hint/option)."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and value.strip().lower() in ("", "nan"))


def _text(row: dict, column: str, where: str) -> str:
    value = row.get(column)
    if value is None:
        raise BenchmarkDataError(f"{where}: column '{column}' is empty; expected text")
    return str(value)


def _int(row: dict, column: str, where: str) -> int:
    value = row.get(column)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BenchmarkDataError(f"{where}: column '{column}' is {value!r}; expected an integer") from None


def _options_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise BenchmarkDataError(f"{where}: expected a list of option strings, got {type(value).__name__}")
    return [str(v) for v in value]


# ----------------------------------------------------------------------------------------------
# One loader per benchmark


def load_mathvista(data_root: str | Path, name: str = "mathvista") -> list[EvalItem]:
    """MathVista testmini. `answer` is the choice TEXT for multi_choice, else the value as text;
    `precision` (float digits) and the types go to `meta`."""
    items = []
    for where, row in read_rows(name, data_root):
        question_type = _text(row, "question_type", where)
        choices = _options_list(row.get("choices"), where + " column 'choices'")
        if question_type == "multi_choice" and not choices:
            raise BenchmarkDataError(f"{where}: question_type is multi_choice but column 'choices' is empty")
        question = _text(row, "question", where).strip()
        if not _is_missing(row.get("unit")):
            question += f" (Unit: {row['unit']})"
        precision = row.get("precision")
        items.append(
            EvalItem(
                benchmark=name,
                item_id=_text(row, "pid", where),
                question=question,
                images=[open_image(row["decoded_image"], where + " column 'decoded_image'")],
                options=choices if question_type == "multi_choice" else [],
                answer=_text(row, "answer", where),
                multiple_choice=question_type == "multi_choice",
                meta={
                    "question_type": question_type,
                    "answer_type": _text(row, "answer_type", where),
                    "precision": None if _is_missing(precision) else float(precision),
                    # MathVista's own prompt (hint, question, choices): the local extractor shows it.
                    "query": None if _is_missing(row.get("query")) else str(row["query"]),
                },
                source=where,
            )
        )
    return items


def load_mathvision(data_root: str | Path, name: str = "mathvision") -> list[EvalItem]:
    """MathVision. `options` may be empty (free-form); `answer` is a letter or a value."""
    items = []
    for where, row in read_rows(name, data_root):
        options = _options_list(row.get("options"), where + " column 'options'")
        items.append(
            EvalItem(
                benchmark=name,
                item_id=_text(row, "id", where),
                question=_text(row, "question", where).strip(),
                images=[open_image(row["decoded_image"], where + " column 'decoded_image'")],
                options=options,
                answer=_text(row, "answer", where).strip(),
                multiple_choice=bool(options),
                meta={"subject": row.get("subject"), "level": row.get("level")},
                source=where,
            )
        )
    return items


def load_mmbench(data_root: str | Path, name: str = "mmbench") -> list[EvalItem]:
    """MMBench en dev, every row (circular rotations included). `question` = hint + question as
    lmms-eval joins them; the options are columns A–E that are present; `answer` is a letter."""
    items = []
    for where, row in read_rows(name, data_root):
        options = []
        for letter in "ABCDE":
            if _is_missing(row.get(letter)):
                break
            options.append(str(row[letter]))
        if len(options) < 2:
            raise BenchmarkDataError(f"{where}: expected at least options A and B, got {options}")
        answer = _text(row, "answer", where).strip().upper()
        if answer not in letters_for(len(options)):
            raise BenchmarkDataError(f"{where}: column 'answer' is {answer!r}; expected one of {letters_for(len(options))}")
        question = _text(row, "question", where).strip()
        hint = row.get("hint")
        if not _is_missing(hint):
            question = f"{str(hint).strip()} {question}"
        index = _int(row, "index", where)
        items.append(
            EvalItem(
                benchmark=name,
                item_id=str(index),
                question=question,
                images=[open_image(row["image"], where + " column 'image'")],
                options=options,
                answer=answer,
                multiple_choice=True,
                meta={
                    "index": index,
                    "group": str(index % MMBENCH_CIRCULAR_BASE),
                    "category": row.get("category"),
                    "l2_category": row.get("L2-category"),
                },
                source=where,
            )
        )
    return items


_IMAGE_TOKEN = re.compile(r"<image (\d+)>")


def _referenced_images(row: dict, text: str, where: str) -> list:
    """The images a question names (`<image k>` → column `image_k`), in order of k (lmms-eval's order)."""
    images = []
    for k in sorted({int(k) for k in _IMAGE_TOKEN.findall(text)}):
        column = f"image_{k}"
        if row.get(column) is None:
            raise BenchmarkDataError(f"{where}: the question names <image {k}> but column '{column}' is missing or empty")
        images.append(open_image(row[column], f"{where} column '{column}'"))
    return images


def _parse_options(row: dict, where: str) -> list[str]:
    try:
        return parse_options_literal(row.get("options"), f"{where} column 'options'")
    except ValueError as e:
        raise BenchmarkDataError(str(e)) from None


def load_mmmu(data_root: str | Path, name: str = "mmmu") -> list[EvalItem]:
    """MMMU validation. `options` is a string holding a Python list, read with `ast.literal_eval`
    (never `eval`). The images are those the question and options name (`<image k>` → `image_k`),
    in order of k, as lmms-eval passes them; the `<image k>` markers stay in the text."""
    items = []
    for where, row in read_rows(name, data_root):
        options = _parse_options(row, where)
        question = _text(row, "question", where).strip()
        question_type = _text(row, "question_type", where)
        items.append(
            EvalItem(
                benchmark=name,
                item_id=_text(row, "id", where),
                question=question,
                images=_referenced_images(row, question + " " + " ".join(options), where),
                options=options,
                answer=_text(row, "answer", where).strip(),
                multiple_choice=question_type == "multiple-choice",
                meta={"question_type": question_type, "subfield": row.get("subfield")},
                source=where,
            )
        )
    return items


def load_mmstar(data_root: str | Path, name: str = "mmstar") -> list[EvalItem]:
    """MMStar val. The options are written inside `question`; `answer` is a letter A–D."""
    items = []
    for where, row in read_rows(name, data_root):
        answer = _text(row, "answer", where).strip().upper()
        if answer not in "ABCD" or len(answer) != 1:
            raise BenchmarkDataError(f"{where}: column 'answer' is {answer!r}; expected one of A, B, C, D")
        items.append(
            EvalItem(
                benchmark=name,
                item_id=str(_int(row, "index", where)),
                question=_text(row, "question", where).strip(),
                images=[open_image(row["image"], where + " column 'image'")],
                options=[],
                answer=answer,
                multiple_choice=True,
                meta={"category": row.get("category"), "l2_category": row.get("l2_category")},
                source=where,
            )
        )
    return items


def load_ai2d(data_root: str | Path, name: str = "ai2d") -> list[EvalItem]:
    """AI2D test. `answer` in the file is the option index ("0"–"3"); the item's `answer` is its
    letter. The dataset has no id column, so the id is the row number over the sorted files."""
    items = []
    for number, (where, row) in enumerate(read_rows(name, data_root)):
        options = _options_list(row.get("options"), where + " column 'options'")
        letter = ai2d_letter(row.get("answer"), len(options))
        if letter is None:
            raise BenchmarkDataError(
                f"{where}: column 'answer' is {row.get('answer')!r}; expected an option index \"0\"–\"{len(options) - 1}\""
            )
        items.append(
            EvalItem(
                benchmark=name,
                item_id=str(number),
                question=_text(row, "question", where).strip(),
                images=[open_image(row["image"], where + " column 'image'")],
                options=options,
                answer=letter,
                multiple_choice=True,
                meta={"answer_index": int(str(row["answer"]).strip())},
                source=where,
            )
        )
    return items


# ----------------------------------------------------------------------------------------------
# Optional benchmarks


def load_mathverse(data_root: str | Path, name: str = "mathverse") -> list[EvalItem]:
    """MathVerse testmini (all five problem versions). The options, when any, are inside `question`;
    `query_wo` (lmms-eval's prompt) is kept for the direct prompt. A row without image bytes (a
    text-only version) gets no image."""
    items = []
    for where, row in read_rows(name, data_root):
        image = row.get("image")
        has_image = bool(image.get("bytes")) if isinstance(image, dict) else bool(image) and isinstance(image, (bytes, bytearray))
        question_type = _text(row, "question_type", where)
        items.append(
            EvalItem(
                benchmark=name,
                item_id=str(row["sample_index"]),
                question=_text(row, "question", where).strip(),
                images=[open_image(image, where + " column 'image'")] if has_image else [],
                options=[],
                answer=_text(row, "answer", where).strip(),
                multiple_choice=question_type == "multi-choice",
                meta={"question_type": question_type, "problem_version": row.get("problem_version"), "query_wo": _text(row, "query_wo", where)},
                source=where,
            )
        )
    return items


MMMU_PRO_VISION_QUESTION = "Answer the question shown in the image."  # the thinking prompt's question


def load_mmmu_pro(data_root: str | Path, name: str = "mmmu_pro") -> list[EvalItem]:
    """MMMU-Pro test, both settings: `standard (10 options)` (as MMMU, up to 10 options) and `vision`
    (the question and options exist only inside the screenshot, so the item has no `options` a
    prompt could show; the file's option texts go to `meta["options"]` for the scorer; `answer` is a
    letter). Ids are prefixed with the setting; `meta["setting"]` tells the scorer which rule to use."""
    items = []
    for where, row in read_rows("mmmu_pro_standard", data_root):
        options = _parse_options(row, where)
        question = _text(row, "question", where).strip()
        items.append(
            EvalItem(
                benchmark=name,
                item_id="standard:" + _text(row, "id", where),
                question=question,
                images=_referenced_images(row, question + " " + " ".join(options), where),
                options=options,
                answer=_text(row, "answer", where).strip(),
                multiple_choice=True,
                meta={"setting": "standard", "group": _text(row, "id", where), "question_type": "multiple-choice", "subject": row.get("subject")},
                source=where,
            )
        )
    for where, row in read_rows("mmmu_pro_vision", data_root):
        items.append(
            EvalItem(
                benchmark=name,
                item_id="vision:" + _text(row, "id", where),
                question=MMMU_PRO_VISION_QUESTION,
                images=[open_image(row["image"], where + " column 'image'")],
                options=[],
                answer=_text(row, "answer", where).strip(),
                multiple_choice=True,
                meta={"setting": "vision", "group": _text(row, "id", where), "subject": row.get("subject"),
                      "options": _parse_options(row, where)},
                source=where,
            )
        )
    return items


def load_mmiq(data_root: str | Path, name: str = "mmiq") -> list[EvalItem]:
    """MM-IQ test. The choices are drawn inside the image; `answer` is a letter A–E."""
    items = []
    for number, (where, row) in enumerate(read_rows(name, data_root)):
        answer = _text(row, "answer", where).strip().upper()
        if len(answer) != 1 or answer not in "ABCDE":
            raise BenchmarkDataError(f"{where}: column 'answer' is {answer!r}; expected one of A, B, C, D, E")
        item_id = row.get("data_id")
        items.append(
            EvalItem(
                benchmark=name,
                item_id=str(item_id if item_id is not None else number),
                question=_text(row, "question", where).strip(),
                images=[open_image(row["image"], where + " column 'image'")],
                options=[],
                answer=answer,
                multiple_choice=True,
                meta={"category": row.get("category")},
                source=where,
            )
        )
    return items


def load_m3cot(data_root: str | Path, name: str = "m3cot") -> list[EvalItem]:
    """M3CoT test. `choices` are lettered A, B, ...; a non-empty `context` goes after the question."""
    items = []
    for number, (where, row) in enumerate(read_rows(name, data_root)):
        options = _options_list(row.get("choices"), where + " column 'choices'")
        answer = _text(row, "answer", where).strip().upper()
        if answer not in letters_for(len(options)) or len(answer) != 1:
            raise BenchmarkDataError(f"{where}: column 'answer' is {answer!r}; expected one of {letters_for(len(options))}")
        question = _text(row, "question", where).strip()
        if not _is_missing(row.get("context")):
            question += f"\nContext: {str(row['context']).strip()}"
        item_id = row.get("id")
        items.append(
            EvalItem(
                benchmark=name,
                item_id=str(item_id if item_id is not None else number),
                question=question,
                images=[open_image(row["image"], where + " column 'image'")],
                options=options,
                answer=answer,
                multiple_choice=True,
                meta={"domain": row.get("domain")},
                source=where,
            )
        )
    return items


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp")


class ImageFinder:
    """MM-Math's images by file name: `folder/name`, else any file of that name under `folder`, else a
    member of that name in a `.zip` under `folder` (the download is `Image.zip`; unzipping is optional).
    The folder is indexed once, on the first name not found directly."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.files: Optional[dict[str, Path]] = None
        self.zip_members: dict[str, tuple[Path, str]] = {}
        self.archives: dict[Path, Any] = {}  # zip files kept open: one central-directory read each

    def index(self) -> None:
        import zipfile

        self.files = {}
        for path in sorted(self.folder.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                self.files.setdefault(path.name, path)
            elif path.suffix.lower() == ".zip" and path.is_file():
                try:
                    with zipfile.ZipFile(path) as archive:
                        for member in archive.namelist():
                            if Path(member).suffix.lower() in IMAGE_SUFFIXES:
                                self.zip_members.setdefault(Path(member).name, (path, member))
                except zipfile.BadZipFile:
                    raise BenchmarkDataError(f"{path}: not a readable zip file") from None

    def read(self, name: str, where: str) -> bytes:
        import zipfile

        direct = self.folder / name
        if direct.is_file():
            return direct.read_bytes()
        if self.files is None:
            self.index()
        base = Path(name).name
        if base in self.files:
            return self.files[base].read_bytes()
        if base in self.zip_members:
            archive, member = self.zip_members[base]
            if archive not in self.archives:
                self.archives[archive] = zipfile.ZipFile(archive)
            return self.archives[archive].read(member)
        raise BenchmarkDataError(
            f"{where}: image {name!r} (column 'file_name') is neither under {self.folder} nor in a .zip there; "
            f"download and unzip THU-KEG/MM_Math's image archive into {self.folder}"
        )


def read_jsonl_rows(name: str, data_root: str | Path) -> tuple[Path, list[tuple[str, dict]]]:
    """The benchmark's folder and every line of its JSON-lines file(s) as `(where, row)`; a line that
    is not a JSON object, or lacks a required key, is an error naming file, line and key."""
    spec = FILES[name]
    rows = []
    files = find_benchmark_files(name, data_root)
    for path in files:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path} line {number}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise BenchmarkDataError(f"{where}: not a JSON object ({e})") from None
                if not isinstance(row, dict):
                    raise BenchmarkDataError(f"{where}: expected a JSON object, got {type(row).__name__}")
                missing = [c for c in spec.columns if c not in row]
                if missing:
                    raise BenchmarkDataError(f"{where}: missing key(s) {missing}; {name} ({spec.hf_dataset}) needs {list(spec.columns)}")
                rows.append((where, row))
    return files[0].parent, rows


def load_mm_math(data_root: str | Path, name: str = "mm_math") -> list[EvalItem]:
    """MM-Math (THU-KEG/MM_Math: `MM_Math.jsonl` + images). Every question is open-ended; `answer` is
    the `\\boxed{}` content of the reference `solution` (several boxes joined by ","; "" when it has
    none, which the authors' scorer never counts right). The file has no id: the id is the row number.
    `file_name` may name one image or a list of them."""
    folder, rows = read_jsonl_rows(name, data_root)
    while folder.name.lower() != FILES[name].folder.lower() and folder != folder.parent:
        folder = folder.parent  # a jsonl found in a sub-folder: images are looked up from the benchmark folder
    finder = ImageFinder(folder)
    items = []
    for number, (where, row) in enumerate(rows):
        names = row["file_name"] if isinstance(row["file_name"], list) else [row["file_name"]]
        names = [str(n) for n in names if n is not None and str(n).strip()]
        images = [open_image({"bytes": finder.read(n, where)}, f"{where} image {n!r}") for n in names]
        items.append(
            EvalItem(
                benchmark=name,
                item_id=str(number),
                question=_text(row, "question", where).strip(),
                images=images,
                options=[],
                answer=all_boxed(_text(row, "solution", where)) or "",
                multiple_choice=False,
                meta={"difficulty": row.get("difficult"), "grade": row.get("year"), "file_name": names},
                source=where,
            )
        )
    return items


def check_unique_ids(name: str, items: Sequence[EvalItem]) -> None:
    """Predictions are cached and gathered by item id, so two items with one id would share one answer."""
    seen, duplicates = set(), []
    for item in items:
        if item.item_id in seen:
            duplicates.append(f"{item.item_id!r} ({item.source})")
        seen.add(item.item_id)
    if duplicates:
        raise BenchmarkDataError(f"{name}: duplicate item ids: {'; '.join(duplicates[:5])}; expected one row per id (is a file there twice?)")


def limit_items(items: Sequence[EvalItem], limit: Optional[int]) -> list[EvalItem]:
    """The first `limit` questions. Items sharing `meta["group"]` count as one question and stay
    together: MMBench's rotations (so circular accuracy is defined on the subset), MMMU-Pro's two
    settings of one question."""
    if limit is None:
        return list(items)
    kept, groups = [], set()
    for item in items:
        group = item.meta.get("group", item.item_id)
        if group not in groups:
            if len(groups) >= limit:
                continue
            groups.add(group)
        kept.append(item)
    return kept
