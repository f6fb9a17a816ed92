"""The JSONL schema and its errors (docs/method.md §1), the Table 2/3 filters, prompts (docs/method.md §2), synthetic data
with exact answers, and collation (pixel rows <-> prompts)."""

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mixedr1.config import PROBLEM_TYPES, RewardConfig
from mixedr1.data import (
    INSTRUCTION,
    DataError,
    Record,
    build_sft_target,
    collate,
    load_records,
    patches_per_prompt,
    pixels_for_prompts,
    prompt_text,
    render_prompt,
    scale_by_category,
    select_problem_types,
)
from mixedr1.data.synth import COLORS, caption, write_synthetic_dataset
from mixedr1.data.frame import resized_image_size
from mixedr1.models import load_model, load_processor


# Test-only views of a batch (the code itself needs neither).


def prompt_of_pixel_row(image_grid_thw, images_per_prompt) -> torch.Tensor:
    """[sum_patches] the prompt index of every `pixel_values` row."""
    rows = patches_per_prompt(image_grid_thw, images_per_prompt)  # [B]
    return torch.repeat_interleave(torch.arange(rows.shape[0]), rows)


def mm_token_type_ids_from_ids(input_ids: torch.Tensor, image_token_id: int, video_token_id: int | None = None) -> torch.Tensor:
    """[N, L] 1 at image tokens, 2 at video tokens, 0 elsewhere: what the processor returns, for any
    sequence (e.g. prompt + completion) the model must place with 3-D M-RoPE positions."""
    types = (input_ids == image_token_id).long()
    if video_token_id is not None:
        types = types + 2 * (input_ids == video_token_id).long()
    return types


@pytest.fixture(scope="module")
def tiny_dir(tiny_qwen_dir):
    return tiny_qwen_dir


@pytest.fixture(scope="module")
def processor(tiny_dir):
    return load_processor(tiny_dir)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("synth"), n_per_type=6, seed=3, heldout_per_type=2)


# ----------------------------------------------------------------------------------------------
# Loading and its errors


def _good(record_id="g1", **changes):
    record = {"id": record_id, "problem_type": "yorn", "question": "Is it red?", "answer": "yes", "images": ["a.png"]}
    record.update(changes)
    return record


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    Image.new("RGB", (20, 10), "red").save(root / "a.png")
    Image.new("RGB", (20, 10), "blue").save(tmp_path / "outside.png")
    (root / "link.png").symlink_to(tmp_path / "outside.png")
    return root


BAD_RECORDS = [  # (case, JSON line (a dict is dumped, a str written as is), field named, reason)
    ("missing field", {k: v for k, v in _good("bad1").items() if k != "answer"}, "answer", "missing_field"),
    ("missing images", {k: v for k, v in _good("bad1").items() if k != "images"}, "images", "missing_field"),
    ("wrong type question", _good("bad1", question=5), "question", "wrong_type"),
    ("wrong type images", _good("bad1", images="a.png"), "images", "wrong_type"),
    ("wrong type answer", _good("bad1", problem_type="chart", answer=42), "answer", "wrong_type"),
    ("unknown problem_type", _good("bad1", problem_type="counting"), "problem_type", "unknown_problem_type"),
    ("bad box x1 == x2", _good("bad1", problem_type="grounding", answer=[10, 5, 10, 20]), "answer", "bad_box"),
    ("bad box y1 > y2", _good("bad1", problem_type="grounding", answer=[1, 9, 5, 3]), "answer", "bad_box"),
    ("bad box 3 numbers", _good("bad1", problem_type="grounding", answer=[1, 2, 3]), "answer", "bad_box"),
    ("mcq without options", _good("bad1", problem_type="mcq", answer="A"), "options", "missing_field"),
    ("mcq letter out of range", _good("bad1", problem_type="mcq", answer="C", options=["x", "y"]), "answer", "bad_answer"),
    ("yorn answer not yes/no", _good("bad1", answer="maybe"), "answer", "bad_answer"),
    ("missing image", _good("bad1", images=["a.png", "nope.png"]), "images[1]", "missing_image"),
    ("path escaping via ..", _good("bad1", images=["../outside.png"]), "images[0]", "path_escape"),
    ("absolute path", _good("bad1", images=["/etc/hostname"]), "images[0]", "path_escape"),
    ("symlink escaping", _good("bad1", images=["link.png"]), "images[0]", "path_escape"),
    ("broken JSON line", '{"id": "bad1", "problem_type": "yorn", "question": "Is it', "<line>", "broken_json"),
    ("duplicate id", _good("g1"), "id", "duplicate_id"),
]


