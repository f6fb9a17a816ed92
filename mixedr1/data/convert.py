"""Convert the paper's source datasets into the project's JSONL records (docs/method.md §1).

    python -m mixedr1.data.convert --source NAME --in DIR --out FILE.jsonl --images DIR \\
        [--image-root DIR] [--files GLOB ...] [--limit N] [--id-prefix TEXT]

Reads the files a source's public release ships under --in (the converter's default glob patterns, or
--files), converts every row with the source's function in `CONVERTERS`, and writes:

- `FILE.jsonl`: one record per converted row, in file and row order. Image paths are relative to
  FILE's folder, the data root of `mixedr1.data.dataset.load_records` and of the data engine, so
  --images must lie inside that folder.
- `--images DIR`: every image once, named by the SHA-256 of its bytes (`DIR/ab/abcdef….png`): images
  stored inside parquet are written out, images the release ships as files (CLEVR, COCO, ALLaVA) are
  copied, and a rerun, or another source with the same picture, writes nothing new.
- `FILE.skipped.jsonl`: every row that was not converted (file, row, field, kind, reason);
  `FILE.report.json`: the counts (rows read, records, images written, skipped by kind) and the settings;
  it is written last, so its presence means the conversion finished (`experiments/build_mixed45k.py`
  skips a source whose report has the same settings).

Answers follow the schema: yes/no as `yes` / `no` (from booleans, 0/1 labels, `True`/`False`, or text);
multiple choice as the option letter with the options list (from an index, a letter, or the option's
text; options lettered in the question text are moved to `options`); chart answers as the source's
text (numbers are never re-formatted); boxes as [x1, y1, x2, y2] in the original image's pixels
(COCO's [x, y, w, h] converted). A row is skipped, never guessed, when its answer does not fit its type
(e.g. CLEVR's colour and count questions for yes/no), its image is missing or unreadable (checked with
the loader's own `image_problem`), or its id repeats.

The sources and the public layout each converter reads (`--in` is the folder holding it):

| --source    | type       | layout (card or repository followed)                                    | confirmed |
|-------------|------------|--------------------------------------------------------------------------|-----------|
| mapqa       | yorn       | LLaVA-OneVision-Data `MapQA(MathV360K)` parquet: id, image, conversations | columns yes, text no |
| clevr       | yorn       | CLEVR v1.0 release: questions/CLEVR_<split>_questions.json, images/<split>/ | yes |
| figureqa    | yorn       | FigureQA release (Maluuba): <split>/qa_pairs.json, <split>/png/<i>.png     | yes |
| vsr         | yorn       | cambridgeltl/vsr_random (or vsr_zeroshot) jsonl: image, caption, label; COCO images | yes |
| geoqa       | mcq        | LLaVA-OneVision-Data `GeoQA+(MathV360K)` parquet: id, image, conversations | columns yes, text no |
| unigeo      | mcq        | LLaVA-OneVision-Data `UniGeo(MathV360K)` parquet: id, image, conversations | columns yes, text no |
| ai2d        | mcq        | AI2D release (allenai): questions/<image>.json, images/, ai2d_test_ids.csv | yes |
| scienceqa   | mcq        | derek-thomas/ScienceQA parquet: image, question, choices, answer, hint    | yes |
| chartqa     | chart      | HuggingFaceM4/ChartQA parquet: image, query, label, human_or_machine      | yes |
| docvqa      | chart      | lmms-lab/DocVQA `DocVQA` config parquet: questionId, question, image, answers | yes |
| infovqa     | chart      | lmms-lab/DocVQA `InfographicVQA` config parquet: questionId, question, image, answers | yes |
| multihiertt | chart      | LLaVA-OneVision-Data `multihiertt(cauldron)` parquet: id, image, conversations | columns yes, text no |
| refcocog    | grounding  | jxu124/refcocog parquet (raw_anns, sentences, image_path; COCO train2014) or lmms-lab/RefCOCOg (image, answer, bbox) | yes |
| allava      | open_ended | FreedomIntelligence/ALLaVA-4V JSON: id, image (path), conversations       | yes |
| r1          | per row    | R1-V / VLM-R1 / EasyR1 lineage: problem + solution/answer + image(s), or conversations | see `r1` |

"Text no": the column schema of LLaVA-OneVision-Data is confirmed from its card; how the MathV360K and
Cauldron subsets word their questions and answers (options as `A.`/`A:`/`(A)` lines, answers as
`B`, `Answer: B`, `The answer is B`) could not be confirmed, so those converters accept each of these
spellings and skip anything else with its reason. GeoQA+ and UniGeo's own releases are pickles
(unsafe to load) with Chinese text, and MultiHiertt's own release has HTML tables and no images, so
their LLaVA-OneVision-Data conversions are read instead.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

from PIL import Image

from mixedr1.config import PROBLEM_TYPES, InputError, run_main
from mixedr1.data.dataset import image_problem, option_letter

# ----------------------------------------------------------------------------------------------
# A row that cannot be converted


class Skip(Exception):
    """One row left out: the field at fault, a short `kind` (counted in the report) and the reason."""

    def __init__(self, field_name: str, kind: str, reason: str):
        super().__init__(reason)
        self.field, self.kind, self.reason = field_name, kind, reason


@dataclass(frozen=True)
class SkippedRow:
    file: str
    row: int  # 1-based row of a parquet file, line of a JSONL file, item of a JSON list; 0 for the whole file
    field: str
    kind: str
    reason: str


def need(row: dict, key: str):
    """`row[key]`, or a `missing_field` skip naming the column."""
    if not isinstance(row, dict) or row.get(key) is None:
        raise Skip(key, "missing_field", f"missing the field {key!r}")
    return row[key]


# ----------------------------------------------------------------------------------------------
# Answer normalisation (pure functions)

_YES, _NO = {"yes", "true"}, {"no", "false"}


def yes_no(value, field_name: str = "answer") -> str:
    """`yes` / `no` from a bool, a 0/1 integer label, or the text yes/no/true/false (any case, a final
    period). The text "0" / "1" is not yes/no (CLEVR's count answers are such text)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and value in (0, 1):
        return "yes" if value else "no"
    if isinstance(value, str):
        text = value.strip().rstrip(".").strip().lower()
        if text in _YES:
            return "yes"
        if text in _NO:
            return "no"
    raise Skip(field_name, "not_yes_no", f"expected a yes/no answer, got {value!r}")


_OPTION_LABEL = re.compile(r"^\s*\(?([A-Z])\s*[.):：]\s+(?=\S)")


def strip_option_label(option: str) -> str:
    """`A. red` / `(A) red` / `A: red` -> `red` (options given already lettered)."""
    return _OPTION_LABEL.sub("", option, count=1).strip()


def letter_for(answer, options: Sequence[str], field_name: str = "answer") -> str:
    """The option letter of `answer`: an index (int or digit string), a letter within the options
    (`B`, `(B)`, `B.`), or the text of one option (case and surrounding space ignored)."""
    n = len(options)
    if isinstance(answer, bool):
        raise Skip(field_name, "bad_answer", f"expected an option index, letter or text, got {answer!r}")
    if isinstance(answer, int):
        if 0 <= answer < n:
            return option_letter(answer)
        raise Skip(field_name, "bad_answer", f"expected an option index 0-{n - 1}, got {answer}")
    if isinstance(answer, str):
        text = answer.strip()
        letter = re.fullmatch(r"\(?([A-Z])\)?\.?", text)  # capitals only: "a" may be an option's text
        if letter and ord(letter.group(1)) - ord("A") < n:
            return letter.group(1)
        if text.isdigit() and int(text) < n:
            return option_letter(int(text))
        folded = [o.strip().casefold() for o in options]
        if text.casefold() in folded:
            return option_letter(folded.index(text.casefold()))
    raise Skip(field_name, "bad_answer", f"expected one of the {n} options (index, letter or text), got {answer!r}")


def answer_text(value, field_name: str = "answer") -> str:
    """A chart / short answer as text: strings stripped, numbers written as the source wrote them
    (an int as digits, a float by Python's shortest repr; never rounded or re-formatted)."""
    if isinstance(value, bool) or value is None:
        raise Skip(field_name, "bad_answer", f"expected a text or number answer, got {value!r}")
    if isinstance(value, (int, float)):
        return str(value) if isinstance(value, int) else repr(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise Skip(field_name, "bad_answer", f"expected a non-empty answer, got {value!r}")


_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_ANSWER_PREFIX = re.compile(r"(?i)\banswer(?:\s+is)?\s*[:：]?\s*")


def short_answer(text: str) -> str:
    """The answer in a model-style reply: the last `<answer>…</answer>`, else what follows `Answer:` /
    `The answer is` on the last line, else the whole text; stripped (a final period is kept: the
    yes/no and letter rules ignore it, and a caption needs it)."""
    tags = _ANSWER_TAG.findall(text)
    if tags:
        text = tags[-1]
    else:
        last = text.strip().split("\n")[-1]
        matches = list(_ANSWER_PREFIX.finditer(last))
        if matches and last[matches[-1].end():].strip():
            text = last[matches[-1].end():]
    return text.strip()


_OPTION_LINE = re.compile(r"^\s*\(?([A-Z])\s*[.):：]\s*(.+?)\s*$")
_CHOICES_HEADER = re.compile(r"(?i)^\s*(?:answer\s+)?(?:choices|options|choice|option)\s*[:：]?\s*$")
_INLINE_CHOICES = re.compile(r"(?i)(?:answer\s+)?(?:choices|options)\s*[:：]\s*")
_INLINE_OPTION = re.compile(r"(?:^|\s)\(?([A-Z])\s*[.):：]\s*")
# Answer-format instructions of the source's own prompt; the project's prompt (docs/method.md §2)
# asks for its own format, so these lines would contradict it.
_INSTRUCTION_LINE = re.compile(
    r"(?i)^\s*(?:first perform reasoning|answer with|answer the question|please answer|please select|"
    r"hint:\s*please answer|select the (?:correct|best) (?:answer|option)|choose the (?:correct|best))"
)


def split_options(text: str) -> tuple[str, list[str]]:
    """(question, options) from a question that letters its options, one per line (`A. …`, `(A) …`,
    `A: …`, after an optional `Choices:` line) or on one line after `Choices:` / `Options:`. The
    options must run A, B, C, … (at least two); answer-format instructions are dropped. No options:
    a `no_options` skip."""
    lines = [line for line in text.split("\n") if not _INSTRUCTION_LINE.match(line)]
    for start, line in enumerate(lines):
        match = _OPTION_LINE.match(line)
        if not match or match.group(1) != "A":
            continue
        options, end = [], start
        while end < len(lines) and (m := _OPTION_LINE.match(lines[end])) and m.group(1) == option_letter(len(options)):
            options.append(m.group(2))
            end += 1
        if len(options) >= 2:
            head = lines[:start]
            if head and _CHOICES_HEADER.match(head[-1]):
                head = head[:-1]
            return "\n".join(head + lines[end:]).strip(), options
    for i, line in enumerate(lines):
        header = _INLINE_CHOICES.search(line)
        if not header:
            continue
        parts = _INLINE_OPTION.split(line[header.end():])  # ['', 'A', 'x', 'B', 'y', ...]
        letters, texts = parts[1::2], [p.strip() for p in parts[2::2]]
        if len(letters) >= 2 and letters == [option_letter(k) for k in range(len(letters))] and all(texts):
            head = lines[:i] + ([line[: header.start()]] if line[: header.start()].strip() else [])
            return "\n".join(head + lines[i + 1 :]).strip(), texts
    raise Skip("question", "no_options", "expected options lettered A, B, … in the question, found none")


def letter_from_reply(reply: str, options: Sequence[str], field_name: str = "answer") -> str:
    """The option letter a reply gives: `B`, `(B)`, `Answer: B`, `The answer is B.`, `<answer>B</answer>`,
    or an option's text."""
    text = short_answer(reply)
    match = re.fullmatch(r"\(?([A-Z])\)?(?:[.:)]\s*.*)?", text, re.S)
    if match and ord(match.group(1)) - ord("A") < len(options):
        return match.group(1)
    return letter_for(text, options, field_name)


def xywh_to_xyxy(box) -> list[float]:
    """COCO's [x, y, width, height] -> [x1, y1, x2, y2] (same pixels)."""
    x, y, w, h = box
    return [x, y, x + w, y + h]


def check_box(box, width: int, height: int, field_name: str = "bbox") -> list[float]:
    """`box` [x1, y1, x2, y2] in pixels of a `width` x `height` image, clipped to the image (COCO boxes
    may overhang by a fraction of a pixel); a box normalised to [0, 1], empty, or mostly outside the
    image is a `bad_box` skip. Whole numbers stay ints in the JSON."""
    try:
        values = [float(v) for v in box]
    except (TypeError, ValueError):
        raise Skip(field_name, "bad_box", f"expected 4 numbers, got {box!r}") from None
    if len(values) != 4 or any(v != v or v in (float("inf"), float("-inf")) for v in values):
        raise Skip(field_name, "bad_box", f"expected 4 finite numbers, got {box!r}")
    x1, y1, x2, y2 = values
    if max(values) <= 1.0 and max(width, height) > 2:
        raise Skip(field_name, "bad_box", f"expected pixels, got {box!r} (normalised to [0, 1]?)")
    if x2 > width * 1.05 + 1 or y2 > height * 1.05 + 1 or x1 < -1 or y1 < -1:
        raise Skip(field_name, "bad_box", f"box {box!r} lies outside the {width}x{height} image")
    clipped = [max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2)]
    if not (clipped[0] < clipped[2] and clipped[1] < clipped[3]):
        raise Skip(field_name, "bad_box", f"expected x1 < x2 and y1 < y2, got {box!r}")
    return [int(v) if v.is_integer() else round(v, 2) for v in clipped]


def first_exchange(conversations, field_name: str = "conversations") -> tuple[str, str]:
    """(question, reply) of the first user/assistant turns of a LLaVA-style conversation: turns are
    {"from": "human"|"gpt", "value": …} or {"role": "user"|"assistant", "content": …}."""
    if not isinstance(conversations, list):
        raise Skip(field_name, "missing_field", f"expected a list of turns, got {type(conversations).__name__}")
    question = reply = None
    for turn in conversations:
        if not isinstance(turn, dict):
            continue
        who = str(turn.get("from", turn.get("role", ""))).lower()
        text = turn.get("value", turn.get("content"))
        if not isinstance(text, str):
            continue
        if question is None and who in ("human", "user"):
            question = text
        elif question is not None and who in ("gpt", "assistant"):
            reply = text
            break
    if question is None or reply is None or not reply.strip():
        raise Skip(field_name, "missing_field", "expected a user turn followed by an assistant turn")
    return question, reply


def clean_question(text: str) -> str:
    """The question without image placeholders (`<image>`) and surrounding blank space."""
    return re.sub(r"<image>\s*", "", text).strip()


# ----------------------------------------------------------------------------------------------
# Writing images and records


IMAGE_SUFFIX = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif", "MPO": "jpg"}


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from an image's header."""
    with Image.open(io.BytesIO(data)) as image:
        return image.size


class Context:
    """What a converter needs besides its row: storing images, naming records, the source's folder."""

    def __init__(self, name: str, source: str, in_dir: Path, image_root: Path, images_dir: Path, data_root: Path, id_prefix: str):
        self.name, self.source, self.in_dir, self.image_root = name, source, in_dir, image_root
        self.images_dir, self.data_root, self.id_prefix = images_dir, data_root, id_prefix
        self.stored: dict[str, str] = {}  # sha256 -> path relative to the data root
        self.images_written = 0
        self.cache: dict[str, Any] = {}  # per-source lookups (e.g. AI2D's test ids), read once

    def image_bytes(self, value, field_name: str = "image") -> bytes:
        """The bytes of an image given as parquet's {"bytes", "path"} struct, raw bytes, or a path
        relative to the image root (or a list of such paths: the first that exists)."""
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if isinstance(value, dict):
            if value.get("bytes"):
                return bytes(value["bytes"])
            value = value.get("path")
        candidates = value if isinstance(value, list) else [value]
        if not candidates or not all(isinstance(c, str) and c for c in candidates):
            raise Skip(field_name, "no_image", f"expected image bytes or a path, got {value!r}")
        root = self.image_root.resolve()
        for rel in candidates:
            full = (root / rel).resolve()
            if not full.is_relative_to(root):
                raise Skip(field_name, "bad_image", f"image path {rel!r} leaves the image root {root}")
            if full.is_file():
                return full.read_bytes()
        raise Skip(field_name, "no_image", f"image file not found under {root}: {' or '.join(candidates)}")

    def store(self, data: bytes, field_name: str = "image") -> str:
        """Write `data` once, named by its SHA-256; its path relative to the data root. An image the
        loader would refuse (`image_problem`) is a `bad_image` skip and is not kept."""
        digest = hashlib.sha256(data).hexdigest()
        if digest in self.stored:
            return self.stored[digest]
        try:
            with Image.open(io.BytesIO(data)) as image:
                suffix = IMAGE_SUFFIX.get(image.format or "", (image.format or "img").lower())
        except Exception as e:  # whatever PIL raises for bytes that are not an image
            raise Skip(field_name, "bad_image", f"expected an image PIL reads, got {type(e).__name__}: {e}") from None
        path = self.images_dir / digest[:2] / f"{digest}.{suffix}"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(data)
            problem = image_problem(tmp)
            if problem is not None:
                tmp.unlink()
                raise Skip(field_name, "bad_image", problem)
            os.replace(tmp, path)
            self.images_written += 1
        self.stored[digest] = path.relative_to(self.data_root).as_posix()
        return self.stored[digest]

    def record(self, key, problem_type: str, question: str, answer, images: Sequence,
               options: Optional[Sequence[str]] = None, source: Optional[str] = None) -> dict:
        """One record; its images are stored last, so a row skipped for its answer writes no image."""
        question = clean_question(question if isinstance(question, str) else "")
        if not question:
            raise Skip("question", "missing_field", "expected a non-empty question")
        if options is not None:
            options = [o.strip() for o in options]
            if len(options) < 2 or len(options) > 26 or not all(options):
                raise Skip("options", "bad_options", f"expected 2-26 non-empty options, got {options!r}")
        if not images:
            raise Skip("image", "no_image", "expected at least one image")
        paths = [self.store(v if isinstance(v, bytes) else self.image_bytes(v)) for v in images]
        out = {"id": f"{self.id_prefix}-{key}", "problem_type": problem_type, "question": question}
        if options is not None:
            out["options"] = list(options)
        out.update(answer=answer, images=paths, source=source or self.source)
        return out


# ----------------------------------------------------------------------------------------------
# The registry: one function per source, from a row to its records


@dataclass(frozen=True)
class Converter:
    function: Callable[[dict, Context], list[dict]]
    source: str  # the records' `source`
    files: tuple[str, ...]  # default glob patterns under --in
    rows: Callable[[Any], Iterable[dict]]  # the rows of one decoded .json file


def list_rows(obj) -> Iterable[dict]:
    if isinstance(obj, list):
        return obj
    raise Skip("<file>", "bad_file", f"expected a JSON list of rows, got {type(obj).__name__}")


CONVERTERS: dict[str, Converter] = {}


def converter(name: str, source: str, files: Sequence[str], rows: Callable[[Any], Iterable[dict]] = list_rows):
    def register(function):
        CONVERTERS[name] = Converter(function, source, tuple(files), rows)
        return function
    return register


# --- yes/no ------------------------------------------------------------------------------------


@converter("mapqa", "MapQA", ["**/*.parquet"])
def mapqa(row: dict, ctx: Context) -> list[dict]:
    """LLaVA-OneVision-Data `MapQA(MathV360K)` (lmms-lab/LLaVA-OneVision-Data card: id, image,
    conversations [{from, value}], data_source). Only yes/no questions ("Does … have the highest
    value?"); the rest of MapQA (state names, value ranges) is not yes/no and is skipped."""
    question, reply = first_exchange(need(row, "conversations"))
    answer = yes_no(short_answer(reply), "conversations")
    return [ctx.record(need(row, "id"), "yorn", question, answer, [need(row, "image")])]


@converter("clevr", "CLEVR", ["questions/CLEVR_train_questions.json"], rows=lambda obj: need(obj, "questions"))
def clevr(row: dict, ctx: Context) -> list[dict]:
    """CLEVR v1.0 (cs.stanford.edu/people/jcjohns/clevr; files as its zip lays them out:
    questions/CLEVR_<split>_questions.json = {"questions": [{image_filename, question, answer, split,
    question_index, …}]}, images/<split>/<image_filename>). Only yes/no answers; counts, colours,
    shapes, sizes and materials are skipped (`not_yes_no`)."""
    answer = yes_no(need(row, "answer"))
    split = need(row, "split")
    image = f"images/{split}/{need(row, 'image_filename')}"
    return [ctx.record(f"{split}-{need(row, 'question_index')}", "yorn", need(row, "question"), answer, [image])]


@converter("figureqa", "FigureQA", ["qa_pairs.json"], rows=lambda obj: need(obj, "qa_pairs"))
def figureqa(row: dict, ctx: Context) -> list[dict]:
    """FigureQA (Maluuba release, github.com/Maluuba/FigureQA; as allenai/molmo's builder reads it):
    <split>/qa_pairs.json = {"qa_pairs": [{image_index, question_id, question_string, answer: 0|1,
    …}]}, images <split>/png/<image_index>.png; --in is the split folder (e.g. train1)."""
    index = need(row, "image_index")
    answer = yes_no(need(row, "answer"))
    return [ctx.record(f"{index}-{need(row, 'question_id')}", "yorn", need(row, "question_string"), answer,
                       [f"png/{index}.png"])]


@converter("vsr", "VSR", ["train.jsonl"])
def vsr(row: dict, ctx: Context) -> list[dict]:
    """Visual Spatial Reasoning (cambridgeltl/vsr_random and vsr_zeroshot cards: train/dev/test.jsonl
    with image, image_link, caption, label 0|1, relation, subj, obj). The images are COCO 2017's,
    not in the release: --image-root is the folder holding them (as <image>, train2017/<image> or
    val2017/<image>). The caption becomes a true/false question."""
    answer = yes_no(need(row, "label"), "label")
    name = need(row, "image")
    caption = need(row, "caption").strip()
    question = f"Is the following statement about the image true? {caption}"
    return [ctx.record(row["_key"], "yorn", question, answer, [[name, f"train2017/{name}", f"val2017/{name}"]])]


# --- multiple choice ---------------------------------------------------------------------------


def _conversation_mcq(row: dict, ctx: Context) -> list[dict]:
    question, reply = first_exchange(need(row, "conversations"))
    question, options = split_options(clean_question(question))
    letter = letter_from_reply(reply, options, "conversations")
    return [ctx.record(need(row, "id"), "mcq", question, letter, [need(row, "image")], options=options)]


@converter("geoqa", "GeoQA+", ["**/*.parquet"])
def geoqa(row: dict, ctx: Context) -> list[dict]:
    """LLaVA-OneVision-Data `GeoQA+(MathV360K)` (lmms-lab/LLaVA-OneVision-Data card: id, image,
    conversations, data_source): the options lettered in the question, the letter in the reply."""
    return _conversation_mcq(row, ctx)


@converter("unigeo", "UniGeo", ["**/*.parquet"])
def unigeo(row: dict, ctx: Context) -> list[dict]:
    """LLaVA-OneVision-Data `UniGeo(MathV360K)`, read as `geoqa`."""
    return _conversation_mcq(row, ctx)


def ai2d_rows(obj) -> Iterator[dict]:
    """One row per question of an AI2D questions file ({"imageName", "questions": {text: {…}}})."""
    for text, data in need(obj, "questions").items():
        yield {"imageName": obj.get("imageName"), "question": text, **(data if isinstance(data, dict) else {})}


def ai2d_test_images(ctx: Context) -> set[str]:
    """Image ids of AI2D's test split (ai2d_test_ids.csv next to the release, if present): the
    benchmark eval.py scores, so they never enter training."""
    if "ai2d_test" not in ctx.cache:
        path = ctx.in_dir / "ai2d_test_ids.csv"
        ids = path.read_text().split() if path.is_file() else []
        ctx.cache["ai2d_test"] = {i.strip().strip(",") for i in ids}
    return ctx.cache["ai2d_test"]


@converter("ai2d", "AI2D", ["questions/*.json"], rows=ai2d_rows)
def ai2d(row: dict, ctx: Context) -> list[dict]:
    """AI2D (allenai release ai2d-all.zip, as allenai/molmo's builder reads it): questions/<image>.json
    = {"imageName", "questions": {text: {answerTexts, correctAnswer, abcLabel, questionId}}}, images/.
    Left out: images listed in ai2d_test_ids.csv (the benchmark's test split), and abcLabel questions,
    which refer to letters drawn over the diagram that the released images do not have. Empty
    options ("{}") and repeated options are dropped (the answer follows its text)."""
    name = need(row, "imageName")
    if Path(name).stem in ai2d_test_images(ctx):
        raise Skip("imageName", "test_split", f"image {name} is in AI2D's test split (ai2d_test_ids.csv)")
    if row.get("abcLabel"):
        raise Skip("abcLabel", "needs_lettered_image", "the question refers to letter labels the released image does not show")
    texts = need(row, "answerTexts")
    correct = need(row, "correctAnswer")
    if not isinstance(correct, int) or not 0 <= correct < len(texts):
        raise Skip("correctAnswer", "bad_answer", f"expected an index into answerTexts, got {correct!r}")
    options = []
    for text in texts:
        if text.strip() not in ("", "{}") and text.strip() not in options:
            options.append(text.strip())
    letter = letter_for(texts[correct].strip(), options, "correctAnswer")
    return [ctx.record(need(row, "questionId"), "mcq", need(row, "question"), letter, [f"images/{name}"], options=options)]


@converter("scienceqa", "ScienceQA", ["**/train-*.parquet"])
def scienceqa(row: dict, ctx: Context) -> list[dict]:
    """ScienceQA (derek-thomas/ScienceQA card; lmms-lab/ScienceQA has the same columns: image, question,
    choices, answer (index), hint, task, grade, subject, …). Image questions only: a row without an
    image is skipped (`text_only`). A non-empty hint (the question's context) precedes the question."""
    image = row.get("image")
    if isinstance(image, dict):
        image = image if image.get("bytes") or image.get("path") else None
    if not image:
        raise Skip("image", "text_only", "a text-only question (only ScienceQA's image questions are used)")
    options = list(need(row, "choices"))
    letter = letter_for(need(row, "answer"), options)
    question = need(row, "question")
    hint = (row.get("hint") or "").strip()
    return [ctx.record(row["_key"], "mcq", f"Context: {hint}\n{question}" if hint else question, letter, [image], options=options)]


# --- chart / document --------------------------------------------------------------------------


@converter("chartqa", "ChartQA", ["**/train-*.parquet"])
def chartqa(row: dict, ctx: Context) -> list[dict]:
    """ChartQA (HuggingFaceM4/ChartQA card: image, query, label [str], human_or_machine). The first
    label is the answer, as written."""
    labels = need(row, "label")
    answer = answer_text(labels[0] if isinstance(labels, list) and labels else labels, "label")
    return [ctx.record(row["_key"], "chart", need(row, "query"), answer, [need(row, "image")])]


def _document_vqa(row: dict, ctx: Context) -> list[dict]:
    answers = [a for a in (row.get("answers") or []) if isinstance(a, str) and a.strip()]
    if not answers:
        raise Skip("answers", "no_answer", "no answer (the test split has none)")
    return [ctx.record(need(row, "questionId"), "chart", need(row, "question"), answer_text(answers[0], "answers"),
                       [need(row, "image")])]


@converter("docvqa", "DocVQA", ["**/train-*.parquet"])
def docvqa(row: dict, ctx: Context) -> list[dict]:
    """DocVQA (lmms-lab/DocVQA card, config DocVQA: questionId, question, question_types, image, docId,
    answers [str], data_split; HuggingFaceM4/DocumentVQA has the train split with these columns). The
    first answer is kept; the chart reward's text fallback scores the others' spellings poorly."""
    return _document_vqa(row, ctx)


@converter("infovqa", "InfoVQA", ["**/train-*.parquet"])
def infovqa(row: dict, ctx: Context) -> list[dict]:
    """InfographicVQA (lmms-lab/DocVQA card, config InfographicVQA: questionId, question, answers,
    answer_type, image, image_url, operation/reasoning, ocr, data_split), read as `docvqa`."""
    return _document_vqa(row, ctx)


@converter("multihiertt", "MultiHiertt", ["**/*.parquet"])
def multihiertt(row: dict, ctx: Context) -> list[dict]:
    """LLaVA-OneVision-Data `multihiertt(cauldron)` (id, image: the rendered tables, conversations).
    The answer is the reply's final `Answer: …` (or the whole short reply); a reply longer than 64
    characters is not a chart answer and is skipped."""
    question, reply = first_exchange(need(row, "conversations"))
    answer = re.sub(r"(?<=\d)\.$", "", short_answer(reply))  # "Answer: 12.5." ends a sentence
    if not answer or len(answer) > 64:
        raise Skip("conversations", "long_answer", f"expected a short answer, got {len(answer)} characters")
    return [ctx.record(need(row, "id"), "chart", question, answer, [need(row, "image")])]


# --- grounding ---------------------------------------------------------------------------------

GROUNDING_QUESTION = "Locate the object described as: {expression}"


@converter("refcocog", "RefCOCOg", ["**/train-*.parquet"])
def refcocog(row: dict, ctx: Context) -> list[dict]:
    """RefCOCOg, one record per referring expression, the box in the original image's pixels.

    - jxu124/refcocog (card: ref_id, sentences [{raw, sent, sent_id, tokens}], raw_anns (the COCO
      annotation as JSON text, bbox [x, y, w, h]), raw_image_info, image_path, file_name, …; images
      not included: --image-root holds COCO, found as image_path, train2014/<name> or <name>);
    - lmms-lab/RefCOCOg (card: question_id, image, question, answer [expressions], bbox [x, y, w, h],
      segmentation, file_name; val/test only, images included).
    """
    if "raw_anns" in row:
        ann = json.loads(need(row, "raw_anns"))
        box, key = need(ann, "bbox"), need(row, "ref_id")
        expressions = [s.get("raw") or s.get("sent") for s in need(row, "sentences") if isinstance(s, dict)]
        path = row.get("image_path") or need(row, "file_name")
        name = Path(path).name
        image = row.get("image") or [path, f"train2014/{name}", name]
    else:
        box, key, expressions, image = need(row, "bbox"), need(row, "question_id"), need(row, "answer"), need(row, "image")
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise Skip("bbox", "bad_box", f"expected [x, y, w, h], got {box!r}")
    data = ctx.image_bytes(image)
    xyxy = check_box(xywh_to_xyxy(box), *image_size(data))
    expressions = [e.strip() for e in expressions if isinstance(e, str) and e.strip()]
    if not expressions:
        raise Skip("sentences", "missing_field", "no referring expression")
    return [ctx.record(f"{key}-{i}", "grounding", GROUNDING_QUESTION.format(expression=e), xyxy, [data])
            for i, e in enumerate(expressions)]


# --- open-ended --------------------------------------------------------------------------------


@converter("allava", "ALLaVA", ["**/ALLaVA-Caption-*.json"])
def allava(row: dict, ctx: Context) -> list[dict]:
    """ALLaVA-4V (FreedomIntelligence/ALLaVA-4V card: allava_laion/ALLaVA-Caption-LAION-4V.json and
    allava_vflan/…: [{id, image: "allava_laion/images/….jpeg", conversations}]; --in is the
    repository root, where the image paths start). The default reads the caption files; add
    --files '**/ALLaVA-Instruct-*.json' for the long answers."""
    question, reply = first_exchange(need(row, "conversations"))
    return [ctx.record(need(row, "id"), "open_ended", question, reply.strip(), [need(row, "image")])]


# --- the R1 lineage ----------------------------------------------------------------------------

# Problem-type names found in the lineage's records (`problem_type`, Video-R1's question types,
# VLM-R1's `accu_reward_method`), mapped to ours.
R1_TYPES = {
    **{t: t for t in PROBLEM_TYPES},
    "yes/no": "yorn", "yes_no": "yorn", "yesno": "yorn",
    "multiple choice": "mcq", "multiple_choice": "mcq", "choice": "mcq",
    "numerical": "chart", "numeric": "chart", "ocr": "chart",
    "iou": "grounding", "rec": "grounding", "bbox": "grounding",
    "open-ended": "open_ended", "free-form": "open_ended", "caption": "open_ended",
}


def parse_box(answer) -> Optional[list]:
    """A box answer: [x1, y1, x2, y2], {"bbox_2d": [...]}, or a one-element list of either, as JSON
    or as text holding that JSON; None when `answer` is not a box."""
    if isinstance(answer, str):
        try:
            answer = json.loads(answer)
        except ValueError:
            match = re.fullmatch(r"\s*\[\s*([-\d.eE+]+)\s*,\s*([-\d.eE+]+)\s*,\s*([-\d.eE+]+)\s*,\s*([-\d.eE+]+)\s*\]\s*", answer)
            return [float(v) for v in match.groups()] if match else None
    if isinstance(answer, list) and len(answer) == 1:
        answer = answer[0]
    if isinstance(answer, dict):
        answer = answer.get("bbox_2d", answer.get("bbox"))
    if isinstance(answer, list) and len(answer) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in answer):
        return answer
    return None


