"""Loading the policy and its processor from a local Hugging Face directory, and a tiny test model.

What lives here:

- `load_model` / `load_processor` / `load_policy_and_processor`: local directories only
  (`local_files_only=True`), Qwen2.5-VL (the paper's), Qwen2-VL and InternVL in transformers'
  native format through `AutoModelForImageTextToText`.
- `QwenVLImageOnlyProcessor`: Qwen2.5-VL's processor without the video processor. In transformers 5
  the stock `Qwen2_5_VLProcessor` insists on a video processor, and every video processor needs
  torchvision (which has no CPU wheel on some machines). Mixed-R1 trains on images only, so the
  processor here holds the PIL/numpy image processor and the tokenizer and nothing else. It calls
  the same code as the stock processor for text and images (same `input_ids`, `pixel_values`,
  `image_grid_thw`).
- `InternVLImageOnlyProcessor`: the same idea for InternVL in transformers' native format
  (`InternVLForConditionalGeneration`, model_type "internvl", e.g. InternVL2.5-4B-MPO-hf): the
  PIL/numpy GOT-OCR2 image processor (448 px tiles, InternVL's dynamic tiling with a thumbnail), the
  tokenizer and the chat template, expanding each `<IMG_CONTEXT>` placeholder into
  `<img>` + `<IMG_CONTEXT>` * image_seq_length * tiles + `</img>` exactly as `InternVLProcessor` does.
- `resized_image_size` / `scale_box_to_model_frame`: the processor's own resize rule, so that
  grounding boxes (SPEC §1: original pixels) can be mapped into the frame the model sees (SPEC §2,
  §3: Qwen2.5-VL answers in absolute pixels of the resized image). InternVL sees an image as several
  tiles, so it has no single resized frame; InternVL2.5 was trained to write boxes normalised to
  [0, 1000] (its grounding convention, `<box>[[x1, y1, x2, y2]]</box>`), so its "model frame" is
  1000 x 1000 whatever the image size.
- `build_tiny_model` (and `python -m mixedr1.models tiny --out DIR [--family internvl]`): a
  random-initialised Qwen2.5-VL (or native InternVL) with the real architecture at toy size, a
  byte-level BPE tokenizer trained on the fly, the family's special tokens and chat template. Tests
  and the CPU demo run the real code paths on it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    GenerationConfig,
    InternVLConfig,
    InternVLForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
)
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from mixedr1.config import ModelConfig

# ----------------------------------------------------------------------------------------------
# Choices: dtype and attention kernel


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """"auto" = bf16 on CUDA (what Qwen2.5-VL was trained in), fp32 on CPU (bf16 matmuls are slow there)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in names:
        raise ValueError(f"model.dtype: expected one of 'auto', {', '.join(map(repr, names))}, got {dtype!r}")
    return names[dtype]


