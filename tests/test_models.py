"""The tiny Qwen2.5-VL, loading, the image-only processor, and the model's image frame (docs/method.md §2, §3)."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from transformers import AutoModelForImageTextToText

from mixedr1.config import ModelConfig
from mixedr1.data.frame import resize_to_model_frame, resized_image_size, scale_box_to_model_frame
from mixedr1.families import vision_tower
from mixedr1.models import (
    freeze_vision_tower,
    load_model,
    load_policy_and_processor,
    load_processor,
    resolve_attn_implementation,
    resolve_dtype,
)
from mixedr1.models.processors import QwenVLImageOnlyProcessor


@pytest.fixture(scope="module")
def tiny_dir(tiny_qwen_dir):
    return tiny_qwen_dir


@pytest.fixture(scope="module")
def model(tiny_dir):
    return load_model(tiny_dir)


@pytest.fixture(scope="module")
def processor(tiny_dir):
    return load_processor(tiny_dir)


def _prompt(processor, question="Is there a red circle?", n_images=1):
    messages = [{"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def test_tiny_model_loads_with_plain_transformers_and_ours_identically(tiny_dir, model):
    plain = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    ours_state, plain_state = model.state_dict(), plain.state_dict()
    assert list(ours_state) == list(plain_state)
    assert all(torch.equal(ours_state[k], plain_state[k]) for k in ours_state)
    n_params = sum(p.numel() for p in model.parameters())
    assert 100_000 < n_params < 2_000_000  # a few MB
    assert model.config.model_type == "qwen2_5_vl"
    assert model.config._attn_implementation == "sdpa"  # auto on CPU
    assert next(model.parameters()).dtype == torch.float32  # auto on CPU


def test_tiny_tokenizer_special_tokens_and_cheap_vocabulary(processor, model):
    tok = processor.tokenizer
    cfg = model.config
    assert tok.convert_ids_to_tokens(cfg.image_token_id) == "<|image_pad|>"
    assert tok.convert_ids_to_tokens(cfg.video_token_id) == "<|video_pad|>"
    assert tok.convert_ids_to_tokens(cfg.vision_start_token_id) == "<|vision_start|>"
    assert tok.convert_ids_to_tokens(cfg.vision_end_token_id) == "<|vision_end|>"
    assert cfg.text_config.vocab_size == len(tok)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert model.generation_config.eos_token_id[0] == im_end and tok.eos_token == "<|im_end|>"
    for word in ["<think>", "</think>", "<answer>", "</answer>", "yes"]:
        assert len(tok(word, add_special_tokens=False).input_ids) == 1, word
    assert len(tok("2024", add_special_tokens=False).input_ids) == 4  # digits one by one, like Qwen2
    text = "<think>Any text, even ünïcode 🙂, round-trips.</think><answer>[1, 2, 3, 4]</answer>"
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text


def test_chat_template_places_one_image_placeholder_per_image(processor):
    text = _prompt(processor, "Compare.", n_images=2)
    assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == 2
    assert text.endswith("<|im_start|>assistant\n")


def test_forward_with_image_gives_finite_logits(model, processor):
    inputs = processor(text=[_prompt(processor)], images=[Image.new("RGB", (100, 60), "red")], return_tensors="pt")
    P = inputs["input_ids"].shape[1]
    n_image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n_image_tokens == int(inputs["image_grid_thw"].prod()) // 4  # merge 2x2 patches per token
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, P, model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()


def test_generate_with_image_produces_tokens(model, processor):
    inputs = processor(text=[_prompt(processor)], images=[Image.new("RGB", (80, 80), "blue")], return_tensors="pt")
    P = inputs["input_ids"].shape[1]
    out = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=True)
    assert out.shape == (1, P + 6)
    assert torch.equal(out[:, :P], inputs["input_ids"])


def test_processor_save_and_load_round_trip(processor, tmp_path):
    processor.save_pretrained(tmp_path)  # a processor alone: no config.json
    again = QwenVLImageOnlyProcessor.from_pretrained(tmp_path)
    assert isinstance(again, QwenVLImageOnlyProcessor) and isinstance(load_processor(tmp_path), QwenVLImageOnlyProcessor)
    assert "video_processor" not in again.get_attributes()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 130, 3), dtype=np.uint8))
    text = _prompt(processor)
    a = processor(text=[text], images=[image], return_tensors="pt")
    b = again(text=[text], images=[image], return_tensors="pt")
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_min_and_max_pixels_reach_the_image_processor(tiny_dir):
    processor = load_processor(tiny_dir, min_pixels=28 * 28, max_pixels=28 * 28 * 64)
    assert resized_image_size(processor, 1000, 1000) == (224, 224)  # 8x8 merged tokens = 28*28*64 pixels
    assert resized_image_size(processor, 10, 10) == (28, 28)
    inputs = processor(text=[_prompt(processor)], images=[Image.new("RGB", (1000, 1000))], return_tensors="pt")
    assert inputs["image_grid_thw"].tolist() == [[1, 16, 16]]


@pytest.mark.parametrize("height,width", [(60, 100), (97, 150), (20, 30), (500, 300), (56, 56), (113, 57), (40, 600)])
def test_resized_image_size_agrees_with_the_processor(processor, height, width):
    inputs = processor(text=[_prompt(processor)], images=[Image.new("RGB", (width, height))], return_tensors="pt")
    _, grid_h, grid_w = inputs["image_grid_thw"][0].tolist()
    patch = processor.image_processor.patch_size
    assert resized_image_size(processor, height, width) == (grid_h * patch, grid_w * patch)


@pytest.mark.parametrize("height,width,box", [(97, 150, (30, 20, 90, 61)), (300, 200, (12, 150, 190, 290)), (40, 600, (100, 5, 400, 35))])
def test_box_maps_to_where_the_drawn_rectangle_lands_after_resize(processor, height, width, box):
    image = Image.new("RGB", (width, height), "black")
    x1, y1, x2, y2 = box  # pixel edges: pixels x1..x2-1 are filled
    ImageDraw.Draw(image).rectangle([x1, y1, x2 - 1, y2 - 1], fill="white")
    new_h, new_w = resized_image_size(processor, height, width)
    resized = np.asarray(resize_to_model_frame(processor, image))[:, :, 0]
    assert resized.shape == (new_h, new_w)
    ys, xs = np.nonzero(resized > 127)
    found = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    mapped = scale_box_to_model_frame(box, (height, width), (new_h, new_w))
    assert np.allclose(found, mapped, atol=1.5), (found, mapped)


def test_scale_box_to_model_frame_numbers():
    assert scale_box_to_model_frame([10, 20, 30, 40], (100, 200), (50, 400)) == [20.0, 10.0, 60.0, 20.0]


def test_vision_tower_freeze_and_gradient_checkpointing(tiny_dir):
    cfg = ModelConfig(path=str(tiny_dir), freeze_vision=True, gradient_checkpointing=True)
    model, processor, path = load_policy_and_processor(cfg, "cpu")
    tower = vision_tower(model)
    assert tower is model.model.visual
    assert not any(p.requires_grad for p in tower.parameters())
    assert all(p.requires_grad for p in model.model.language_model.parameters())
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    assert freeze_vision_tower(model) == sum(p.numel() for p in tower.parameters())
    # a training forward and backward through the checkpointed decoder reaches the language model only
    model.train()
    inputs = processor(text=[_prompt(processor)], images=[Image.new("RGB", (64, 64), "red")], return_tensors="pt")
    model(**inputs, use_cache=False).logits.float().mean().backward()
    assert model.model.language_model.layers[0].self_attn.q_proj.weight.grad is not None
    assert all(p.grad is None for p in tower.parameters())


def test_tiny_path_builds_into_the_given_folder(tmp_path):
    model, processor, path = load_policy_and_processor(ModelConfig(path="tiny"), "cpu", tiny_dir=tmp_path / "tiny")
    assert path == tmp_path / "tiny" and (path / "config.json").is_file()
    assert isinstance(processor, QwenVLImageOnlyProcessor)


def test_missing_directory_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        load_model(tmp_path / "no-such-model")
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        load_processor(tmp_path / "no-such-model")


def test_dtype_and_attention_choices():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("auto", cuda) == torch.bfloat16
    assert resolve_dtype("float16", cpu) == torch.float16
    assert resolve_attn_implementation("auto", cpu) == "sdpa"
    assert resolve_attn_implementation("eager", cuda) == "eager"
    with pytest.raises(ValueError, match="model.dtype"):
        resolve_dtype("fp8", cpu)


def test_qwen2_vl_and_native_internvl_directories_load(tiny_dir, processor, tmp_path):
    """The other families the loader claims: random tiny Qwen2-VL and InternVL (transformers' native format)."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tok = processor.tokenizer
    qwen2 = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, bos_token_id=0, eos_token_id=2,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        ),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14, spatial_merge_size=2),
        image_token_id=processor.image_token_id,
        video_token_id=processor.video_token_id,
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
    )
    Qwen2VLForConditionalGeneration(qwen2).save_pretrained(tmp_path / "qwen2")
    processor.save_pretrained(tmp_path / "qwen2")
    model, qwen2_processor = load_model(tmp_path / "qwen2"), load_processor(tmp_path / "qwen2")
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration" and isinstance(qwen2_processor, QwenVLImageOnlyProcessor)
    assert vision_tower(model) is model.model.visual
    inputs = qwen2_processor(text=[_prompt(processor)], images=[Image.new("RGB", (80, 60))], return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()

    internvl = InternVLConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=[28, 28], patch_size=[14, 14]),
        text_config=dict(model_type="qwen2", vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, bos_token_id=0, eos_token_id=1),
        image_token_id=99,
    )
    InternVLForConditionalGeneration(internvl).save_pretrained(tmp_path / "internvl")
    model = load_model(tmp_path / "internvl")
    assert type(model).__name__ == "InternVLForConditionalGeneration"
    assert vision_tower(model) is model.model.vision_tower
    assert freeze_vision_tower(model) == sum(p.numel() for p in model.model.vision_tower.parameters()) > 0


