"""What the code needs to know about each model family, in one place.

Every other module asks this registry instead of testing `model_type` strings itself: which
positions the language model takes, where the vision tower lives, how a batch says which pixel rows
belong to which image, in which frame the model reads and writes grounding boxes, and how to
recognise the family's directories and processors.

| family      | model types            | positions             | image layout            | box frame             |
|-------------|------------------------|-----------------------|-------------------------|-----------------------|
| qwen2_5_vl  | qwen2_5_vl, qwen2_vl   | 3-D mRoPE `[3, N, L]` | `image_grid_thw [I, 3]` | pixels of the resized image |
| internvl    | internvl               | 1-D `[N, L]`          | `tiles_per_image [I]`   | 0-1000 normalised     |
| qwen3_vl    | qwen3_vl, qwen3_vl_moe | 3-D mRoPE `[3, N, L]` | `image_grid_thw [I, 3]` | 0-1000 normalised     |

Qwen3-VL keeps Qwen2.5-VL's position rule for images (its rotary embedding interleaves the (t, h, w)
frequencies inside the model, which the position ids do not see) and adds DeepStack: features of
several vision layers are added to the hidden states of the image tokens after the first decoder
layers (`Family.deepstack`).

This module imports neither torch nor transformers, so the data code and the config can use it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

# InternVL2.5 reads and writes grounding boxes as integers in [0, 1000] of the image's width/height
# (its convention `<box>[[x1, y1, x2, y2]]</box>`), whatever the image size. So does Qwen3-VL
# (`{"bbox_2d": [x1, y1, x2, y2]}`): its README / grounding cookbook (github.com/QwenLM/Qwen3-VL)
# says the default coordinate system "has been changed from the absolute coordinates used in
# Qwen2.5-VL to relative coordinates ranging from 0 to 1000", quoted in QwenLM/Qwen3-VL issue #1741.
NORMALISED_BOX_FRAME = 1000


@dataclass(frozen=True)
class Family:
    name: str  # the `model.family` / `--family` name
    model_types: tuple[str, ...]  # config.json `model_type`s that belong to it
    positions: str  # "mrope": 3-D (t, h, w) rotary positions; "1d": plain token positions
    image_layout: str  # "grid": Qwen's image_grid_thw [I, 3]; "tiles": InternVL's tiles_per_image [I]
    box_frame: str  # "pixels": absolute pixels of the resized image; "normalised": 0-NORMALISED_BOX_FRAME
    vision_attrs: tuple[str, ...]  # attribute of `model.model` (or the model) holding the vision tower
    processor_names: tuple[str, ...]  # class names in a saved (pre)processor config that identify it
    description: str  # for messages and --help
    # Qwen3-VL's DeepStack: the vision tower also returns `deepstack_features` (one [K, D] per level of
    # `vision_config.deepstack_visual_indexes`), which the language model adds to the image tokens'
    # hidden states after decoder layers 0..S-1 (`deepstack_visual_embeds`, `visual_pos_masks`).
    deepstack: bool = False

    @property
    def mrope(self) -> bool:
        return self.positions == "mrope"


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            name="qwen2_5_vl",
            model_types=("qwen2_5_vl", "qwen2_vl"),
            positions="mrope",
            image_layout="grid",
            box_frame="pixels",
            vision_attrs=("visual",),
            processor_names=("Qwen2VLImageProcessor", "Qwen2_5_VLProcessor", "Qwen2VLProcessor", "QwenVLImageOnlyProcessor"),
            description="Qwen2.5-VL / Qwen2-VL",
            deepstack=False,
        ),
        Family(
            name="internvl",
            model_types=("internvl",),
            positions="1d",
            image_layout="tiles",
            box_frame="normalised",
            vision_attrs=("vision_tower",),
            processor_names=("InternVLProcessor", "InternVLImageOnlyProcessor", "GotOcr2ImageProcessor"),
            description="InternVL (transformers' native -hf format)",
            deepstack=False,
        ),
        # Qwen3-VL (dense) and Qwen3-VL-MoE share the vision tower, DeepStack, positions and processor
        # (transformers maps both to Qwen3VLProcessor and Qwen2VL's image processor, with 16 px patches).
        # Its image processor class is Qwen2.5-VL's too, so only the processor class names identify it.
        Family(
            name="qwen3_vl",
            model_types=("qwen3_vl", "qwen3_vl_moe"),
            positions="mrope",
            image_layout="grid",
            box_frame="normalised",
            vision_attrs=("visual",),
            processor_names=("Qwen3VLProcessor", "Qwen3VLImageOnlyProcessor"),
            description="Qwen3-VL",
            deepstack=True,
        ),
    )
}


class UnknownFamily(ValueError):
    pass


def _model_type(obj: Any) -> str:
    if isinstance(obj, str):
        return obj
    config = getattr(obj, "config", obj)  # a model, or its config
    return getattr(config, "model_type", "") or ""


def family_of(obj: Any) -> Family:
    """The family of a model, a model config or a `model_type` string; an error names the supported ones."""
    model_type = _model_type(obj)
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    supported = ", ".join(t for f in FAMILIES.values() for t in f.model_types)
    raise UnknownFamily(f"model_type={model_type!r} is not supported (supported: {supported})")


def maybe_family_of(obj: Any) -> Optional[Family]:
    try:
        return family_of(obj)
    except UnknownFamily:
        return None


def family_of_dir(path: str | Path) -> Optional[Family]:
    """The family of a local model directory (its config.json), or of a processor saved alone (the
    class names in its processor / preprocessor config); None for any other directory."""
    path = Path(path)
    if (path / "config.json").is_file():
        with open(path / "config.json", encoding="utf-8") as f:
            return maybe_family_of(json.load(f).get("model_type", ""))
    for name in ("processor_config.json", "preprocessor_config.json"):
        if (path / name).is_file():
            with open(path / name, encoding="utf-8") as f:
                saved = json.load(f)
            nested = saved.get("image_processor")  # transformers 5 nests the image processor's config
            nested = nested if isinstance(nested, dict) else {}
            family = _family_of_class_names(
                [saved.get("processor_class"), nested.get("image_processor_type"), saved.get("image_processor_type")]
            )
            if family is not None:
                return family
    return None


def family_of_processor(processor: Any) -> Optional[Family]:
    """The family of a processor object (by its class name), or None for one this registry does not know."""
    return _family_of_class_names([type(processor).__name__, type(getattr(processor, "image_processor", None)).__name__])


def _family_of_class_names(names: list[Optional[str]]) -> Optional[Family]:
    """The family of the first of `names` that a family lists, ignoring a `Fast` / `Pil` suffix. Pass
    the processor's class before its image processor's: image processors are shared between families
    (Qwen3-VL uses Qwen2-VL's), processors are not."""
    for name in names:
        if not name:
            continue
        base = name.removesuffix("Fast").removesuffix("Pil")
        for family in FAMILIES.values():
            if base in family.processor_names:
                return family
    return None


def vision_tower(model: Any):
    """The vision encoder of a VLM (with its merger / projector where the family keeps them there):
    `model.model.visual` (Qwen), `model.model.vision_tower` (InternVL), or `vision_model` (remote-code
    InternVL). `model` may also be a wrapper with the Hugging Face model under `.hf`."""
    import torch.nn as nn  # only here: the rest of the registry stays import-light

    model = getattr(model, "hf", model)
    family = maybe_family_of(model)
    names = family.vision_attrs if family else ("visual", "vision_tower", "vision_model")
    for owner in (model, getattr(model, "model", None)):
        for name in names:
            module = getattr(owner, name, None) if owner is not None else None
            if isinstance(module, nn.Module):
                return module
    raise ValueError(
        f"{type(model).__name__}: found no vision module (looked for {', '.join(names)} on the model and on "
        f"model.model)"
    )
