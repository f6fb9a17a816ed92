"""Bad records found by fuzzing the loader: numbers and nesting JSON cannot hold, non-finite boxes,
bytes that are not UTF-8, odd image paths, image files PIL cannot use, and the skip-mode report.

Every bad file is made here. Each case is checked twice: in error mode the `DataError` names the
file, line, id (when readable) and field in one line; in skip mode exactly the good records are kept
and the bad one is reported with its reason."""

import io
import json
import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mixedr1.data import DataError, Record, collate, load_records
from mixedr1.data import dataset as dataset_module
from mixedr1.data.dataset import MAX_ASPECT_RATIO
from mixedr1.data.synth import write_synthetic_dataset
from mixedr1.models import load_processor


def _good(record_id="g1", **changes) -> dict:
    record = {"id": record_id, "problem_type": "yorn", "question": "Is it red?", "answer": "yes", "images": ["a.png"]}
    record.update(changes)
    return record


def _line(obj) -> bytes:
    """A dict as one JSON line; bytes as given; str as UTF-8."""
    if isinstance(obj, bytes):
        return obj
    return (obj if isinstance(obj, str) else json.dumps(obj)).encode("utf-8")


def _write(path: Path, lines, newline=b"\n") -> Path:
    path.write_bytes(b"".join(_line(line) + newline for line in lines))
    return path


