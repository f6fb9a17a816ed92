"""Image-only processors (no torchvision) and `load_processor`.

- `QwenVLImageOnlyProcessor`: Qwen2.5-VL's processor without the video processor. In transformers 5
  the stock `Qwen2_5_VLProcessor` insists on a video processor, and every video processor needs
  torchvision (which has no CPU wheel on some machines). Mixed-R1 trains on images only, so the
  processor here holds the PIL/numpy image processor and the tokenizer and nothing else. It calls
  the same code as the stock processor for text and images (same `input_ids`, `pixel_values`,
  `image_grid_thw`).
- `Qwen3VLImageOnlyProcessor`: the same for Qwen3-VL. `Qwen3VLProcessor` (transformers 5.17 and
  5.23) expands images exactly as `Qwen2_5_VLProcessor` does (`<|image_pad|>` * t*h*w / merge**2,
  with Qwen2-VL's image processor, here with 16 px patches and mean = std = 0.5 from the
  checkpoint's config); it only differs for videos (timestamps) and in not asking the tokenizer for
  `token_type_ids`, which Qwen's tokenizers never return. So the class is the Qwen2.5-VL one under
  its own name: the name is what tells the families apart (`mixedr1.families`: Qwen3-VL writes
  boxes in 0-1000, Qwen2.5-VL in pixels, with the same image processor class).
- `InternVLImageOnlyProcessor`: the same idea for InternVL in transformers' native format
  (`InternVLForConditionalGeneration`, model_type "internvl", e.g. InternVL2.5-4B-MPO-hf): the
  PIL/numpy GOT-OCR2 image processor (448 px tiles, InternVL's dynamic tiling with a thumbnail), the
  tokenizer and the chat template, expanding each `<IMG_CONTEXT>` placeholder into
  `<img>` + `<IMG_CONTEXT>` * image_seq_length * tiles + `</img>` exactly as `InternVLProcessor` does.

Saving (`save_pretrained`, so checkpoints and the tiny models) writes the files a released model
directory has, naming transformers' own classes and never ours, so that `AutoProcessor`, vLLM and
lmms-eval load a checkpoint as they load its base model: `preprocessor_config.json` (the image
processor, e.g. "Qwen2VLImageProcessor", with "processor_class": "Qwen2_5_VLProcessor"), the tokenizer
files (same "processor_class"), `chat_template.jinja`, and for InternVL `processor_config.json`
("image_seq_length", "processor_class": "InternVLProcessor"), as OpenGVLab/InternVL3-1B-hf has. No
`video_preprocessor_config.json`: the released Qwen2.5-VL and InternVL3-hf directories have none,
and transformers' video processors fall back to `preprocessor_config.json` (the image settings).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Optional

from transformers import AutoConfig, AutoProcessor, AutoTokenizer, Qwen2_5_VLProcessor
from transformers.feature_extraction_utils import BatchFeature
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES
from transformers.processing_utils import ProcessorMixin

from mixedr1.families import family_of_dir


def local_dir(path: str | Path, what: str, need_config: bool = True) -> Path:
    """A local model directory, or an error naming the path (we never download: runs are offline)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"{what} directory not found: {path} (expected a local Hugging Face directory with config.json; "
            f"models are never downloaded at run time: fetch one first, e.g. `hf download Qwen/Qwen2.5-VL-7B-Instruct "
            f"--local-dir {path}`)"
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

    # The stock processor the saved files name when the directory has no config.json to ask.
    stock_processor_class = "Qwen2_5_VLProcessor"

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs) -> list[str]:
        """Write the processor files of a released Qwen2.5-VL directory (module docstring), naming
        Qwen2VLImageProcessor and the stock processor of the model saved there (Qwen2VLProcessor
        for a Qwen2-VL checkpoint). The pixel bounds are written twice, as the released file has
        them: `size` (transformers 5) and top-level `min_pixels` / `max_pixels` (older readers)."""
        image_config = json.loads(self.image_processor.to_json_string())
        size = image_config.get("size") or {}
        if "shortest_edge" in size and "longest_edge" in size:
            image_config.update(min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"])
        return _save_in_stock_layout(
            self, save_directory, push_to_hub, image_config, "Qwen2VLImageProcessor", self.stock_processor_class
        )


class Qwen3VLImageOnlyProcessor(QwenVLImageOnlyProcessor):
    """Qwen3-VL's processor with only `image_processor` and `tokenizer` (see the module docstring:
    the text and image handling of `Qwen3VLProcessor` are Qwen2.5-VL's)."""

    stock_processor_class = "Qwen3VLProcessor"  # saved files name it: it tells Qwen3-VL from Qwen2.5-VL


def _read_chat_template(path: Path, tokenizer) -> Optional[str]:
    """transformers 5 saves `chat_template.jinja`; older checkpoints (e.g. the official Qwen2.5-VL)
    carry `chat_template.json` or keep it in the tokenizer config."""
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text()
    if (path / "chat_template.json").is_file():
        with open(path / "chat_template.json") as f:
            return json.load(f)["chat_template"]
    return getattr(tokenizer, "chat_template", None)


def _stock_processor_class(save_directory: Path, default: str) -> str:
    """The processor class transformers registers for the model whose config.json is already in
    `save_directory` (checkpoints and the tiny models save the model first), else `default`."""
    if (save_directory / "config.json").is_file():
        with open(save_directory / "config.json", encoding="utf-8") as f:
            name = PROCESSOR_MAPPING_NAMES.get(json.load(f).get("model_type", ""))
        if isinstance(name, str):
            return name
    return default


def _write_json(path: Path, content: dict) -> str:
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")  # as transformers writes them
    return str(path)


def _save_in_stock_layout(
    processor: ProcessorMixin,
    save_directory,
    push_to_hub: bool,
    image_config: dict,
    image_processor_type: str,
    default_processor_class: str,
    processor_config: Optional[dict] = None,
) -> list[str]:
    """Write an image-only processor as transformers' own processor appears in a released model
    directory (module docstring): `preprocessor_config.json` = `image_config` with the stock class
    names, the tokenizer files, `chat_template.jinja`, and `processor_config` (when given) as the
    legacy flat `processor_config.json`. Returns the files written."""
    if push_to_hub:
        raise ValueError(f"{type(processor).__name__}.save_pretrained writes a local directory only (push_to_hub is not supported)")
    save_directory = Path(save_directory)
    save_directory.mkdir(parents=True, exist_ok=True)
    processor_class = _stock_processor_class(save_directory, default_processor_class)
    image_config = {**image_config, "image_processor_type": image_processor_type, "processor_class": processor_class}
    written = [_write_json(save_directory / "preprocessor_config.json", image_config)]
    if processor_config is not None:
        written.append(_write_json(save_directory / "processor_config.json", {**processor_config, "processor_class": processor_class}))
    else:
        # transformers 5 reads a (nested) processor_config.json before preprocessor_config.json, so a
        # stale one from an earlier save would shadow the file just written.
        (save_directory / "processor_config.json").unlink(missing_ok=True)
    processor.tokenizer._set_processor_class(processor_class)  # what ProcessorMixin.save_pretrained does
    written += [str(f) for f in processor.tokenizer.save_pretrained(save_directory)]
    if isinstance(processor.chat_template, str):
        (save_directory / "chat_template.jinja").write_text(processor.chat_template, encoding="utf-8")
        written.append(str(save_directory / "chat_template.jinja"))
    return written


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

    # The stock processor the saved files name when the directory has no config.json to ask.
    stock_processor_class = "InternVLProcessor"

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs) -> list[str]:
        """Write the processor files of a released InternVL `-hf` directory (module docstring):
        GotOcr2ImageProcessor and InternVLProcessor, whose `image_seq_length` goes into the flat
        `processor_config.json` as in OpenGVLab/InternVL3-1B-hf."""
        return _save_in_stock_layout(
            self, save_directory, push_to_hub, json.loads(self.image_processor.to_json_string()),
            "GotOcr2ImageProcessor", self.stock_processor_class, {"image_seq_length": self.image_seq_length},
        )


