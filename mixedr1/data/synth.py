"""Synthetic data of all five types with exact ground truth, for tests and the CPU demo.

    python -m mixedr1.data.synth --out DIR --n N --seed S [--heldout M] [--warmup K] [--task scenes|visual_facts]

writes `DIR/train.jsonl` (N items per type), `DIR/heldout.jsonl` (M per type), `DIR/warmup.jsonl`
(K per type, only when K > 0) and PNGs under `DIR/images/`, in the schema of docs/method.md §1
(data root = DIR). Two tasks (`data.synth_task`):

`scenes` (the default; tests): small white images (56-112 px a side) with coloured shapes placed in
disjoint grid cells, so nothing overlaps:

- yorn: "Is there a red circle in the image?" (half yes, half no)
- mcq: "How many squares are there in the image?" with 4 numeric options
- chart: a bar chart with integer values printed on the bars: "What is the value of bar B?"
- grounding: "Find the blue triangle." -> the exact pixel box of that shape (original pixels,
  continuous edges: x2 = last column + 1), no other shape has its colour
- open_ended: "Describe the image in one sentence." -> "A red circle and two blue squares on a
  white background."

`visual_facts` (the quick start, configs/demo.yaml): one fact per item that a 200K-parameter model
with a random vision tower can learn to read from the pixels, on 112 x 112 images (the tiny
Qwen2.5-VL's largest frame: 4 x 4 merged image tokens, 2 x 2 of them per 56 px quadrant; on 56 px
images, 4 tokens, GRPO did not learn within the demo's budget, experiments/LOG.md):

- yorn: "Is the shape red?" (one big shape; red, or green / blue / yellow)
- mcq: "What colour is the shape?" with the options red, green, blue, yellow (always A-D in that order)
- chart: "How many squares are there?" -> 1-4 squares of one colour, one per quadrant
- grounding: "Find the square." -> the box of the one square, which fills most of one quadrant
- open_ended: "Describe the image in one sentence." -> "A red circle." (colour and shape)

Its answers cycle through the classes with the item's index (yes/no, A-D, 1-4, the quadrant, the
colour), so any 2k items of yorn, or 4k of the others, are exactly balanced: the held-out
majority-class rate is 1/2 for yorn and 1/4 for mcq and chart (`mixedr1.heldout.majority_rates`).

`warmup.jsonl` holds items for an SFT warm-up that teaches the format but not the answers
(`data.sft_warmup_file`): the images and questions of fresh items, each with the answer of ANOTHER
item of its type drawn independently, so the target is a well-formed answer that carries no
information about its image. GRPO then has to learn the answers from the reward alone.

Each item draws from its own `random.Random(f"{seed}:{split}:{type}:{index}")`, so the same seed
gives byte-identical files and adding items never changes earlier ones. A `meta` key records what
was drawn (the loader ignores it; tests check answers against it).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import NamedTuple

from PIL import Image, ImageDraw, ImageFont

from mixedr1.config import PROBLEM_TYPES

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 50, 170),
    "orange": (240, 130, 20),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUND = (255, 255, 255)
CELL = 28  # grid cell side in pixels: shapes sit in distinct cells so they never touch
NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}


class SynthPaths(NamedTuple):
    root: Path  # the data root (images are relative to it)
    train: Path
    heldout: Path


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    """Draw `shape` filling the inclusive pixel box (x0, y0, x1, y1), without anti-aliasing."""
    x0, y0, x1, y1 = box
    if shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "circle":
        draw.ellipse(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)


def _scene(rng: random.Random, objects: list[tuple[str, str]]) -> tuple[Image.Image, list[dict]]:
    """Draw (colour, shape) objects in distinct cells of a random-size image; return the image and,
    per object, its exact pixel box [x1, y1, x2, y2) measured from its own mask."""
    width, height = rng.randint(56, 112), rng.randint(56, 112)
    cols, rows = width // CELL, height // CELL
    if len(objects) > cols * rows:
        raise ValueError(f"{len(objects)} objects do not fit a {cols}x{rows} grid")
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    cells = rng.sample(range(cols * rows), len(objects))
    drawn = []
    for (color, shape), cell in zip(objects, cells):
        side = rng.randint(10, CELL - 4)
        x0 = (cell % cols) * CELL + rng.randint(1, CELL - side - 1)  # >= 1 px gap to the next cell
        y0 = (cell // cols) * CELL + rng.randint(1, CELL - side - 1)
        box = (x0, y0, x0 + side - 1, y0 + side - 1)
        _draw_shape(draw, shape, box, COLORS[color])
        mask = Image.new("L", (width, height), 0)
        _draw_shape(ImageDraw.Draw(mask), shape, box, 255)
        drawn.append({"color": color, "shape": shape, "box": list(mask.getbbox())})
    return image, drawn


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _random_objects(rng: random.Random, n: int) -> list[tuple[str, str]]:
    return [(rng.choice(list(COLORS)), rng.choice(SHAPES)) for _ in range(n)]


def _yorn(rng: random.Random) -> dict:
    objects = _random_objects(rng, rng.randint(1, 3))
    if rng.random() < 0.5:
        color, shape = rng.choice(objects)
    else:
        absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in objects]
        color, shape = rng.choice(absent)
    image, drawn = _scene(rng, objects)
    answer = "yes" if (color, shape) in objects else "no"
    return dict(question=f"Is there {_a(color)} {shape} in the image?", answer=answer, image=image, meta={"objects": drawn})


def _mcq(rng: random.Random) -> dict:
    shape = rng.choice(SHAPES)
    count = rng.randint(1, 4)
    others = [s for s in SHAPES if s != shape]
    objects = [(rng.choice(list(COLORS)), shape) for _ in range(count)]
    objects += [(rng.choice(list(COLORS)), rng.choice(others)) for _ in range(rng.randint(0, 4 - count))]
    rng.shuffle(objects)
    image, drawn = _scene(rng, objects)
    options = sorted([count] + rng.sample([v for v in range(0, 7) if v != count], 3))
    letter = "ABCD"[options.index(count)]
    return dict(
        question=f"How many {shape}s are there in the image?",
        options=[str(v) for v in options],
        answer=letter,
        image=image,
        meta={"objects": drawn, "count": count, "shape": shape},
    )


def _chart(rng: random.Random) -> dict:
    n_bars = rng.randint(3, 4)
    labels = "ABCD"[:n_bars]
    values = [rng.randint(1, 9) for _ in labels]
    width, height = rng.randint(84, 112), rng.randint(84, 112)
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    baseline, top = height - 14, 14
    unit = (baseline - top) / 9
    slot = (width - 8) / n_bars
    draw.line([(4, baseline), (width - 4, baseline)], fill=(0, 0, 0))
    for i, (label, value) in enumerate(zip(labels, values)):
        x0 = int(4 + i * slot + 3)
        x1 = int(4 + (i + 1) * slot - 3)
        y0 = int(round(baseline - value * unit))
        draw.rectangle([x0, y0, x1, baseline - 1], fill=COLORS["blue"])
        draw.text(((x0 + x1) / 2, y0 - 1), str(value), fill=(0, 0, 0), font=font, anchor="mb")
        draw.text(((x0 + x1) / 2, baseline + 1), label, fill=(0, 0, 0), font=font, anchor="mt")
    asked = rng.randrange(n_bars)
    return dict(
        question=f"What is the value of bar {labels[asked]}?",
        answer=str(values[asked]),
        image=image,
        meta={"values": dict(zip(labels, values))},
    )


def _grounding(rng: random.Random) -> dict:
    color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
    other_colors = [c for c in COLORS if c != color]
    objects = [(color, shape)] + [(rng.choice(other_colors), rng.choice(SHAPES)) for _ in range(rng.randint(1, 3))]
    image, drawn = _scene(rng, objects)
    return dict(question=f"Find the {color} {shape}.", answer=drawn[0]["box"], image=image, meta={"objects": drawn})


def caption(objects: list[tuple[str, str]]) -> str:
    """"A red circle and two blue squares on a white background." (groups in order of appearance)"""
    counts: dict[tuple[str, str], int] = {}
    for obj in objects:
        counts[obj] = counts.get(obj, 0) + 1
    parts = [_a(f"{color} {shape}") if n == 1 else f"{NUMBER_WORDS[n]} {color} {shape}s" for (color, shape), n in counts.items()]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text[0].upper() + text[1:] + " on a white background."


def _open_ended(rng: random.Random) -> dict:
    objects = _random_objects(rng, rng.randint(1, 3))
    image, drawn = _scene(rng, objects)
    return dict(question="Describe the image in one sentence.", answer=caption(objects), image=image, meta={"objects": drawn})


MAKERS = {"yorn": _yorn, "mcq": _mcq, "chart": _chart, "grounding": _grounding, "open_ended": _open_ended}


# ---- visual_facts: one fact per item, readable from 112 x 112 pixels --------------------------------
FACT_SIZE = 112  # image side: 4 x 4 merged tokens of the tiny Qwen2.5-VL (28 px each), 2 x 2 per quadrant
QUARTER = FACT_SIZE // 2  # quadrant side
FACT_COLORS = ("red", "green", "blue", "yellow")
QUADRANTS = ((0, 0), (QUARTER, 0), (0, QUARTER), (QUARTER, QUARTER))  # (x, y) of the top-left, top-right, bottom-left, bottom-right quadrant
GROUNDING_MARGIN = 6  # the grounding square fills its quadrant but this many pixels at each side


def _draw_objects(objects: list[tuple[str, str, tuple[int, int, int, int]]]) -> tuple[Image.Image, list[dict]]:
    """Draw (colour, shape, inclusive box) objects on a white FACT_SIZE image; per object, its exact
    pixel box [x1, y1, x2, y2) measured from its own mask."""
    image = Image.new("RGB", (FACT_SIZE, FACT_SIZE), BACKGROUND)
    drawn = []
    for color, shape, box in objects:
        _draw_shape(ImageDraw.Draw(image), shape, box, COLORS[color])
        mask = Image.new("L", image.size, 0)
        _draw_shape(ImageDraw.Draw(mask), shape, box, 255)
        drawn.append({"color": color, "shape": shape, "box": list(mask.getbbox())})
    return image, drawn


def _big_shape(rng: random.Random, color: str) -> tuple[Image.Image, dict]:
    """One shape of 72-104 px in `color` at a random place on a white FACT_SIZE image."""
    shape, side = rng.choice(SHAPES), rng.randint(72, 104)
    x0, y0 = rng.randint(0, FACT_SIZE - side), rng.randint(0, FACT_SIZE - side)
    image, drawn = _draw_objects([(color, shape, (x0, y0, x0 + side - 1, y0 + side - 1))])
    return image, drawn[0]


def _fact_yorn(rng: random.Random, index: int) -> dict:
    color = "red" if index % 2 == 0 else rng.choice(FACT_COLORS[1:])
    image, obj = _big_shape(rng, color)
    return dict(question="Is the shape red?", answer="yes" if color == "red" else "no", image=image, meta={"objects": [obj]})


def _fact_mcq(rng: random.Random, index: int) -> dict:
    image, obj = _big_shape(rng, FACT_COLORS[index % 4])
    return dict(question="What colour is the shape?", options=list(FACT_COLORS), answer="ABCD"[index % 4], image=image,
                meta={"objects": [obj]})


def _fact_chart(rng: random.Random, index: int) -> dict:
    count, color = 1 + index % 4, rng.choice(FACT_COLORS)
    objects = []
    for x, y in rng.sample(QUADRANTS, count):
        side = rng.randint(32, 48)
        x0, y0 = x + rng.randint(1, QUARTER - 1 - side), y + rng.randint(1, QUARTER - 1 - side)  # >= 1 px gap to the next quadrant
        objects.append((color, "square", (x0, y0, x0 + side - 1, y0 + side - 1)))
    image, drawn = _draw_objects(objects)
    return dict(question="How many squares are there?", answer=str(count), image=image, meta={"objects": drawn, "count": count})


def _fact_grounding(rng: random.Random, index: int) -> dict:
    (x, y), m = QUADRANTS[index % 4], GROUNDING_MARGIN
    image, drawn = _draw_objects([(rng.choice(FACT_COLORS), "square", (x + m, y + m, x + QUARTER - 1 - m, y + QUARTER - 1 - m))])
    return dict(question="Find the square.", answer=drawn[0]["box"], image=image, meta={"objects": drawn, "quadrant": index % 4})


def _fact_open_ended(rng: random.Random, index: int) -> dict:
    image, obj = _big_shape(rng, FACT_COLORS[index % 4])
    return dict(question="Describe the image in one sentence.", answer=f"{_a(obj['color'])} {obj['shape']}.".capitalize(),
                image=image, meta={"objects": [obj]})


# A task: problem type -> maker(rng, index) of one item (index: the item's place in its split).
TASKS = {
    "scenes": {ptype: (lambda maker: lambda rng, index: maker(rng))(maker) for ptype, maker in MAKERS.items()},
    "visual_facts": {"yorn": _fact_yorn, "mcq": _fact_mcq, "chart": _fact_chart, "grounding": _fact_grounding,
                     "open_ended": _fact_open_ended},
}


def _write_split(root: Path, split: str, n_per_type: int, seed: int, task: str = "scenes") -> Path:
    """Split "warmup" keeps each item's image and question but gives it the answer of an item drawn
    independently (its own stream `f"{seed}:warmup-answer:{type}:{index}"`, its class at random)."""
    path = root / f"{split}.jsonl"
    (root / "images").mkdir(parents=True, exist_ok=True)
    makers = TASKS[task]
    with open(path, "w", encoding="utf-8") as f:
        for index in range(n_per_type):
            for ptype in PROBLEM_TYPES:
                item = makers[ptype](random.Random(f"{seed}:{split}:{ptype}:{index}"), index)
                if split == "warmup":
                    donor_rng = random.Random(f"{seed}:warmup-answer:{ptype}:{index}")
                    item["meta"] = {**item["meta"], "image_answer": item["answer"]}
                    item["answer"] = makers[ptype](donor_rng, donor_rng.randrange(1 << 30))["answer"]
                record_id = f"{split}-{ptype}-{index:05d}"
                image_rel = f"images/{record_id}.png"
                item.pop("image").save(root / image_rel, format="PNG")
                record = {"id": record_id, "problem_type": ptype, "question": item["question"]}
                if "options" in item:
                    record["options"] = item["options"]
                record.update(answer=item["answer"], images=[image_rel], source="synthetic", meta=item["meta"])
                f.write(json.dumps(record) + "\n")
    return path


def write_synthetic_dataset(out_dir: str | Path, n_per_type: int, seed: int = 0, heldout_per_type: int = 0,
                            task: str = "scenes", warmup_per_type: int = 0) -> SynthPaths:
    """Write `train.jsonl` (n_per_type items of each type), `heldout.jsonl` (heldout_per_type each),
    `warmup.jsonl` (warmup_per_type each, if > 0: answers carry no information, see the module
    docstring) and their images under `out_dir`, for `task` (a key of TASKS). Each split uses its own
    random streams (no overlap by seed)."""
    if n_per_type < 0 or heldout_per_type < 0 or warmup_per_type < 0:
        raise ValueError(f"expected non-negative item counts, got n={n_per_type}, heldout={heldout_per_type}, "
                         f"warmup={warmup_per_type}")
    if task not in TASKS:
        raise ValueError(f"task: expected one of {', '.join(TASKS)}, got {task!r}")
    root = Path(out_dir)
    train = _write_split(root, "train", n_per_type, seed, task)
    heldout = _write_split(root, "heldout", heldout_per_type, seed, task)
    if warmup_per_type:
        _write_split(root, "warmup", warmup_per_type, seed, task)
    return SynthPaths(root, train, heldout)


def _main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mixedr1.data.synth", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (the data root)")
    parser.add_argument("--n", type=int, required=True, help="training items per problem type")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heldout", type=int, default=2, help="held-out items per problem type")
    parser.add_argument("--warmup", type=int, default=0,
                        help="SFT warm-up items per problem type (warmup.jsonl; their answers carry no information)")
    parser.add_argument("--task", choices=list(TASKS), default="scenes",
                        help="scenes: several small shapes and bar charts; visual_facts: one fact per 112 px image (the quick start)")
    args = parser.parse_args(argv)
    paths = write_synthetic_dataset(args.out, args.n, args.seed, args.heldout, args.task, args.warmup)
    print(f"wrote {args.n} x {len(PROBLEM_TYPES)} training items to {paths.train}, "
          f"{args.heldout} x {len(PROBLEM_TYPES)} held-out items to {paths.heldout}"
          + (f" and {args.warmup} x {len(PROBLEM_TYPES)} warm-up items to {paths.root / 'warmup.jsonl'}" if args.warmup else ""))


if __name__ == "__main__":
    _main()
