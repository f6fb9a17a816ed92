"""The frame in which the model sees an image, and grounding boxes mapped into it (docs/method.md §2, §3).

Grounding ground truth is stored in the ORIGINAL image's pixels (docs/method.md §1). Qwen2.5-VL reads and
writes absolute pixels of the image AFTER the processor's resize, so `resized_image_size` runs the
processor's own resize rule and `scale_box_to_model_frame` maps a box into that frame. InternVL sees
an image as several tiles and has no single resized frame: it writes boxes normalised to 0-1000
(`mixedr1.families.NORMALISED_BOX_FRAME`), so its "model frame" is 1000 x 1000 whatever the size.
Qwen3-VL, though it resizes like Qwen2.5-VL, also reads and writes 0-1000 boxes (its README).
Which convention a processor follows is the family's (`mixedr1.families`).
"""

from __future__ import annotations

import math
import sys
from typing import Sequence

from mixedr1.families import NORMALISED_BOX_FRAME, family_of_processor


def uses_normalised_boxes(processor) -> bool:
    """True when the processor's family reads and writes boxes in the 0-1000 frame (InternVL, Qwen3-VL)."""
    family = family_of_processor(processor)
    return family is not None and family.box_frame == "normalised"


def _smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's resize rule, used only when the processor's module does not expose its own copy:
    both sides multiples of `factor`, H*W within [min_pixels, max_pixels], aspect ratio kept."""
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def pixel_bounds(image_processor) -> tuple[int, int]:
    """(min_pixels, max_pixels) of a Qwen image processor, across transformers versions."""
    size = getattr(image_processor, "size", None) or {}
    get = size.get if isinstance(size, dict) else lambda k: getattr(size, k, None)
    lo = get("shortest_edge") or get("min_pixels") or getattr(image_processor, "min_pixels", None)
    hi = get("longest_edge") or get("max_pixels") or getattr(image_processor, "max_pixels", None)
    if lo is None or hi is None:
        raise ValueError(f"{type(image_processor).__name__}: cannot read min/max pixels from size={size!r}")
    return int(lo), int(hi)


def resized_image_size(processor, height: int, width: int) -> tuple[int, int]:
    """(new_h, new_w) of a `height` x `width` image after the processor's resize: the frame in which
    Qwen2.5-VL reads and writes absolute box coordinates.

    Qwen: `smart_resize` with factor = patch_size * merge_size and the processor's min/max pixels
    (taken from the processor's own module, so it is the rule the processor actually runs).
    InternVL, Qwen3-VL: the 1000 x 1000 frame of their normalised box coordinates (see the module docstring).
    Processors that resize to a fixed size (`size = {height, width}`) return that size.
    """
    if uses_normalised_boxes(processor):
        return NORMALISED_BOX_FRAME, NORMALISED_BOX_FRAME
    image_processor = getattr(processor, "image_processor", processor)
    patch_size = getattr(image_processor, "patch_size", None)
    merge_size = getattr(image_processor, "merge_size", None)
    if patch_size is not None and merge_size is not None:
        if not getattr(image_processor, "do_resize", True):
            return height, width
        rule = getattr(sys.modules.get(type(image_processor).__module__), "smart_resize", _smart_resize)
        min_pixels, max_pixels = pixel_bounds(image_processor)
        new_h, new_w = rule(height, width, factor=patch_size * merge_size, min_pixels=min_pixels, max_pixels=max_pixels)
        return int(new_h), int(new_w)
    size = getattr(image_processor, "size", None) or {}
    get = size.get if isinstance(size, dict) else lambda k: getattr(size, k, None)
    if get("height") and get("width"):
        return int(get("height")), int(get("width"))
    raise NotImplementedError(f"{type(image_processor).__name__}: unknown resize rule; cannot map boxes into the model's frame")


def resize_to_model_frame(processor, image):
    """The PIL image resized as the model sees it (same size and resampling filter as the processor):
    to draw predicted boxes on, or to check where a box lands."""
    from PIL import Image

    image_processor = getattr(processor, "image_processor", processor)
    new_h, new_w = resized_image_size(processor, image.height, image.width)
    resample = Image.Resampling(int(getattr(image_processor, "resample", Image.Resampling.BICUBIC)))
    return image.resize((new_w, new_h), resample=resample)


def scale_box_to_model_frame(
    box: Sequence[float], orig_hw: tuple[int, int], new_hw: tuple[int, int]
) -> list[float]:
    """Map `[x1, y1, x2, y2]` from the original image's pixels to the resized image's pixels.

    Coordinates are continuous pixel edges (PIL's crop convention: a box around pixels 10..19 is
    [10, 20]), so the map is a pure per-axis scale: x * new_w / orig_w, y * new_h / orig_h.
    """
    (orig_h, orig_w), (new_h, new_w) = orig_hw, new_hw
    sx, sy = new_w / orig_w, new_h / orig_h
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1 * sx, y1 * sy, x2 * sx, y2 * sy]