# The image-only processor of each family of `mixedr1.families`, by family name.
IMAGE_ONLY_PROCESSORS = {
    "qwen2_5_vl": QwenVLImageOnlyProcessor,
    "qwen3_vl": Qwen3VLImageOnlyProcessor,
    "internvl": InternVLImageOnlyProcessor,
}


def load_processor(
    path: str | Path,
    *,
    min_pixels: Optional[int] = None,
    max_pixels: Optional[int] = None,
    trust_remote_code: bool = False,
):
    """The processor of a local model directory.

    Every family of `mixedr1.families` gets its image-only processor (`IMAGE_ONLY_PROCESSORS`: PIL
    image processor, no torchvision). The Qwen families (image layout "grid": Qwen2-VL, Qwen2.5-VL,
    Qwen3-VL) take `min_pixels` / `max_pixels` (bounds on H*W after resize), set on the image
    processor when given. Other directories go through `AutoProcessor` (their video processors may
    need torchvision).
    """
    path = local_dir(path, "processor", need_config=False)
    family = family_of_dir(path)
    if family is not None and family.image_layout == "grid":
        return IMAGE_ONLY_PROCESSORS[family.name].from_pretrained(path, min_pixels=min_pixels, max_pixels=max_pixels)
    if min_pixels is not None or max_pixels is not None:
        raise ValueError(f"{path}: model.min_pixels / model.max_pixels only apply to Qwen-VL processors (Qwen2-VL, Qwen2.5-VL, Qwen3-VL)")
    if family is not None:
        return IMAGE_ONLY_PROCESSORS[family.name].from_pretrained(path)
    try:
        return AutoProcessor.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    except ImportError as e:
        raise ImportError(f"{path}: loading this processor failed ({e}); its video processor may need torchvision") from e