def _r1_question_answer(row: dict) -> tuple[str, Any]:
    if row.get("conversations") is not None:
        question, reply = first_exchange(row["conversations"])
        return question, reply
    question = row.get("problem", row.get("question"))
    if not isinstance(question, str):
        raise Skip("problem", "missing_field", "expected `problem` (or `question`, or `conversations`)")
    for key in ("solution", "answer"):
        if row.get(key) is not None:
            return question, row[key]
    raise Skip("solution", "missing_field", "expected `solution` or `answer`")


@converter("r1", "R1", ["**/*.parquet", "**/*.jsonl", "**/*.json"])
def r1(row: dict, ctx: Context) -> list[dict]:
    """Records of the R1-V / VLM-R1 / EasyR1 lineage, so a mix released in that style loads directly:

    - R1-V (e.g. leonardPKU/clevr_cogen_a_train: image, problem, solution "<answer> 3 </answer>");
    - VLM-R1 jsonl (its README: id, image (path or list), conversations [{from: human, value:
      "<image>…"}, {from: gpt, value}]) and its REC json (image, problem, solution: the box);
    - EasyR1 (e.g. hiyouga/geometry3k card: images [image], problem, answer).

    The answer is the last `<answer>…</answer>` of the solution / reply, else its whole text. The
    type is the row's `problem_type` (or `question_type` / `accu_reward_method`) when it names one
    of `R1_TYPES`, else read off the answer: a box -> grounding; options (an `options` / `choices`
    list, or lettered in the question) -> mcq; yes/no -> yorn; a number -> chart; otherwise
    open_ended. Boxes are taken as the original image's pixels. `source` is the row's `data_source`
    or `source` when it has one."""
    question, solution = _r1_question_answer(row)
    box = parse_box(solution)
    answer = None if box is not None else short_answer(str(solution)) if isinstance(solution, str) else solution
    if box is None and isinstance(answer, str):
        box = parse_box(answer)
    named = next((row[k] for k in ("problem_type", "question_type", "accu_reward_method") if isinstance(row.get(k), str)), None)
    ptype = R1_TYPES.get(named.strip().lower()) if named else None
    if named and ptype is None and named.strip().lower() != "default":
        raise Skip("problem_type", "unknown_type", f"expected one of {sorted(R1_TYPES)}, got {named!r}")
    options = row.get("options", row.get("choices"))
    if isinstance(options, list) and options:
        options = [strip_option_label(str(o)) for o in options]
    elif ptype in (None, "mcq"):
        try:
            question, options = split_options(clean_question(question))
        except Skip:
            if ptype == "mcq":
                raise
            options = None
    else:
        options = None
    if ptype is None:
        is_number = isinstance(answer, (int, float)) or (isinstance(answer, str) and re.fullmatch(r"[-+]?\d[\d,]*(\.\d+)?%?", answer.strip()))
        ptype = ("grounding" if box is not None else "mcq" if options else
                 "yorn" if isinstance(answer, str) and answer.strip().rstrip(".").lower() in ("yes", "no") else
                 "chart" if is_number else "open_ended")
    images = row["images"] if row.get("images") is not None else row.get("image")
    images = images if isinstance(images, list) else [images]
    if not images or any(i is None for i in images):
        raise Skip("image", "no_image", "expected `image` or `images`")
    source = next((row[k] for k in ("data_source", "source") if isinstance(row.get(k), str) and row[k]), None)
    key = row.get("id", row.get("problem_id"))
    key = key if isinstance(key, (str, int)) and not isinstance(key, bool) else row["_key"]
    if ptype == "grounding":
        if box is None:
            raise Skip("solution", "bad_box", f"expected a box [x1, y1, x2, y2], got {solution!r}")
        data = ctx.image_bytes(images[0])
        box = check_box(box, *image_size(data), field_name="solution")
        return [ctx.record(key, ptype, question, box, [data, *images[1:]], source=source)]
    if ptype == "mcq":
        if not options:
            raise Skip("options", "no_options", "an mcq record without options")
        return [ctx.record(key, ptype, question, letter_for(str(answer), options), images, options=options, source=source)]
    if ptype == "yorn":
        return [ctx.record(key, ptype, question, yes_no(answer), images, source=source)]
    return [ctx.record(key, ptype, question, answer_text(answer), images, source=source)]