def resolve_attn_implementation(attn_implementation: str, device: torch.device) -> str:
    """"auto" = flash_attention_2 when flash_attn is installed and the model runs on CUDA, else sdpa."""
    if attn_implementation != "auto":
        return attn_implementation
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def _local_dir(path: str | Path, what: str, need_config: bool = True) -> Path:
    """A local model directory, or an error naming the path (we never download: SPEC runs are offline)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"{what} directory not found: {path} (expected a local Hugging Face directory with config.json; "
            f"models are never downloaded, copy or `huggingface-cli download` them first)"
        )
    if need_config and not (path / "config.json").is_file():
        raise FileNotFoundError(f"{what} directory {path} has no config.json: is it a Hugging Face model directory?")
    return path


QWEN_VL_MODEL_TYPES = ("qwen2_5_vl", "qwen2_vl")
QWEN_VL_PROCESSOR_NAMES = ("Qwen2VLImageProcessor", "Qwen2_5_VLProcessor", "Qwen2VLProcessor", "QwenVLImageOnlyProcessor")


def _is_qwen_vl_dir(path: Path) -> bool:
    """A Qwen2-VL / Qwen2.5-VL model directory, or a processor saved alone (no config.json)."""
    if (path / "config.json").is_file():
        with open(path / "config.json") as f:
            return json.load(f).get("model_type", "") in QWEN_VL_MODEL_TYPES
    for name in ("processor_config.json", "preprocessor_config.json"):
        if (path / name).is_file() and any(n in (path / name).read_text() for n in QWEN_VL_PROCESSOR_NAMES):
            return True
    return False


INTERNVL_MODEL_TYPES = ("internvl",)
INTERNVL_PROCESSOR_NAMES = ("InternVLProcessor", "InternVLImageOnlyProcessor", "GotOcr2ImageProcessor")


def _is_internvl_dir(path: Path) -> bool:
    """A native-format InternVL model directory, or its processor saved alone (no config.json)."""
    if (path / "config.json").is_file():
        with open(path / "config.json") as f:
            return json.load(f).get("model_type", "") in INTERNVL_MODEL_TYPES
    for name in ("processor_config.json", "preprocessor_config.json"):
        if (path / name).is_file() and any(n in (path / name).read_text() for n in INTERNVL_PROCESSOR_NAMES):
            return True
    return False

# ----------------------------------------------------------------------------------------------
# Model


def load_model(
    path: str | Path,
    *,
    dtype: str | torch.dtype = "auto",
    attn_implementation: str = "auto",
    trust_remote_code: bool = False,
    device: str | torch.device | None = None,
) -> nn.Module:
    """Load a vision-language model from a local directory onto `device` (default CPU), in eval mode.

    Uses `AutoModelForImageTextToText` (Qwen2-VL, Qwen2.5-VL, native InternVL, LLaVA-like). Only with
    `trust_remote_code=True` does a directory whose config transformers does not know fall back to
    `AutoModelForCausalLM` with the directory's own code (e.g. InternVL's original release).
    """
    path = _local_dir(path, "model")
    device = torch.device(device) if device is not None else torch.device("cpu")
    kwargs = dict(
        dtype=resolve_dtype(dtype, device),
        attn_implementation=resolve_attn_implementation(attn_implementation, device),
        local_files_only=True,
        trust_remote_code=trust_remote_code,
    )
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    except ValueError as e:  # "Unrecognized configuration class ..." for remote-code-only models
        if not trust_remote_code:
            raise ValueError(
                f"{path}: transformers has no image-text-to-text class for this config ({e}). If the directory "
                f"ships its own modelling code, set model.trust_remote_code=true."
            ) from None
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return model.to(device).eval()


def vision_tower(model: nn.Module) -> nn.Module:
    """The vision encoder of a VLM: `model.model.visual` (Qwen2/2.5-VL, including its patch merger),
    `model.model.vision_tower` (InternVL, LLaVA-like) or `vision_model` (remote-code InternVL)."""
    for owner in (model, getattr(model, "model", None)):
        for name in ("visual", "vision_tower", "vision_model"):
            module = getattr(owner, name, None) if owner is not None else None
            if isinstance(module, nn.Module):
                return module
    raise ValueError(
        f"{type(model).__name__}: found no vision module (looked for visual, vision_tower, vision_model on the "
        f"model and on model.model); cannot freeze the vision tower of this architecture"
    )


def freeze_vision_tower(model: nn.Module) -> int:
    """Stop gradients through the vision encoder (VLM-R1 / EasyR1 default); returns the frozen parameter count."""
    tower = vision_tower(model)
    count = 0
    for p in tower.parameters():
        p.requires_grad_(False)
        count += p.numel()
    return count


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Non-reentrant checkpointing: works with a frozen vision tower (inputs without grad) and FSDP2.
    The caller must also run training forwards with `use_cache=False`."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # the new name (transformers >= 5.2x); the old one warns
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


# ----------------------------------------------------------------------------------------------
# Processor


def _pil_image_processor_class(family: str, name: str):
    """The PIL/numpy image processor `name` of `transformers.models.<family>` (no torchvision).

    transformers >= 5.1 calls it `<name>Pil` in `image_processing_pil_<family>` (the plain name became
    the torchvision one); earlier releases called the PIL one `<name>` in `image_processing_<family>`.
    """
    try:
        module = importlib.import_module(f"transformers.models.{family}.image_processing_pil_{family}")
        return getattr(module, f"{name}Pil")
    except (ImportError, AttributeError):
        return getattr(importlib.import_module(f"transformers.models.{family}.image_processing_{family}"), name)


class QwenVLImageOnlyProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL's processor with only `image_processor` and `tokenizer` (no video, no torchvision).

    transformers reads a processor's parts from its `__init__` signature (and, in older releases,
    from `attributes`), so declaring two arguments is what removes the video processor. Text and
    image handling are inherited unchanged. Qwen2-VL uses the same processing and token names.
    """

    attributes = ["image_processor", "tokenizer"]  # older transformers read the parts from here

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

    @classmethod
    def from_pretrained(cls, path, min_pixels=None, max_pixels=None, **kwargs):
        """Build from a Qwen2-VL/2.5-VL directory (ours or an official one): the PIL image processor
        from its image-processor config, the tokenizer, and the chat template. Local files only."""
        path = Path(path)
        kwargs["local_files_only"] = True
        pixel_kwargs = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
        image_processor = _pil_image_processor_class("qwen2_vl", "Qwen2VLImageProcessor").from_pretrained(path, **kwargs, **pixel_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        return cls(image_processor, tokenizer, chat_template=_read_chat_template(path, tokenizer))


def _read_chat_template(path: Path, tokenizer) -> Optional[str]:
    """transformers 5 saves `chat_template.jinja`; older checkpoints (e.g. the official Qwen2.5-VL)
    carry `chat_template.json` or keep it in the tokenizer config."""
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text()
    if (path / "chat_template.json").is_file():
        with open(path / "chat_template.json") as f:
            return json.load(f)["chat_template"]
    return getattr(tokenizer, "chat_template", None)


class InternVLImageOnlyProcessor(ProcessorMixin):
    """InternVL's processor with only `image_processor` and `tokenizer` (no video, no torchvision).

    `InternVLProcessor` needs a video processor, and InternVL's video processor needs torchvision.
    The text rule is `InternVLProcessor`'s (transformers 5.17 and 5.23): each `<IMG_CONTEXT>` that the
    chat template writes for an image becomes `<img>` + `<IMG_CONTEXT>` * image_seq_length * tiles +
    `</img>`, where tiles = the image processor's tile count for that image (1, or the dynamic grid
    plus a thumbnail). Images are tiled with `crop_to_patches=True` by default, as `InternVLProcessor`
    passes it (the released preprocessor configs say false and rely on that override).
    Returns `input_ids`, `attention_mask` and `pixel_values [num_tiles, 3, H, W]` (tiles image by image).
    """

    attributes = ["image_processor", "tokenizer"]  # older transformers read the parts from here

    def __init__(self, image_processor=None, tokenizer=None, image_seq_length: int = 256, chat_template=None, **kwargs):
        self.image_seq_length = image_seq_length
        # The native InternVL tokenizers name these as extra special tokens; fall back to the names.
        self.start_image_token = getattr(tokenizer, "start_image_token", None) or "<img>"
        self.end_image_token = getattr(tokenizer, "end_image_token", None) or "</img>"
        self.image_token = getattr(tokenizer, "context_image_token", None) or "<IMG_CONTEXT>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.start_image_token_id = tokenizer.convert_tokens_to_ids(self.start_image_token)
        self.end_image_token_id = tokenizer.convert_tokens_to_ids(self.end_image_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

    def __call__(self, images=None, text=None, crop_to_patches: bool = True, return_tensors=None, **text_kwargs) -> BatchFeature:
        """Tokenise `text` (a string or a list), with the images' placeholders expanded in order of
        appearance over all texts. `text_kwargs` go to the tokenizer (padding, padding_side, ...)."""
        if text is None:
            raise ValueError("InternVLImageOnlyProcessor: text is required")
        texts = [text] if isinstance(text, str) else list(text)
        images = [] if images is None else ([images] if not isinstance(images, (list, tuple)) else list(images))
        placeholders = sum(t.count(self.image_token) for t in texts)
        if placeholders != len(images):
            raise ValueError(f"InternVLImageOnlyProcessor: {placeholders} {self.image_token} placeholders in the text but {len(images)} images")
        data = {}
        tiles: list[int] = []
        if images:
            vision = self.image_processor(images, crop_to_patches=crop_to_patches, return_tensors="pt")
            tiles = [int(n) for n in vision["num_patches"]]  # [num_images]
            data["pixel_values"] = vision["pixel_values"]  # [sum(tiles), 3, H, W]
        expanded, image_index = [], 0
        for t in texts:
            parts = t.split(self.image_token)
            out = parts[0]
            for part in parts[1:]:
                context = self.image_token * (self.image_seq_length * tiles[image_index])
                out += f"{self.start_image_token}{context}{self.end_image_token}{part}"
                image_index += 1
            expanded.append(out)
        data.update(self.tokenizer(expanded, return_tensors=return_tensors, **text_kwargs))
        return BatchFeature(data=data, tensor_type=return_tensors)

    @property
    def model_input_names(self):
        return list(self.tokenizer.model_input_names) + ["pixel_values"]

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        """Build from a native InternVL directory (ours or an official `-hf` one): the PIL image
        processor, the tokenizer, the chat template, and `image_seq_length` from the processor
        config (else the model config). Local files only."""
        path = Path(path)
        kwargs["local_files_only"] = True
        image_processor = _pil_image_processor_class("got_ocr2", "GotOcr2ImageProcessor").from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        image_seq_length = None
        if (path / "processor_config.json").is_file():
            with open(path / "processor_config.json") as f:
                image_seq_length = json.load(f).get("image_seq_length")
        if image_seq_length is None and (path / "config.json").is_file():
            image_seq_length = getattr(AutoConfig.from_pretrained(path, local_files_only=True), "image_seq_length", None)
        if image_seq_length is None:
            raise ValueError(f"{path}: no image_seq_length in processor_config.json or config.json (InternVL needs it)")
        return cls(image_processor, tokenizer, image_seq_length=int(image_seq_length),
                   chat_template=_read_chat_template(path, tokenizer))


def load_processor(
    path: str | Path,
    *,
    min_pixels: Optional[int] = None,
    max_pixels: Optional[int] = None,
    trust_remote_code: bool = False,
):
    """The processor of a local model directory.

    Qwen2-VL / Qwen2.5-VL get `QwenVLImageOnlyProcessor` (PIL image processor, no torchvision), with
    `min_pixels` / `max_pixels` (bounds on H*W after resize) set on the image processor when given.
    Native InternVL gets `InternVLImageOnlyProcessor` (same reason). Other families go through
    `AutoProcessor` (their video processors may need torchvision).
    """
    path = _local_dir(path, "processor", need_config=False)
    if _is_qwen_vl_dir(path):
        return QwenVLImageOnlyProcessor.from_pretrained(path, min_pixels=min_pixels, max_pixels=max_pixels)
    if min_pixels is not None or max_pixels is not None:
        raise ValueError(f"{path}: model.min_pixels / model.max_pixels only apply to Qwen2-VL / Qwen2.5-VL processors")
    if _is_internvl_dir(path):
        return InternVLImageOnlyProcessor.from_pretrained(path)
    try:
        return AutoProcessor.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    except ImportError as e:
        raise ImportError(f"{path}: loading this processor failed ({e}); its video processor may need torchvision") from e


def load_policy_and_processor(model_cfg: ModelConfig, device: str | torch.device, *, tiny_dir: str | Path | None = None):
    """The policy (with the config's freezing and checkpointing applied) and its processor.

    `model_cfg.path == "tiny"` builds the random tiny Qwen2.5-VL into `tiny_dir` (or a fresh temporary
    folder) unless a model is already there, so the reference model can be loaded from the same place.
    Returns `(model, processor, path)`.
    """
    path = Path(model_cfg.path)
    if model_cfg.path == "tiny":
        import tempfile

        path = Path(tiny_dir) if tiny_dir is not None else Path(tempfile.mkdtemp(prefix="mixedr1-tiny-"))
        if not (path / "config.json").is_file():
            build_tiny_model(path)
    model = load_model(
        path,
        dtype=model_cfg.dtype,
        attn_implementation=model_cfg.attn_implementation,
        trust_remote_code=model_cfg.trust_remote_code,
        device=device,
    )
    if model_cfg.freeze_vision:
        freeze_vision_tower(model)
    if model_cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    processor = load_processor(
        path,
        min_pixels=model_cfg.min_pixels,
        max_pixels=model_cfg.max_pixels,
        trust_remote_code=model_cfg.trust_remote_code,
    )
    return model, processor, path


# ----------------------------------------------------------------------------------------------
# The model's image frame (SPEC §2, §3)


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


# InternVL2.5 reads and writes grounding boxes as integers in [0, 1000] of the image's width/height.
INTERNVL_BOX_FRAME = 1000


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
    InternVL: the 1000 x 1000 frame of its normalised box coordinates (see the module docstring).
    Processors that resize to a fixed size (`size = {height, width}`) return that size.
    """
    if isinstance(processor, InternVLImageOnlyProcessor):
        return INTERNVL_BOX_FRAME, INTERNVL_BOX_FRAME
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


# ----------------------------------------------------------------------------------------------
# Tiny Qwen2.5-VL for tests and the CPU demo

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen2.5-VL's chat template, reduced to what this codebase uses (text, images, videos; no tools).
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# A small corpus so that the prompt and answer vocabulary become single, cheap tokens.
_TINY_CORPUS = [
    "<think> </think> <answer> </answer>",
    "<think>Looking at the image, the answer is yes.</think><answer>yes</answer>",
    "<think>I count the shapes in the picture.</think><answer>B</answer>",
    "Output the thinking process in <think> </think> and the final answer in <answer> </answer> tags.",
    "Answer with yes or no. Answer with the option letter. Answer with a number or short text.",
    "the box [x1, y1, x2, y2] in absolute pixel coordinates of the image",
    "Is there a red circle? How many squares are there? What is the value of bar B?",
    "Locate the blue square. Describe the image in one sentence.",
    "A red circle and two blue squares on a white background.",
    "A. 1\nB. 2\nC. 3\nD. 4\nE. 5",
    "yes no Yes No A B C D E (A) (B) (C) (D) (E) A. B. C. D. E.",
    "0 1 2 3 4 5 6 7 8 9 10 12 25 50 100 [ ] ( ) { } , . : ; ? ! % $ - + = \" '",
    '{"bbox_2d": [10, 20, 30, 40]} [12, 34, 56, 78]',
    "red green blue yellow purple orange black white circle square triangle bar chart value",
    "one two three four five shape shapes object objects image picture background",
    "The quick brown fox jumps over the lazy dog. There is a small circle in the top left corner.",
    "First, second, third. So the answer is the largest value in the chart.",
]


def _train_tiny_tokenizer(vocab_size: int = 800, extra_special_tokens: Sequence[str] = ()):
    """Byte-level BPE trained on `_TINY_CORPUS` (any text round-trips), with Qwen's special tokens
    (and `extra_special_tokens` after them: InternVL's image markers)."""
    special_tokens = QWEN_SPECIAL_TOKENS + list(extra_special_tokens)
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    # Digits are split one by one like Qwen2's pre-tokenizer, so any number costs len(digits) tokens.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_TINY_CORPUS * 20, trainer)
    # The reasoning tags are whole tokens (as plain, non-special added tokens: decoding keeps them),
    # so a random tiny policy can emit the format of SPEC §3 by chance within a few tokens.
    tokenizer.add_tokens([AddedToken(t, normalized=False) for t in ("<think>", "</think>", "<answer>", "</answer>")])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=special_tokens[1:],
        model_max_length=32768,
    )


def _save_random_model(model_class, config, tokenizer, seed: int, out_dir: Path) -> None:
    """Initialise `model_class(config)` from `seed` and save it with a ChatML generation config
    (EOS = <|im_end|> or <|endoftext|>, padding <|endoftext|>)."""
    end_of_text = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    torch.manual_seed(seed)
    model = model_class(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=end_of_text,
        eos_token_id=[tokenizer.convert_tokens_to_ids("<|im_end|>"), end_of_text],
        pad_token_id=end_of_text,
    )
    model.save_pretrained(out_dir)


def build_tiny_model(out_dir: str | Path, seed: int = 0, max_pixels: int = 28 * 28 * 16, family: str = "qwen2_5_vl") -> Path:
    """Write a random tiny Qwen2.5-VL (weights, tokenizer, chat template, generation config, image-only
    processor) to `out_dir`; a few MB. `max_pixels` caps the resized image at 16 merged tokens.
    `family="internvl"` writes a tiny native InternVL instead (`build_tiny_internvl`)."""
    if family == "internvl":
        return build_tiny_internvl(out_dir, seed=seed)
    if family != "qwen2_5_vl":
        raise ValueError(f"build_tiny_model: family must be 'qwen2_5_vl' or 'internvl', got {family!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tiny_tokenizer()
    token_id = tokenizer.convert_tokens_to_ids
    hidden, heads = 64, 4
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=heads,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            # M-RoPE splits head_dim/2 = 8 rotary frequencies over (temporal, height, width).
            rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]},
            bos_token_id=token_id("<|endoftext|>"),
            eos_token_id=token_id("<|im_end|>"),
            pad_token_id=token_id("<|endoftext|>"),
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,
            fullatt_block_indexes=[1],
            out_hidden_size=hidden,
        ),
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    _save_random_model(Qwen2_5_VLForConditionalGeneration, config, tokenizer, seed, out_dir)

    image_processor = _pil_image_processor_class("qwen2_vl", "Qwen2VLImageProcessor")(min_pixels=28 * 28 * 4, max_pixels=max_pixels)
    processor = QwenVLImageOnlyProcessor(image_processor, tokenizer, chat_template=QWEN_CHAT_TEMPLATE)
    processor.save_pretrained(out_dir)
    return out_dir