def _write_jsonl(path: Path, lines) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


@pytest.mark.parametrize("case,bad,field,reason", BAD_RECORDS, ids=[c[0] for c in BAD_RECORDS])
def test_bad_record_error_names_file_line_id_and_field(root, case, bad, field, reason):
    path = _write_jsonl(root / "train.jsonl", [_good("g1"), "", bad, _good("g2")])  # bad record on line 3
    with pytest.raises(DataError) as info:
        load_records(path, root)
    message = str(info.value)
    assert "train.jsonl" in message and ":3:" in message
    expected_id = "g1" if reason == "duplicate_id" else "bad1"
    assert repr(expected_id) in message
    assert f"'{field}'" in message
    assert (info.value.line, info.value.field, info.value.reason) == (3, field, reason)
    if reason == "duplicate_id":
        assert "line 1" in message  # where the first one is


@pytest.mark.parametrize("case,bad,field,reason", BAD_RECORDS, ids=[c[0] for c in BAD_RECORDS])
def test_skip_counts_the_bad_record_and_keeps_the_good_ones(root, case, bad, field, reason):
    path = _write_jsonl(root / "train.jsonl", [_good("g1"), bad, _good("g2")])
    records, report = load_records(path, root, on_bad_record="skip")
    assert [r.id for r in records] == ["g1", "g2"]
    assert report.n_good == 2 and report.n_bad == 1 and report.skipped == Counter({reason: 1})
    assert len(report.messages) == 1 and ":2:" in report.messages[0]


def test_skip_counts_every_reason_in_one_file(root):
    lines = [_good("g1")]
    for i, (_, bad, _, _) in enumerate(BAD_RECORDS):
        lines.append(bad)  # the duplicate-id case repeats g1
        lines.append(_good(f"good{i}"))
    records, report = load_records(_write_jsonl(root / "mixed.jsonl", lines), root, on_bad_record="skip")
    assert len(records) == 1 + len(BAD_RECORDS)
    assert report.skipped == Counter(reason for *_, reason in BAD_RECORDS)
    assert "19 records kept, 18 skipped" in report.summary()


def test_valid_records_are_typed(root):
    lines = [
        _good("y"),
        _good("m", problem_type="mcq", options=["cat", "dog", "cow"], answer="b"),
        _good("g", problem_type="grounding", answer="[1, 2, 10.5, 8]", source="RefCOCOg"),
        _good("o", problem_type="open_ended", answer="A red image.", images=["a.png", "a.png"]),
    ]
    records, _ = load_records(_write_jsonl(root / "ok.jsonl", lines), root)
    y, m, g, o = records
    assert y.answer == "yes" and y.options is None and y.images == ((root / "a.png").resolve(),)
    assert m.options == ("cat", "dog", "cow") and m.answer == "B"
    assert g.answer == (1.0, 2.0, 10.5, 8.0) and g.source == "RefCOCOg"
    assert len(o.images) == 2 and o.image_sizes() == [(10, 20), (10, 20)]
    image = o.load_images()[0]
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 0, 0)
    with pytest.raises(Exception):
        y.answer = "no"  # frozen


# ----------------------------------------------------------------------------------------------
# Tables 2 and 3


def _records(counts: dict[str, int]) -> list[Record]:
    return [
        Record(f"{t}-{i}", t, "q?", "yes" if t == "yorn" else "x", (Path("a.png"),))
        for t, n in counts.items()
        for i in range(n)
    ]


def test_scale_by_category_halves_and_doubles_each_category():
    records = _records({"yorn": 10, "mcq": 6, "chart": 4, "open_ended": 1})
    half = scale_by_category(records, 0.5, seed=0)
    assert Counter(r.problem_type for r in half) == {"yorn": 5, "mcq": 3, "chart": 2}  # round(0.5) = 0
    assert len({r.id for r in half}) == len(half)
    double = scale_by_category(records, 2.0, seed=0)
    assert Counter(r.problem_type for r in double) == {"yorn": 20, "mcq": 12, "chart": 8, "open_ended": 2}
    assert set(Counter(r.id for r in double).values()) == {2}  # every record exactly twice
    one_and_a_half = scale_by_category(records, 1.5, seed=0)
    assert Counter(r.problem_type for r in one_and_a_half) == {"yorn": 15, "mcq": 9, "chart": 6, "open_ended": 2}
    assert set(Counter(r.id for r in one_and_a_half).values()) == {1, 2}
    assert scale_by_category(records, 1.0, seed=5) == records
    assert [r.id for r in scale_by_category(records, 0.5, seed=0)] == [r.id for r in half]  # deterministic
    assert any(
        [r.id for r in scale_by_category(records, 0.5, seed=s)] != [r.id for r in half] for s in range(1, 5)
    )


