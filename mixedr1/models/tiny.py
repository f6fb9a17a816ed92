"""Random tiny models of each family, for tests and the CPU demo.

`build_tiny_model(out_dir, family=...)` (and `python -m mixedr1.models tiny --out DIR [--family NAME]`)
writes a random-initialised model with the family's real architecture at toy size, a byte-level BPE
tokenizer trained on the fly, the family's special tokens, chat template and generation config, and
its image-only processor. Tests and the demo run the real code paths on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from transformers import (
    GenerationConfig,
    InternVLConfig,
    InternVLForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)

from mixedr1.models.processors import (
    InternVLImageOnlyProcessor,
    Qwen3VLImageOnlyProcessor,
    QwenVLImageOnlyProcessor,
    pil_image_processor_class,
)

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
    # so a random tiny policy can emit the format of docs/method.md §3 by chance within a few tokens.
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


def build_tiny_model(out_dir: str | Path, seed: int = 0, family: str = "qwen2_5_vl") -> Path:
    """Write a random tiny model of `family` (a name of `mixedr1.families.FAMILIES`) to `out_dir`."""
    if family not in TINY_BUILDERS:
        raise ValueError(f"build_tiny_model: family must be one of {', '.join(TINY_BUILDERS)}, got {family!r}")
    return TINY_BUILDERS[family](out_dir, seed=seed)


def _text_config(tokenizer, **overrides) -> dict:
    """The tiny language model every family shares (2 layers, hidden 64, GQA 4/2 heads), with ChatML's
    ids, and `overrides` on top."""
    token_id = tokenizer.convert_tokens_to_ids
    return dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        bos_token_id=token_id("<|endoftext|>"), eos_token_id=token_id("<|im_end|>"), pad_token_id=token_id("<|endoftext|>"),
    ) | overrides


def _qwen_vision_token_ids(tokenizer) -> dict:
    """The Qwen-VL placeholder ids of a model config (image / video pads, vision start / end)."""
    token_id = tokenizer.convert_tokens_to_ids
    return dict(image_token_id=token_id("<|image_pad|>"), video_token_id=token_id("<|video_pad|>"),
                vision_start_token_id=token_id("<|vision_start|>"), vision_end_token_id=token_id("<|vision_end|>"))


def build_tiny_qwen25vl(out_dir: str | Path, seed: int = 0, max_pixels: int = 28 * 28 * 16) -> Path:
    """Write a random tiny Qwen2.5-VL (weights, tokenizer, chat template, generation config, image-only
    processor) to `out_dir`; a few MB. `max_pixels` caps the resized image at 16 merged tokens."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tiny_tokenizer()
    hidden, heads = 64, 4
    config = Qwen2_5_VLConfig(
        text_config=_text_config(
            tokenizer, hidden_size=hidden, num_attention_heads=heads,
            # M-RoPE splits head_dim/2 = 8 rotary frequencies over (temporal, height, width).
            rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]},
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
        **_qwen_vision_token_ids(tokenizer),
        tie_word_embeddings=False,
    )
    _save_random_model(Qwen2_5_VLForConditionalGeneration, config, tokenizer, seed, out_dir)

    image_processor = pil_image_processor_class("qwen2_vl", "Qwen2VLImageProcessor")(min_pixels=28 * 28 * 4, max_pixels=max_pixels)
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
        text_config=_text_config(tokenizer, model_type="qwen2", tie_word_embeddings=False),
        image_token_id=token_id("<IMG_CONTEXT>"),
        image_seq_length=image_seq_length,
        downsample_ratio=downsample_ratio,
        tie_word_embeddings=False,
    )
    _save_random_model(InternVLForConditionalGeneration, config, tokenizer, seed, out_dir)

    image_processor = pil_image_processor_class("got_ocr2", "GotOcr2ImageProcessor")(
        size={"height": tile_size, "width": tile_size}, crop_to_patches=True, min_patches=1, max_patches=max_tiles,
    )
    processor = InternVLImageOnlyProcessor(image_processor, tokenizer, image_seq_length=image_seq_length,
                                           chat_template=INTERNVL_CHAT_TEMPLATE)
    processor.save_pretrained(out_dir)
    return out_dir


