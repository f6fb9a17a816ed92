"""Image-only processors (no torchvision) and `load_processor`.

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
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Optional

from transformers import AutoConfig, AutoProcessor, AutoTokenizer, Qwen2_5_VLProcessor
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from mixedr1.families import FAMILIES, family_of_dir


def local_dir(path: str | Path, what: str, need_config: bool = True) -> Path:
    """A local model directory, or an error naming the path (we never download: runs are offline)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"{what} directory not found: {path} (expected a local Hugging Face directory with config.json; "
            f"models are never downloaded, copy or `huggingface-cli download` them first)"
        )
    if need_config and not (path / "config.json").is_file():
        raise FileNotFoundError(f"{what} directory {path} has no config.json: is it a Hugging Face model directory?")
    return path



def pil_image_processor_class(family: str, name: str):
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
        image_processor = pil_image_processor_class("qwen2_vl", "Qwen2VLImageProcessor").from_pretrained(path, **kwargs, **pixel_kwargs)
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
        image_processor = pil_image_processor_class("got_ocr2", "GotOcr2ImageProcessor").from_pretrained(path, **kwargs)
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
    path = local_dir(path, "processor", need_config=False)
    family = family_of_dir(path)
    if family is FAMILIES["qwen2_5_vl"]:
        return QwenVLImageOnlyProcessor.from_pretrained(path, min_pixels=min_pixels, max_pixels=max_pixels)
    if min_pixels is not None or max_pixels is not None:
        raise ValueError(f"{path}: model.min_pixels / model.max_pixels only apply to Qwen2-VL / Qwen2.5-VL processors")
    if family is FAMILIES["internvl"]:
        return InternVLImageOnlyProcessor.from_pretrained(path)
    try:
        return AutoProcessor.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    except ImportError as e:
        raise ImportError(f"{path}: loading this processor failed ({e}); its video processor may need torchvision") from e