def test_select_problem_types():
    records = _records({t: 2 for t in PROBLEM_TYPES})
    kept = select_problem_types(records, ["yorn", "grounding"])
    assert [r.problem_type for r in kept] == ["yorn", "yorn", "grounding", "grounding"]
    with pytest.raises(ValueError, match="counting"):
        select_problem_types(records, ["counting"])


# ----------------------------------------------------------------------------------------------
# Synthetic data


def _hash_tree(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_synthetic_data_is_deterministic_by_seed(synth, tmp_path):
    again = write_synthetic_dataset(tmp_path / "again", n_per_type=6, seed=3, heldout_per_type=2)
    other = write_synthetic_dataset(tmp_path / "other", n_per_type=6, seed=4, heldout_per_type=2)
    assert _hash_tree(again.root) == _hash_tree(synth.root)
    assert _hash_tree(other.root) != _hash_tree(synth.root)


def test_synthetic_data_has_every_type_and_loads_cleanly(synth):
    train, report = load_records(synth.train, synth.root)
    heldout, _ = load_records(synth.heldout, synth.root)
    assert report.n_bad == 0
    assert Counter(r.problem_type for r in train) == {t: 6 for t in PROBLEM_TYPES}
    assert Counter(r.problem_type for r in heldout) == {t: 2 for t in PROBLEM_TYPES}
    assert not {r.id for r in train} & {r.id for r in heldout}
    for r in train:
        h, w = r.image_sizes()[0]
        assert 56 <= h <= 112 and 56 <= w <= 112
    answers = Counter(r.answer for r in train if r.problem_type == "yorn")
    assert set(answers) <= {"yes", "no"}


def _raw(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_synthetic_answers_are_correct_by_construction(synth):
    for raw in _raw(synth.train) + _raw(synth.heldout):
        ptype, meta, answer = raw["problem_type"], raw["meta"], raw["answer"]
        pixels = np.asarray(Image.open(synth.root / raw["images"][0]).convert("RGB"))
        if ptype == "yorn":
            color, shape = re.match(r"Is there an? (\w+) (\w+) in the image\?", raw["question"]).groups()
            present = any(o["color"] == color and o["shape"] == shape for o in meta["objects"])
            assert answer == ("yes" if present else "no")
        elif ptype == "mcq":
            shape = re.match(r"How many (\w+)s are", raw["question"]).group(1)
            count = sum(o["shape"] == shape for o in meta["objects"])
            assert raw["options"]["ABCD".index(answer)] == str(count) == str(meta["count"])
            assert len(set(raw["options"])) == 4
        elif ptype == "chart":
            label = re.match(r"What is the value of bar (\w)\?", raw["question"]).group(1)
            assert answer == str(meta["values"][label])
        elif ptype == "grounding":
            color = re.match(r"Find the (\w+) (\w+)\.", raw["question"]).group(1)
            ys, xs = np.nonzero((pixels == COLORS[color]).all(-1))  # the only object of that colour
            assert answer == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert sum(o["color"] == color for o in meta["objects"]) == 1
        else:
            assert answer == caption([(o["color"], o["shape"]) for o in meta["objects"]])
        for obj in meta["objects"] if "objects" in meta else []:  # every object is drawn where meta says
            x1, y1, x2, y2 = obj["box"]
            inside = (pixels[y1:y2, x1:x2] == COLORS[obj["color"]]).all(-1)
            assert inside.any(0).all() and inside.any(1).all()  # touches every column and row of its box


def test_sft_targets_of_synthetic_data_get_full_reward(synth, tiny_dir, processor):
    """The ground truth, written as a response, scores full accuracy and format under the rewards."""
    from mixedr1.rewards import RewardTarget, TokenEmbedder, score_group

    model = load_model(tiny_dir)
    embedder = TokenEmbedder(processor.tokenizer, model.get_input_embeddings().weight.detach())
    records, _ = load_records(synth.train, synth.root)
    for record in records:
        response = build_sft_target(record, processor)
        orig_hw = record.image_sizes()[0]
        target = RewardTarget(
            record.problem_type, record.answer, record.options, orig_hw, resized_image_size(processor, *orig_hw)
        )
        (score,) = score_group([response], target, RewardConfig(), embedder)
        assert score.format == 1.0, response
        if record.problem_type == "grounding":
            assert score.accuracy > 0.8, (response, record.answer)  # integer pixels in the model frame
        elif record.problem_type == "open_ended":
            assert score.accuracy == pytest.approx(2.0, abs=1e-4)  # BMAS of identical texts, combine=sum
        else:
            assert score.accuracy == 1.0, (response, record.answer)


# ----------------------------------------------------------------------------------------------
# Prompts


def test_prompt_has_lettered_options_and_the_instruction(processor):
    record = Record("m", "mcq", "How many squares?", "B", (Path("x.png"), Path("y.png")), ("1", "2", "3", "4"))
    text = prompt_text(record)
    assert text.startswith("How many squares?\nA. 1\nB. 2\nC. 3\nD. 4\n")
    assert text.endswith(INSTRUCTION.format(answer_hint="the option letter"))
    assert "<think> </think>" in text and "<answer> </answer>" in text
    rendered = render_prompt(record, processor)
    assert rendered.count("<|vision_start|><|image_pad|><|vision_end|>") == 2
    assert "A. 1\nB. 2" in rendered and rendered.endswith("<|im_start|>assistant\n")
    for ptype, hint in [("yorn", "yes or no"), ("chart", "a number or short text"), ("grounding", "absolute pixel")]:
        assert hint in prompt_text(Record("r", ptype, "Q?", "yes", (Path("x.png"),)))


def test_sft_target_maps_the_box_into_the_model_frame(tmp_path, processor):
    Image.new("RGB", (150, 97)).save(tmp_path / "g.png")
    record = Record("g", "grounding", "Find it.", (30.0, 20.0, 90.0, 61.0), (tmp_path / "g.png",))
    new_h, new_w = resized_image_size(processor, 97, 150)  # (84, 140) with the tiny processor
    assert (new_h, new_w) == (84, 140)
    x1, y1, x2, y2 = 30 * 140 / 150, 20 * 84 / 97, 90 * 140 / 150, 61 * 84 / 97
    expected = f"[{round(x1)}, {round(y1)}, {round(x2)}, {round(y2)}]"
    assert build_sft_target(record, processor) == f"<think>I find the object in the image and read off its box.</think><answer>{expected}</answer>"
    assert build_sft_target(Record("y", "yorn", "Q?", "no", (tmp_path / "g.png",))).endswith("<answer>no</answer>")


# ----------------------------------------------------------------------------------------------
# Collation


@pytest.fixture
def mixed_records(tmp_path):
    rng = np.random.default_rng(0)
    sizes = [(60, 100), (90, 50), (30, 200), (112, 112)]  # (h, w)
    paths = []
    for i, (h, w) in enumerate(sizes):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    return [
        Record("one", "yorn", "Is it red?", "yes", (paths[0],)),
        Record("two", "mcq", "Which image is brighter?", "A", (paths[1], paths[2]), ("first", "second")),
        Record("three", "open_ended", "Describe the image.", "Noise.", (paths[3],)),
    ]


def test_collate_maps_pixel_rows_to_prompts(mixed_records, processor, tiny_dir):
    batch = collate(mixed_records, processor)
    B = len(mixed_records)
    assert batch.images_per_prompt.tolist() == [1, 2, 1]
    assert batch.image_grid_thw.shape == (4, 3)
    assert bool(batch.attention_mask[:, -1].all()) and not bool(batch.attention_mask[:, 0].all())  # left-padded
    rows = patches_per_prompt(batch.image_grid_thw, batch.images_per_prompt)
    assert rows.tolist() == [int(g.prod()) for g in batch.image_grid_thw[:1]] + [
        int(batch.image_grid_thw[1:3].prod(-1).sum()), int(batch.image_grid_thw[3].prod())
    ]
    assert int(rows.sum()) == batch.pixel_values.shape[0]
    assert torch.equal(prompt_of_pixel_row(batch.image_grid_thw, batch.images_per_prompt), torch.repeat_interleave(torch.arange(B), rows))
    image_token_id = processor.image_token_id
    assert ((batch.input_ids == image_token_id).sum(-1) == rows // 4).all()  # merge 2x2 patches per token
    assert batch.image_sizes[1] == [(90, 50), (30, 200)]
    assert batch.model_image_sizes[1] == [resized_image_size(processor, 90, 50), resized_image_size(processor, 30, 200)]
    for b, record in enumerate(mixed_records):  # each prompt alone gives exactly its slice of the batch
        alone = collate([record], processor)
        pixels, grid = pixels_for_prompts(batch, [b])
        assert torch.equal(pixels, alone.pixel_values) and torch.equal(grid, alone.image_grid_thw)
        n = alone.input_ids.shape[1]
        assert torch.equal(batch.input_ids[b, -n:], alone.input_ids[0])

    G = 3
    pixels, grid = pixels_for_prompts(batch, torch.arange(batch.input_ids.shape[0]).repeat_interleave(G))
    assert pixels.shape == (G * batch.pixel_values.shape[0], batch.pixel_values.shape[1])
    assert grid.shape == (G * 4, 3)
    assert torch.equal(pixels[: G * rows[0]], batch.pixel_values[: rows[0]].repeat(G, 1))
    assert torch.equal(grid[G : G + 2], batch.image_grid_thw[1:3])
    sub_pixels, sub_grid = pixels_for_prompts(batch, [2, 1])
    assert torch.equal(sub_pixels, torch.cat([batch.pixel_values[rows[0] + rows[1] :], batch.pixel_values[rows[0] : rows[0] + rows[1]]]))
    assert torch.equal(sub_grid, batch.image_grid_thw[[3, 1, 2]])


def test_forward_over_group_copies_matches_the_prompt_batch(mixed_records, processor, tiny_dir):
    """B*G sequences with `pixels_for_prompts` over the repeated prompts give each sample its own prompt's logits."""
    model = load_model(tiny_dir)
    batch = collate(mixed_records, processor)
    assert torch.equal(batch.mm_token_type_ids, mm_token_type_ids_from_ids(batch.input_ids, processor.image_token_id, processor.video_token_id))
    G = 2
    pixels, grid = pixels_for_prompts(batch, torch.arange(batch.input_ids.shape[0]).repeat_interleave(G))
    input_ids = batch.input_ids.repeat_interleave(G, 0)  # [B*G, P]
    with torch.no_grad():
        per_prompt = model(**batch.model_inputs()).logits  # [B, P, V]
        per_sample = model(
            input_ids=input_ids,
            attention_mask=batch.attention_mask.repeat_interleave(G, 0),
            pixel_values=pixels,
            image_grid_thw=grid,
            mm_token_type_ids=mm_token_type_ids_from_ids(input_ids, processor.image_token_id),
        ).logits  # [B*G, P, V]
    mask = batch.attention_mask.bool().repeat_interleave(G, 0)
    diff = (per_sample - per_prompt.repeat_interleave(G, 0))[mask].abs().max()
    assert diff < 1e-4


def test_collate_rejects_prompts_over_the_token_limit(mixed_records, processor):
    lengths = collate(mixed_records, processor).attention_mask.sum(-1).tolist()
    assert lengths[1] > max(lengths[0], lengths[2])  # two images
    collate(mixed_records, processor, max_prompt_tokens=lengths[1])
    with pytest.raises(ValueError, match=f"record 'two': prompt is {lengths[1]} tokens.*max_prompt_tokens={lengths[1] - 1}"):
        collate(mixed_records, processor, max_prompt_tokens=lengths[1] - 1)


def test_grounding_hint_follows_the_processors_box_frame(tmp_path, tiny_qwen_dir, tiny_internvl_dir):
    """Qwen answers in pixels of the resized image; InternVL in 0-1000 normalised coordinates."""
    from mixedr1.data.prompt import NORMALISED_BOX_HINT, render_prompt
    from mixedr1.data.synth import write_synthetic_dataset
    from mixedr1.models import load_processor

    paths = write_synthetic_dataset(tmp_path / "data", 1, seed=0)
    records, _ = load_records(paths.train, paths.root)
    (grounding,) = [r for r in records if r.problem_type == "grounding"]
    qwen = load_processor(tiny_qwen_dir)
    internvl = load_processor(tiny_internvl_dir)
    assert "absolute pixel coordinates" in render_prompt(grounding, qwen)
    assert NORMALISED_BOX_HINT in render_prompt(grounding, internvl)
    assert "absolute pixel" not in render_prompt(grounding, internvl)