# Qwen3-VL-Instruct's chat template, reduced like QWEN_CHAT_TEMPLATE: the same ChatML turns and image
# placeholder (<|vision_start|><|image_pad|><|vision_end|>), but no default system prompt (Qwen3-VL
# writes a system turn only when the messages have one).
QWEN3_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_qwen3vl(out_dir: str | Path, seed: int = 0, max_pixels: int = 32 * 32 * 16) -> Path:
    """Write a random tiny Qwen3-VL (weights, tokenizer, chat template, generation config, image-only
    processor) to `out_dir`; a few MB. 16 px patches merged 2x2, so `max_pixels` caps the resized
    image at 16 merged tokens. DeepStack is on: both vision blocks feed a level (indexes [0, 1]),
    added after text decoder layers 0 and 1. The language model has 3 layers, not 2 like the other
    tiny models: a level added after the LAST layer only changes the image tokens' own outputs, so
    it would never reach a completion's log-probs (Qwen3-VL-8B: 3 levels into 36 layers)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tiny_tokenizer()
    hidden = 64
    config = Qwen3VLConfig(
        text_config=_text_config(
            tokenizer, hidden_size=hidden, num_hidden_layers=3, head_dim=32, tie_word_embeddings=False,
            # Interleaved M-RoPE over head_dim/2 = 16 frequencies: h takes 1, 4, ..., 13 and w 2, 5,
            # ..., 14 (5 each), t the other 6; Qwen3-VL-8B: [24, 20, 20] of 64.
            rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [6, 5, 5],
                             "mrope_interleaved": True},
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            out_hidden_size=hidden,
            num_position_embeddings=64,  # an 8 x 8 learned grid, interpolated to each image's patch grid
            deepstack_visual_indexes=[0, 1],
        ),
        **_qwen_vision_token_ids(tokenizer),
        tie_word_embeddings=False,
    )
    _save_random_model(Qwen3VLForConditionalGeneration, config, tokenizer, seed, out_dir)

    factor = 16 * 2  # patch_size * merge_size
    image_processor = pil_image_processor_class("qwen2_vl", "Qwen2VLImageProcessor")(
        patch_size=16, min_pixels=factor * factor * 4, max_pixels=max_pixels, image_mean=[0.5] * 3, image_std=[0.5] * 3,
    )
    processor = Qwen3VLImageOnlyProcessor(image_processor, tokenizer, chat_template=QWEN3_VL_CHAT_TEMPLATE)
    processor.save_pretrained(out_dir)
    return out_dir


TINY_BUILDERS = {"qwen2_5_vl": build_tiny_qwen25vl, "internvl": build_tiny_internvl, "qwen3_vl": build_tiny_qwen3vl}


def prepare_demo_inputs(cfg, run_dir: Path, is_main: bool):
    """The quick start's inputs: `model.path: tiny` and `data.synth_items > 0` build a tiny model and
    synthetic data into the run directory (rank 0; every rank waits); returns the config pointing at them."""
    import dataclasses

    from mixedr1 import distributed
    from mixedr1.data.synth import write_synthetic_dataset

    if cfg.model.path == "tiny":
        tiny_dir = run_dir / "tiny-model"
        if is_main and not (tiny_dir / "config.json").is_file():
            build_tiny_model(tiny_dir, seed=cfg.train.seed, family=cfg.model.tiny_family)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=str(tiny_dir)))
    if cfg.data.synth_items > 0:
        data_dir = run_dir / "data"
        if is_main and not (data_dir / "train.jsonl").is_file():
            write_synthetic_dataset(data_dir, cfg.data.synth_items, seed=cfg.train.seed, heldout_per_type=cfg.data.synth_heldout_items,
                                    task=cfg.data.synth_task, warmup_per_type=cfg.data.synth_warmup_items)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(
            cfg.data, data_root=str(data_dir), train_file="train.jsonl"))
    distributed.barrier()
    return cfg
