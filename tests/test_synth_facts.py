"""The quick start's `visual_facts` data: every answer read back from the pixels independently of
the generator (colour by nearest palette entry, count by connected components, box by the
non-white pixels), balanced held-out classes, and warm-up answers that belong to other items."""

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from mixedr1.data.dataset import load_records
from mixedr1.data.synth import COLORS, FACT_COLORS, FACT_SIZE, write_synthetic_dataset


@pytest.fixture(scope="module")
def facts(tmp_path_factory):
    paths = write_synthetic_dataset(tmp_path_factory.mktemp("facts"), n_per_type=8, seed=5, heldout_per_type=8,
                                    task="visual_facts", warmup_per_type=8)
    return paths.root


def _pixels(root, record) -> np.ndarray:
    return np.asarray(Image.open(root / record.images[0]).convert("RGB"), dtype=np.int64)  # [H, W, 3]


def _ink(pixels: np.ndarray) -> np.ndarray:
    return (pixels != 255).any(axis=-1)  # [H, W] not background


def _colour(pixels: np.ndarray) -> str:
    """The palette colour nearest to the median of the non-background pixels."""
    median = np.median(pixels[_ink(pixels)], axis=0)
    return min(FACT_COLORS, key=lambda name: np.sum((np.array(COLORS[name]) - median) ** 2))


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_every_answer_is_what_the_pixels_show(facts, split):
    records, _ = load_records(facts / f"{split}.jsonl", facts)
    for record in records:
        pixels = _pixels(facts, record)
        assert pixels.shape[:2] == (FACT_SIZE, FACT_SIZE)
        if record.problem_type == "yorn":
            assert record.answer == ("yes" if _colour(pixels) == "red" else "no"), record.id
        elif record.problem_type == "mcq":
            assert record.options[ord(record.answer) - ord("A")] == _colour(pixels), record.id
        elif record.problem_type == "chart":
            _, components = ndimage.label(_ink(pixels))
            assert record.answer == str(components), record.id
        elif record.problem_type == "grounding":
            ys, xs = np.nonzero(_ink(pixels))
            assert list(record.answer) == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], record.id
        else:
            assert _colour(pixels) in record.answer.lower(), record.id


def test_heldout_classes_are_balanced(facts):
    records, _ = load_records(facts / "heldout.jsonl", facts)
    answers = {t: Counter(str(r.answer) for r in records if r.problem_type == t) for t in ("yorn", "mcq", "chart")}
    assert answers["yorn"] == {"yes": 4, "no": 4}
    assert answers["mcq"] == {letter: 2 for letter in "ABCD"}
    assert answers["chart"] == {str(n): 2 for n in (1, 2, 3, 4)}


def test_warmup_answers_are_independent_of_their_images(facts):
    """The warm-up keeps each image's own answer in meta.image_answer and trains on another one:
    over the classification types the two agree about as often as chance, not always."""
    rows = [json.loads(line) for line in (facts / "warmup.jsonl").read_text().splitlines()]
    typed = [r for r in rows if r["problem_type"] in ("yorn", "mcq", "chart")]
    agree = sum(str(r["answer"]) == str(r["meta"]["image_answer"]) for r in typed)
    assert agree < len(typed) * 0.75
