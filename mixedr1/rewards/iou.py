"""Grounding reward (docs/method.md §3): IoU of the predicted box with the ground truth in the model's frame.

The prediction may be a `[x1, y1, x2, y2]` list, a `{"bbox_2d": [...]}` object, or a list of either
(the first is taken); it is read with `json.loads` (never evaluated), falling back to the first
bracketed group of four numbers in the text. Corners given in swapped order describe the same
rectangle and are reordered. An unparsable, non-finite or zero-area box scores 0.

The ground truth is stored in the ORIGINAL image's pixels (docs/method.md §1); the model sees the image after
the processor's resize, so the truth is scaled into that frame first (`scale_box`).
"""

from __future__ import annotations

import json
import math
import re

Box = tuple[float, float, float, float]

_NUM = r"([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)"  # unambiguous: no backtracking blow-up
_BRACKETED = re.compile(r"\[\s*" + r"\s*,\s*".join([_NUM] * 4) + r"\s*\]")


def _as_box(value) -> Box | None:
    if isinstance(value, dict):
        value = value.get("bbox_2d", value.get("bbox"))
    if isinstance(value, (list, tuple)) and len(value) == 4:
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            try:
                box = tuple(float(v) for v in value)
            except OverflowError:  # a JSON integer of 309+ digits
                return None
            return box if all(math.isfinite(v) for v in box) else None
    return None


def parse_box(text: str) -> Box | None:
    """The first box a prediction states, as floats (x1, y1, x2, y2) with x1 ≤ x2, y1 ≤ y2; or None."""
    if not isinstance(text, str) or len(text) > 100_000:
        return None
    box = None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        value = None
    if value is not None:
        box = _as_box(value)
        if box is None and isinstance(value, list) and value:
            box = _as_box(value[0])
    if box is None:
        match = _BRACKETED.search(text)
        if match is not None:
            box = _as_box([float(g) for g in match.groups()])
    if box is None:
        return None
    x1, y1, x2, y2 = box
    return (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))


def scale_box(box, orig_hw: tuple[int, int], new_hw: tuple[int, int]) -> Box:
    """Map a box from an image of size `orig_hw` (H, W) into the same image resized to `new_hw`."""
    (oh, ow), (nh, nw) = orig_hw, new_hw
    sx, sy = nw / ow, nh / oh
    x1, y1, x2, y2 = (float(v) for v in box)
    return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0 when either has no area."""
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    if area_a <= 0 or area_b <= 0:
        return 0.0
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = area_a + area_b - inter
    iou = inter / union if union > 0 else 0.0
    return iou if math.isfinite(iou) else 0.0


def iou_reward(prediction: str, truth_box, orig_hw=None, model_hw=None) -> float:
    """R_iou ∈ [0, 1]. `truth_box` in original pixels; scaled when both sizes are given."""
    pred = parse_box(prediction)
    if pred is None:
        return 0.0
    gold = tuple(float(v) for v in truth_box)
    if orig_hw is not None and model_hw is not None:
        gold = scale_box(gold, orig_hw, model_hw)
    return box_iou(pred, gold)