def test_processor_loads_from_an_official_style_qwen_directory(tiny_dir, processor, tmp_path):
    """Released Qwen2.5-VL checkpoints keep `preprocessor_config.json` (min/max_pixels at the top level)
    and `chat_template.json`, not transformers 5's `processor_config.json` and `chat_template.jinja`."""
    import json
    import shutil

    official = tmp_path / "official"
    shutil.copytree(tiny_dir, official)
    template = (official / "chat_template.jinja").read_text()
    (official / "chat_template.jinja").unlink()
    (official / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    (official / "preprocessor_config.json").write_text(json.dumps({
        "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
    }))
    loaded = load_processor(official)
    assert loaded.chat_template == template
    assert resized_image_size(loaded, 1000, 2000) == (1008, 1988)  # 12845056 max pixels: no downscale
    assert resized_image_size(load_processor(official, max_pixels=28 * 28 * 64), 1000, 2000) == (140, 308)


def test_tiny_internvl_processor_expands_tiles_like_internvl_processor(tmp_path, tiny_internvl_dir):
    """InternVLProcessor's rule, checked by hand (it cannot be built here: it needs a video processor):
    each image placeholder becomes <img> + image_seq_length * tiles <IMG_CONTEXT> + </img>, tiles from
    the GOT-OCR2 dynamic tiling (grid + thumbnail), pixel_values the image processor's own output."""
    from mixedr1.families import NORMALISED_BOX_FRAME as INTERNVL_BOX_FRAME
    from mixedr1.models.processors import InternVLImageOnlyProcessor

    processor = load_processor(tiny_internvl_dir)
    assert isinstance(processor, InternVLImageOnlyProcessor) and processor.image_seq_length == 4
    images = [Image.new("RGB", (56, 112), "red"), Image.new("RGB", (200, 60), "blue"), Image.new("RGB", (56, 56))]
    expected_tiles = [processor.image_processor.get_number_of_image_patches(im.height, im.width, {"crop_to_patches": True}) for im in images]
    assert expected_tiles == [3, 4, 1]  # 1x2 grid + thumbnail, 3x1 grid + thumbnail, one tile
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Q?"}]}]
    prompt = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert prompt.count("<IMG_CONTEXT>") == 2
    enc = processor(text=[prompt, processor.apply_chat_template(msgs[:0] + [{"role": "user", "content": [{"type": "image"}]}],
                                                                add_generation_prompt=True, tokenize=False)],
                    images=images, padding=True, padding_side="left", return_tensors="pt")
    text = processor.tokenizer.decode(enc["input_ids"][0])
    assert "<img>" + "<IMG_CONTEXT>" * 12 + "</img>\n<img>" + "<IMG_CONTEXT>" * 16 + "</img>\nQ?" in text
    assert (enc["input_ids"][1] == processor.image_token_id).sum() == 4
    reference = processor.image_processor(images, crop_to_patches=True, return_tensors="pt")["pixel_values"]
    assert enc["pixel_values"].shape == (8, 3, 56, 56) and torch.equal(enc["pixel_values"], reference)
    assert resized_image_size(processor, 480, 640) == (INTERNVL_BOX_FRAME, INTERNVL_BOX_FRAME) == (1000, 1000)
    processor.save_pretrained(tmp_path / "saved")
    again = load_processor(tmp_path / "saved")
    assert isinstance(again, InternVLImageOnlyProcessor) and again.image_seq_length == 4
    assert torch.equal(again(text=[prompt], images=images[:2], return_tensors="pt")["input_ids"][0], enc["input_ids"][0])