def _png(width=40, height=30) -> bytes:
    """A PNG of noise (so its compressed pixels span several hundred bytes)."""
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header (IHDR, checksum fixed) claims `width` x `height`: a decompression
    bomb as far as the header tells, without the memory one would take to write."""
    data = _png()
    assert data[12:16] == b"IHDR"
    chunk = b"IHDR" + struct.pack(">II", width, height) + data[24:29]
    return data[:12] + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:]


def _jpeg(width=120, height=90) -> bytes:
    pixels = np.random.default_rng(1).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    Image.new("RGB", (20, 10), "red").save(root / "a.png")
    return root


# ----------------------------------------------------------------------------------------------
# The cases: (name, JSON line or a function of the data root that makes its files and returns the
# line, field named, reason, id named (None: unreadable))

DIGITS_5000 = "9" * 5000  # over Python's 4300-digit limit on int("...")
DIGITS_400 = "9" * 400  # an int Python holds, but no float can
DEEP = 100_000  # nesting levels, far past the recursion limit


def _bad_image(name: str, data: bytes):
    def make(root: Path) -> dict:
        (root / name).write_bytes(data)
        return _good("bad1", images=[name])
    return make


def _image_of_size(width: int, height: int, images_before=()):
    def make(root: Path) -> dict:
        Image.new("L", (width, height), 128).save(root / f"{width}x{height}.png")
        return _good("bad1", images=[*images_before, f"{width}x{height}.png"])
    return make


def _symlink_loop(root: Path) -> dict:
    (root / "loop1.png").symlink_to(root / "loop2.png")
    (root / "loop2.png").symlink_to(root / "loop1.png")
    return _good("bad1", images=["loop1.png"])


def _grounding(answer) -> dict:
    return _good("bad1", problem_type="grounding", question="Find it.", answer=answer)


def _grounding_raw(answer_text: str) -> str:
    return '{"id": "bad1", "problem_type": "grounding", "question": "Find it.", "answer": %s, "images": ["a.png"]}' % answer_text


BAD_CASES = [
    # 4. JSON that json.loads cannot hold: a whole-line error, still named and skippable
    ("integer over 4300 digits", _grounding_raw(f"[0, 0, {DIGITS_5000}, 5]"), "<line>", "broken_json", "bad1"),
    ("integer over 4300 digits in an ignored key",
     json.dumps(_good("bad1"))[:-1] + f', "meta": {{"n": {DIGITS_5000}}}}}', "<line>", "broken_json", "bad1"),
    ("answer nested 1e5 deep", _grounding_raw("[" * DEEP + "]" * DEEP), "<line>", "broken_json", "bad1"),
    ("line nested 1e5 deep, no id", "[" * DEEP + "]" * DEEP, "<line>", "broken_json", None),
    ("object nested 1e5 deep", '{"a": ' * DEEP + "1" + "}" * DEEP, "<line>", "broken_json", None),
    # 5. boxes that are not 4 finite numbers
    ("box with Infinity", _grounding_raw("[0, 0, Infinity, 5]"), "answer", "bad_box", "bad1"),
    ("box with -Infinity", _grounding_raw("[-Infinity, 0, 4, 5]"), "answer", "bad_box", "bad1"),
    ("box with NaN", _grounding_raw("[0, 0, NaN, 5]"), "answer", "bad_box", "bad1"),
    ("box with 1e400", _grounding_raw("[0, 0, 1e400, 5]"), "answer", "bad_box", "bad1"),
    ("box with a 400-digit integer", _grounding_raw(f"[0, 0, {DIGITS_400}, 5]"), "answer", "bad_box", "bad1"),
    ("box string with Infinity", _grounding("[0, 0, Infinity, 5]"), "answer", "bad_box", "bad1"),
    ("box string with 1e400", _grounding("[0, 0, 1e400, 5]"), "answer", "bad_box", "bad1"),
    ("box string with a 5000-digit integer", _grounding(f"[0, 0, {DIGITS_5000}, 5]"), "answer", "bad_box", "bad1"),
    ("box string nested 1e5 deep", _grounding("[" * DEEP + "]" * DEEP), "answer", "bad_box", "bad1"),
    # 6. bytes that are not UTF-8: only that line is lost
    ("invalid byte 0xff", b'{"id": "bad1", "problem_type": "yorn", "question": "Is it r\xffed?", "answer": "yes", "images": ["a.png"]}',
     "<line>", "bad_encoding", "bad1"),
    ("cut multi-byte character", b'{"id": "bad1", "problem_type": "yorn", "question": "caf\xc3", "answer": "yes", "images": ["a.png"]}',
     "<line>", "bad_encoding", "bad1"),
    ("UTF-8-encoded surrogate", b'{"id": "bad1", "problem_type": "yorn", "question": "\xed\xa0\x80?", "answer": "yes", "images": ["a.png"]}',
     "<line>", "bad_encoding", "bad1"),
    ("Latin-1 line without id", b'{"question": "d\xe9j\xe0 vu"}', "<line>", "bad_encoding", None),
    # 7. image paths the file system refuses
    ("NUL in image path", _good("bad1", images=["a\x00.png"]), "images[0]", "bad_path", "bad1"),
    ("NUL in second image path", _good("bad1", images=["a.png", "\x00"]), "images[1]", "bad_path", "bad1"),
    ("file name too long", _good("bad1", images=["x" * 300 + ".png"]), "images[0]", "bad_path", "bad1"),
    ("symlink loop", _symlink_loop, "images[0]", "bad_path", "bad1"),
    # 8. image files PIL cannot use
    ("empty image file", _bad_image("empty.png", b""), "images[0]", "bad_image", "bad1"),
    ("text file named .png", _bad_image("text.png", b"not an image\n"), "images[0]", "bad_image", "bad1"),
    ("truncated PNG", _bad_image("cut.png", _png()[: len(_png()) // 2]), "images[0]", "bad_image", "bad1"),
    ("PNG with a flipped byte", _bad_image("flip.png", _png()[:60] + bytes([_png()[60] ^ 0xFF]) + _png()[61:]),
     "images[0]", "bad_image", "bad1"),
    ("PNG header claiming 0x30", _bad_image("zero.png", _png_claiming(0, 30)), "images[0]", "bad_image", "bad1"),
    ("decompression bomb 20000x20000", _bad_image("bomb.png", _png_claiming(20000, 20000)), "images[0]", "bad_image", "bad1"),
    ("over the pixel limit, under twice it", _bad_image("big.png", _png_claiming(10000, 10000)), "images[0]", "bad_image", "bad1"),
    ("aspect ratio 2000x4", _image_of_size(2000, 4), "images[0]", "bad_image", "bad1"),
    ("aspect ratio 4x2000", _image_of_size(4, 2000), "images[0]", "bad_image", "bad1"),
    ("aspect ratio 201x1, second image", _image_of_size(MAX_ASPECT_RATIO + 1, 1, ["a.png"]), "images[1]", "bad_image", "bad1"),
]
CASE_IDS = [case[0] for case in BAD_CASES]


def _bad_line(bad, root: Path):
    return bad(root) if callable(bad) else bad


@pytest.mark.parametrize("case,bad,field,reason,record_id", BAD_CASES, ids=CASE_IDS)
def test_error_mode_names_file_line_id_and_field(root, case, bad, field, reason, record_id):
    path = _write(root / "train.jsonl", [_good("g1"), "", _bad_line(bad, root), _good("g2")])  # bad on line 3
    with pytest.raises(DataError) as info:
        load_records(path, root)
    message = str(info.value)
    assert message.startswith(f"{path}:3: record id=")
    assert (repr(record_id) if record_id is not None else "(unreadable)") in message
    assert f"field '{field}'" in message
    assert (info.value.line, info.value.field, info.value.reason, info.value.record_id) == (3, field, reason, record_id)
    assert "\n" not in message and len(message) < 400 + len(str(root)) * 3  # one line, however big the record


@pytest.mark.parametrize("case,bad,field,reason,record_id", BAD_CASES, ids=CASE_IDS)
def test_skip_mode_keeps_exactly_the_good_records(root, case, bad, field, reason, record_id):
    path = _write(root / "train.jsonl", [_good("g1"), _bad_line(bad, root), _good("g2")])  # bad on line 2
    records, report = load_records(path, root, on_bad_record="skip")
    assert [r.id for r in records] == ["g1", "g2"]
    assert report.n_good == 2 and report.n_bad == 1 and report.skipped == Counter({reason: 1})
    (skipped,) = report.skipped_records
    assert (skipped.file, skipped.line, skipped.id, skipped.field, skipped.reason) == (str(path), 2, record_id, field, reason)
    assert skipped.message.startswith(f"{path}:2: ")


def test_specific_messages(root):
    """What the user is told for each kind, beyond file, line, id and field."""
    expected = {
        "integer over 4300 digits": "Exceeds the limit (4300 digits)",
        "answer nested 1e5 deep": "nested too deeply",
        "box with 1e400": "expected 4 finite numbers, got [0, 0, inf, 5]",
        "box with a 400-digit integer": "expected 4 finite numbers",
        "invalid byte 0xff": "expected UTF-8 text, got the byte 0xff at byte 60 (invalid start byte)",
        "NUL in image path": "NUL character",
        "symlink loop": "cannot resolve 'loop1.png'",
        "empty image file": "got an empty file",
        "text file named .png": "got an unrecognised file",
        "truncated PNG": "expected a readable image",
        "PNG with a flipped byte": "expected a readable image, got SyntaxError: broken PNG file",
        "decompression bomb 20000x20000": "expected at most 89478485 pixels (PIL's decompression-bomb limit), got 400000000 pixels",
        "over the pixel limit, under twice it": "expected at most 89478485 pixels (PIL's decompression-bomb limit), got 10000x10000",
        "aspect ratio 2000x4": "expected an aspect ratio of at most 200, got 2000x4",
    }
    cases = {case[0]: case for case in BAD_CASES}
    for name, text in expected.items():
        path = _write(root / f"{len(name)}.jsonl", [_bad_line(cases[name][1], root)])
        with pytest.raises(DataError) as info:
            load_records(path, root)
        assert text in str(info.value), (name, str(info.value))
    with pytest.raises(DataError, match="images\\[0\\]'.*bomb.png"):  # the image's path is named
        load_records(_write(root / "bomb.jsonl", [_bad_image("bomb.png", _png_claiming(20000, 20000))(root)]), root)


def test_every_kind_in_one_file_is_skipped_and_reported(root, tmp_path):
    lines, expected = [_good("g0")], []
    for i, (_, bad, field, reason, record_id) in enumerate(BAD_CASES):
        lines.append(_bad_line(bad, root))
        expected.append((len(lines), record_id, field, reason))
        lines.append(_good(f"g{i + 1}"))
    path = _write(root / "mixed.jsonl", lines)
    records, report = load_records(path, root, on_bad_record="skip")
    assert [r.id for r in records] == [f"g{i}" for i in range(len(BAD_CASES) + 1)]
    assert [r.origin[1] for r in records] == list(range(1, len(lines) + 1, 2))
    assert [(r.line, r.id, r.field, r.reason) for r in report.skipped_records] == expected

    written = report.write_skipped(tmp_path / "skipped.jsonl")
    rows = [json.loads(line) for line in written.read_text(encoding="utf-8").splitlines()]
    assert [(r["file"], r["line"], r["id"], r["field"], r["reason"]) for r in rows] == [
        (str(path), line, record_id, field, reason) for line, record_id, field, reason in expected
    ]
    assert [r["message"] for r in rows] == report.messages

    summary = report.summary().splitlines()
    n = len(BAD_CASES)
    assert summary[0].startswith(f"{path}: {n + 1} records kept, {n} skipped (bad_box: 9, ")
    assert summary[1:6] == [f"  skipped {message}" for message in report.messages[:5]]
    assert summary[6:] == [f"  ... and {n - 5} more"]
    assert report.summary(shown=n).splitlines()[-1] == f"  skipped {report.messages[-1]}"


def test_summary_without_skips_is_one_line(root):
    _, report = load_records(_write(root / "ok.jsonl", [_good("g1")]), root, on_bad_record="skip")
    assert report.summary() == f"{root / 'ok.jsonl'}: 1 records kept, 0 skipped (none)"
    assert report.write_skipped(root / "skipped.jsonl").read_text() == ""


# ----------------------------------------------------------------------------------------------
# Whole-file encodings and line endings


def test_utf8_byte_order_mark_is_dropped(root):
    path = root / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + _line(_good("g1")) + b"\n" + _line(_good("g1", answer="maybe")) + b"\n")
    records, report = load_records(path, root, on_bad_record="skip")
    assert [r.id for r in records] == ["g1"]  # line 1 is read, not "broken JSON"
    assert [(r.line, r.reason) for r in report.skipped_records] == [(2, "bad_answer")]  # lines still count from 1


@pytest.mark.parametrize("encoding,named", [
    ("utf-16", "UTF-16-LE (byte-order mark ff fe)"),
    ("utf-16-be", "UTF-16 or UTF-32 (NUL bytes at the start)"),
    ("utf-16-le", "UTF-16 or UTF-32 (NUL bytes at the start)"),
    ("utf-32", "UTF-32-LE (byte-order mark ff fe 00 00)"),
])
def test_utf16_and_utf32_files_are_refused_in_both_modes(root, encoding, named):
    path = root / "wide.jsonl"
    path.write_bytes((json.dumps(_good("g1")) + "\n").encode(encoding))  # "utf-16", "utf-32": with a BOM
    for mode in ("error", "skip"):
        with pytest.raises(DataError) as info:
            load_records(path, root, on_bad_record=mode)
        message = str(info.value)
        assert message == f"{path}:1: record id=(unreadable): field '<file>': expected a UTF-8 file, got {named}; convert it to UTF-8"
        assert info.value.reason == "bad_encoding"


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_line_endings_and_line_numbers(root, newline):
    lines = [_good("g1"), b'{"id": "bad1", "question": "\xff"}', "", _good("g1"), _good("g2")]
    records, report = load_records(_write(root / "t.jsonl", lines, newline), root, on_bad_record="skip")
    assert [(r.id, r.origin[1]) for r in records] == [("g1", 1), ("g2", 5)]
    assert [(r.line, r.reason) for r in report.skipped_records] == [(2, "bad_encoding"), (4, "duplicate_id")]


# ----------------------------------------------------------------------------------------------
# Images


def test_image_limits_are_inclusive(root):
    """The largest allowed aspect ratio and the smallest image load; one past them does not."""
    Image.new("L", (MAX_ASPECT_RATIO, 1)).save(root / "wide.png")
    Image.new("L", (1, MAX_ASPECT_RATIO)).save(root / "tall.png")
    Image.new("L", (1, 1)).save(root / "dot.png")
    lines = [_good("w", images=["wide.png"]), _good("t", images=["tall.png"]), _good("d", images=["dot.png"])]
    records, _ = load_records(_write(root / "ok.jsonl", lines), root)
    assert [r.image_sizes() for r in records] == [[(1, MAX_ASPECT_RATIO)], [(MAX_ASPECT_RATIO, 1)], [(1, 1)]]


def test_pixel_limit_follows_pil(root, monkeypatch):
    Image.new("L", (100, 100)).save(root / "square.png")
    path = _write(root / "t.jsonl", [_good("s", images=["square.png"])])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 9999)
    with pytest.raises(DataError, match="expected at most 9999 pixels .*got 100x100"):
        load_records(path, root)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10000)
    assert len(load_records(path, root)[0]) == 1


def test_each_image_file_is_checked_once(root, monkeypatch):
    """Records sharing an image (or repeating it) open it once at load, bad or good."""
    (root / "bad.png").write_bytes(b"")
    calls = Counter()
    check = dataset_module.image_problem

    def counting(path):
        calls[path.name] += 1
        return check(path)

    monkeypatch.setattr(dataset_module, "image_problem", counting)
    lines = [_good(f"g{i}", images=["a.png", "a.png"]) for i in range(5)] + [_good(f"b{i}", images=["bad.png"]) for i in range(3)]
    records, report = load_records(_write(root / "t.jsonl", lines), root, on_bad_record="skip")
    assert len(records) == 5 and report.skipped == Counter({"bad_image": 3})
    assert calls == {"a.png": 1, "bad.png": 1}


def test_image_that_fails_only_when_decoded_is_named_at_collate(root, tiny_qwen_dir):
    """A truncated JPEG body passes the header check (PIL's `verify` reads nothing of a JPEG): then
    the error at collate time names the record, its file and line, and the image."""
    Image.fromarray(np.full((90, 120, 3), 200, np.uint8)).save(root / "fine.png")
    (root / "cut.jpg").write_bytes(_jpeg()[: int(len(_jpeg()) * 0.7)])
    path = _write(root / "t.jsonl", [_good("ok", images=["fine.png"]), _good("cut", images=["fine.png", "cut.jpg"])])
    records, report = load_records(path, root)
    assert report.n_bad == 0
    expected = f"{path}:2: record id='cut': field 'images[1]': cannot read image {root / 'cut.jpg'} (OSError: image file is truncated"
    with pytest.raises(DataError) as info:
        records[1].load_images()
    assert str(info.value).startswith(expected) and info.value.reason == "bad_image"
    with pytest.raises(DataError) as info:
        collate(records, load_processor(tiny_qwen_dir))
    assert str(info.value).startswith(expected)

    (root / "fine.png").unlink()  # gone after loading: the header read names the record too
    with pytest.raises(DataError, match=f"^{path}:1: record id='ok': field 'images\\[0\\]': cannot read image .*FileNotFoundError"):
        records[0].image_sizes()
    built = Record("built", "yorn", "Q?", "yes", (root / "cut.jpg",))  # made in code: no file or line to name
    with pytest.raises(DataError, match="^record id='built': field 'images\\[0\\]': cannot read image"):
        built.load_images()
    assert built == Record("built", "yorn", "Q?", "yes", (root / "cut.jpg",), origin=(path, 9))  # origin is not compared


def test_skip_mode_end_to_end_with_broken_images(tmp_path, tiny_qwen_dir):
    """The fuzzing report's run: skip mode on synthetic data with a few broken images keeps the rest,
    and every kept record collates (the bad ones no longer reach a batch)."""
    paths = write_synthetic_dataset(tmp_path / "data", n_per_type=2, seed=0)
    raw = [json.loads(line) for line in paths.train.read_text().splitlines()]
    broken = {raw[0]["images"][0]: b"GIF89a nonsense", raw[3]["images"][0]: _png()[:100],
              raw[6]["images"][0]: _png_claiming(20000, 20000)}
    for rel, data in broken.items():
        (paths.root / rel).write_bytes(data)
    records, report = load_records(paths.train, paths.root, on_bad_record="skip")
    assert [r.id for r in records] == [r["id"] for i, r in enumerate(raw) if i not in (0, 3, 6)]
    assert [(r.line, r.id, r.reason) for r in report.skipped_records] == [
        (i + 1, raw[i]["id"], "bad_image") for i in (0, 3, 6)
    ]
    batch = collate(records, load_processor(tiny_qwen_dir))
    assert batch.images_per_prompt.tolist() == [1] * len(records)