INTERNVL_SPECIAL_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>"]

# InternVL2.5's chat format (ChatML, as its Qwen2.5 / InternLM2.5 language models) with one
# `<IMG_CONTEXT>` placeholder per image, as the native `-hf` templates write it. The released template
# has a long Chinese default system prompt; the tiny one uses a short English one.
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<IMG_CONTEXT>\n"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_internvl(out_dir: str | Path, seed: int = 0, tile_size: int = 56, max_tiles: int = 4) -> Path:
    """Write a random tiny InternVL in transformers' native format (InternVLForConditionalGeneration
    with a Qwen2 language model, tokenizer with `<img>` / `</img>` / `<IMG_CONTEXT>`, chat template,
    generation config, image-only processor) to `out_dir`.

    Tiles are `tile_size` px (InternVL: 448) cut into 14 px patches; the pixel shuffle (downsample 0.5)
    leaves (tile_size / 28)**2 image tokens per tile: 4 for 56 px. Dynamic tiling is on, up to
    `max_tiles` tiles plus a thumbnail, so multi-tile images are exercised too.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tiny_tokenizer(extra_special_tokens=INTERNVL_SPECIAL_TOKENS)
    token_id = tokenizer.convert_tokens_to_ids
    patch_size, downsample_ratio = 14, 0.5
    image_seq_length = int((tile_size // patch_size) ** 2 * downsample_ratio**2)
    config = InternVLConfig(
        vision_config=dict(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            image_size=[tile_size, tile_size], patch_size=[patch_size, patch_size],
        ),
        text_config=dict(
            model_type="qwen2",
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            bos_token_id=token_id("<|endoftext|>"),
            eos_token_id=token_id("<|im_end|>"),
            pad_token_id=token_id("<|endoftext|>"),
            tie_word_embeddings=False,
        ),
        image_token_id=token_id("<IMG_CONTEXT>"),
        image_seq_length=image_seq_length,
        downsample_ratio=downsample_ratio,
        tie_word_embeddings=False,
    )
    _save_random_model(InternVLForConditionalGeneration, config, tokenizer, seed, out_dir)

    image_processor = _pil_image_processor_class("got_ocr2", "GotOcr2ImageProcessor")(
        size={"height": tile_size, "width": tile_size}, crop_to_patches=True, min_patches=1, max_patches=max_tiles,
    )
    processor = InternVLImageOnlyProcessor(image_processor, tokenizer, image_seq_length=image_seq_length,
                                           chat_template=INTERNVL_CHAT_TEMPLATE)
    processor.save_pretrained(out_dir)
    return out_dir


def _main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mixedr1.models", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("tiny", help="write a random tiny Qwen2.5-VL (or --family internvl) to --out")
    tiny.add_argument("--out", required=True)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--family", choices=("qwen2_5_vl", "internvl"), default="qwen2_5_vl")
    args = parser.parse_args(argv)
    path = build_tiny_model(args.out, seed=args.seed, family=args.family)
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    name = "InternVL" if args.family == "internvl" else "Qwen2.5-VL"
    print(f"wrote a tiny {name} to {path} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    _main()