# ----------------------------------------------------------------------------------------------
# Reading a release's files


def source_files(in_dir: Path, patterns: Sequence[str]) -> list[Path]:
    """The files under `in_dir` matching any pattern, sorted, each once."""
    found = sorted({p for pattern in patterns for p in in_dir.glob(pattern) if p.is_file()})
    if not found:
        raise FileNotFoundError(f"{in_dir}: no file matches {', '.join(patterns)} (pass --files to choose them)")
    return found


def read_rows(path: Path, rows: Callable[[Any], Iterable[dict]]) -> Iterator[tuple[int, Any]]:
    """(row number, row) of a parquet, JSONL or JSON file; a line that is not JSON yields a `Skip`
    in place of its row, a file that cannot be read yields one at row 0."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        number = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=64):
            for row in batch.to_pylist():
                number += 1
                yield number, row
    elif suffix == ".jsonl":
        with open(path, encoding="utf-8-sig") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line)
                except ValueError as e:
                    yield number, Skip("<line>", "bad_json", f"expected one JSON object per line ({e})")
    else:
        try:
            items = list(rows(json.loads(path.read_text(encoding="utf-8-sig"))))
        except (ValueError, UnicodeDecodeError) as e:
            yield 0, Skip("<file>", "bad_json", f"expected a JSON file ({e})")
            return
        except Skip as e:
            yield 0, e
            return
        yield from enumerate(items, start=1)


def settings_of(source: str, in_dir: Path, files: Optional[Sequence[str]], image_root: Optional[Path],
                limit: Optional[int], id_prefix: Optional[str]) -> dict:
    """What determines a conversion's output, with the size and time of each input file: equal
    settings mean a finished conversion need not run again."""
    conv = CONVERTERS[source]
    patterns = tuple(files) if files else conv.files
    inputs = source_files(in_dir, patterns)
    return {
        "source": source, "in": str(in_dir.resolve()), "files": list(patterns),
        "image_root": str((image_root or in_dir).resolve()), "limit": limit, "id_prefix": id_prefix or source,
        "inputs": [[str(p.relative_to(in_dir)), p.stat().st_size, p.stat().st_mtime_ns] for p in inputs],
    }


def report_path(out: Path) -> Path:
    return out.with_name(out.stem + ".report.json")


def skipped_path(out: Path) -> Path:
    return out.with_name(out.stem + ".skipped.jsonl")


def convert(source: str, in_dir: Path, out: Path, images_dir: Path, image_root: Optional[Path] = None,
            files: Optional[Sequence[str]] = None, limit: Optional[int] = None, id_prefix: Optional[str] = None,
            progress: bool = False) -> dict:
    """Convert one source; returns the report (also written next to `out`). `progress`: a bar of rows read."""
    from tqdm import tqdm

    if source not in CONVERTERS:
        raise InputError(f"--source: expected one of {', '.join(sorted(CONVERTERS))}, got {source!r}")
    if not in_dir.is_dir():
        raise FileNotFoundError(f"--in: source folder not found: {in_dir}")
    data_root = out.parent.resolve()
    images_dir = images_dir.resolve()
    if not images_dir.is_relative_to(data_root):
        raise InputError(f"--images {images_dir}: must lie inside {data_root}, the folder of --out "
                         f"(record image paths are relative to it)")
    if limit is not None and limit < 1:
        raise InputError(f"--limit: expected >= 1, got {limit}")
    conv = CONVERTERS[source]
    settings = settings_of(source, in_dir, files, image_root, limit, id_prefix)
    ctx = Context(source, conv.source, in_dir, image_root or in_dir, images_dir, data_root, id_prefix or source)
    out.parent.mkdir(parents=True, exist_ok=True)
    skipped: list[SkippedRow] = []
    seen_ids: dict[str, str] = {}
    rows_read = written = 0
    tmp = out.with_name(out.name + ".tmp")
    bar = tqdm(desc=f"convert {id_prefix or source}", unit="row", disable=not progress, dynamic_ncols=True)
    with open(tmp, "w", encoding="utf-8") as sink, bar:
        for path in source_files(in_dir, settings["files"]):
            if limit is not None and written >= limit:
                break
            rel = str(path.relative_to(in_dir))
            file_key = path.relative_to(in_dir).with_suffix("").as_posix().replace("/", ".")
            for number, row in read_rows(path, conv.rows):
                if limit is not None and written >= limit:
                    break
                rows_read += number > 0
                bar.update(number > 0)
                try:
                    if isinstance(row, Skip):
                        raise row
                    if not isinstance(row, dict):
                        raise Skip("<row>", "bad_row", f"expected an object, got {type(row).__name__}")
                    row.setdefault("_key", f"{file_key}-{number}")  # for sources without an id column
                    records = conv.function(row, ctx)
                    for record in records:
                        if record["id"] in seen_ids:
                            raise Skip("id", "duplicate_id", f"id {record['id']!r} already made from {seen_ids[record['id']]}")
                    for record in records:
                        seen_ids[record["id"]] = f"{rel} row {number}"
                        sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                        written += 1
                except Skip as e:
                    skipped.append(SkippedRow(rel, number, e.field, e.kind, e.reason))
                except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:  # a row of an unexpected shape
                    skipped.append(SkippedRow(rel, number, "<row>", "malformed", f"{type(e).__name__}: {e}"))
    os.replace(tmp, out)
    skipped_file = skipped_path(out)
    skipped_file.write_text("".join(json.dumps(asdict(s), ensure_ascii=False) + "\n" for s in skipped), encoding="utf-8")
    report = {
        "settings": settings, "out": str(out), "images": str(images_dir), "rows": rows_read, "records": written,
        "images_written": ctx.images_written, "images_used": len(ctx.stored), "skipped": len(skipped),
        "skipped_by_kind": dict(sorted(Counter(s.kind for s in skipped).items())), "skipped_rows": str(skipped_file),
    }
    tmp = report_path(out).with_name(report_path(out).name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, report_path(out))  # last: a report means the conversion finished
    return report


def finished(out: Path, settings: dict) -> bool:
    """Whether `out` is a finished conversion with these settings."""
    try:
        report = json.loads(report_path(out).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return out.is_file() and report.get("settings") == settings


def summary(report: dict, shown: int = 5) -> str:
    kinds = ", ".join(f"{k}: {v}" for k, v in report["skipped_by_kind"].items()) or "none"
    lines = [f"convert {report['settings']['source']}: {report['rows']} rows -> {report['records']} records "
             f"({report['images_written']} new images), {report['skipped']} skipped ({kinds})"]
    path = Path(report["skipped_rows"])
    if report["skipped"]:
        with open(path, encoding="utf-8") as f:
            for line, _ in zip(f, range(shown)):
                s = json.loads(line)
                lines.append(f"  skipped {s['file']} row {s['row']}: field '{s['field']}': {s['reason']}")
        lines.append(f"  every skipped row: {path}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m mixedr1.data.convert", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[1:]))
    parser.add_argument("--source", required=True, choices=sorted(CONVERTERS), help="which converter")
    parser.add_argument("--in", dest="in_dir", required=True, type=Path, help="the folder holding the release's files")
    parser.add_argument("--out", required=True, type=Path, help="the records (JSONL); report and skipped rows go next to it")
    parser.add_argument("--images", required=True, type=Path, help="image folder, inside the folder of --out")
    parser.add_argument("--image-root", type=Path, default=None, help="where image paths of the release are found (default: --in)")
    parser.add_argument("--files", nargs="+", default=None, help="glob patterns under --in (default: the converter's)")
    parser.add_argument("--limit", type=int, default=None, help="stop after N records")
    parser.add_argument("--id-prefix", default=None, help="record ids start with this (default: the source name)")
    args = parser.parse_args(argv)
    report = convert(args.source, args.in_dir, args.out, args.images, args.image_root, args.files, args.limit, args.id_prefix,
                     progress=True)
    print(summary(report), flush=True)
    return report


if __name__ == "__main__":
    run_main(main)
