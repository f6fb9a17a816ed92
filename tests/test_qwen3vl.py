"""Qwen3-VL, the third family (interleaved mRoPE, DeepStack, 16 px patches, 0-1000 boxes), against
transformers' own Qwen3-VL: `get_rope_index`, a teacher-forced forward, `generate`, and
`Qwen3VLProcessor`; then train.py end to end on the tiny model."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from transformers import Qwen3VLProcessor

from mixedr1.config import ConfigError, load_config
from mixedr1.data.batch import collate
from mixedr1.data.dataset import Record
from mixedr1.data.frame import resized_image_size, uses_normalised_boxes
from mixedr1.data.prompt import NORMALISED_BOX_HINT, model_frame_box, render_prompt
from mixedr1.families import FAMILIES, family_of, family_of_dir, family_of_processor
from mixedr1.models import load_model, load_processor
from mixedr1.models.processors import IMAGE_ONLY_PROCESSORS, Qwen3VLImageOnlyProcessor, QwenVLImageOnlyProcessor
from mixedr1.policy import PolicyModel, build_sequences, features_per_prompt, image_embeds_for, row_image_embeds
from mixedr1.positions import mrope_position_ids
from mixedr1.rollout import SamplingParams, banned_token_ids, generate_rollout
from sampler_checks import eos_ids, make_batch, prompts_and_images, teacher_forced_logprobs

QWEN3_VL = FAMILIES["qwen3_vl"]


@pytest.fixture(scope="module")
def tiny(tiny_qwen3vl_dir):
    model = load_model(tiny_qwen3vl_dir, dtype=torch.float32, attn_implementation="sdpa")
    processor = load_processor(tiny_qwen3vl_dir)
    processor.tokenizer.padding_side = "left"
    return model, processor


DECODES = pytest.mark.parametrize("decode", ["static", "dynamic"])  # the sampler's two decodes

# 16 px patches merged 2x2: one image token per 32 x 32 pixels.
MIXED = [
    ("Is there a red circle?", [(64, 64)]),  # 4 image tokens
    ("How many squares are there? Answer with a number or short text.", [(128, 64), (64, 96)]),  # 8 + 6
    ("Describe the image in one sentence.", []),  # text only
]


# ----------------------------------------------------------------------------------------------
# Registry, processor, box frame


def test_the_registry_knows_qwen3vl_by_model_directory_and_processor(tiny, tiny_qwen3vl_dir, tmp_path):
    model, processor = tiny
    assert family_of(model) is QWEN3_VL and family_of("qwen3_vl_moe") is QWEN3_VL
    assert QWEN3_VL.mrope and QWEN3_VL.deepstack and QWEN3_VL.box_frame == "normalised"
    assert not FAMILIES["qwen2_5_vl"].deepstack and not FAMILIES["internvl"].deepstack
    assert family_of_dir(tiny_qwen3vl_dir) is QWEN3_VL
    assert set(IMAGE_ONLY_PROCESSORS) == set(FAMILIES)
    # A processor saved alone: its image processor is Qwen2-VL's (Qwen2.5-VL's family lists that
    # name), so the processor class has to decide.
    processor.save_pretrained(tmp_path / "processor")
    assert "Qwen2VLImageProcessor" in "".join(p.read_text() for p in (tmp_path / "processor").glob("*.json"))
    assert family_of_dir(tmp_path / "processor") is QWEN3_VL
    assert family_of_processor(processor) is QWEN3_VL
    qwen25 = QwenVLImageOnlyProcessor(processor.image_processor, processor.tokenizer)
    assert family_of_processor(qwen25) is FAMILIES["qwen2_5_vl"]
    # DeepStack is exercised: two levels, from both vision blocks.
    assert list(model.config.vision_config.deepstack_visual_indexes) == [0, 1]


def test_processor_equals_transformers_qwen3vl_processor(tiny, tmp_path):
    model, processor = tiny
    texts, images = prompts_and_images(processor, MIXED)
    ours = processor(text=texts, images=images, return_tensors="pt", padding=True)
    # transformers' Qwen3VLProcessor on the same image processor, tokenizer and template. Its __init__
    # insists on a video processor (they all need torchvision), so it is built without it; its own
    # kwargs defaults and replace_image_token run unchanged (its __call__ is ProcessorMixin's, 5.17 and 5.23).
    stock = Qwen3VLProcessor.__new__(Qwen3VLProcessor)
    stock.__dict__.update(processor.__dict__)
    theirs = stock(text=texts, images=images, return_tensors="pt", padding=True)
    assert set(ours) == set(theirs) == {"input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"}
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key
    # The expansion rule by hand: sides rounded to 32 px, grid = sides / 16, t*h*w/4 image tokens per image.
    assert ours["image_grid_thw"].tolist() == [[1, 4, 4], [1, 8, 4], [1, 4, 6]]
    assert (ours["input_ids"] == model.config.image_token_id).sum(1).tolist() == [4, 8 + 6, 0]
    assert ours["pixel_values"].shape == (16 + 32 + 24, 3 * 2 * 16 * 16)  # C * temporal patch * 16 * 16

    # Save / load round trip through load_processor, and the pixel bounds override.
    processor.save_pretrained(tmp_path / "saved")
    loaded = load_processor(tmp_path / "saved")
    assert type(loaded) is Qwen3VLImageOnlyProcessor and loaded.image_processor.patch_size == 16
    again = loaded(text=texts, images=images, return_tensors="pt", padding=True, padding_side="left")
    for key in ours:
        assert torch.equal(again[key], ours[key]), key
    small = load_processor(tmp_path / "saved", max_pixels=32 * 32 * 4)
    assert small(text=texts[:1], images=images[1:2], return_tensors="pt")["image_grid_thw"].tolist() == [[1, 4, 2]]


def test_boxes_are_in_the_0_1000_frame(tiny, tmp_path):
    _, processor = tiny
    assert uses_normalised_boxes(processor)
    assert resized_image_size(processor, 480, 640) == (1000, 1000)
    image = tmp_path / "image.png"
    Image.new("RGB", (200, 100), "white").save(image)  # width 200, height 100
    record = Record(id="g", problem_type="grounding", question="Locate the square.", answer=(10, 20, 50, 60), images=(image,))
    # x * 1000 / 200, y * 1000 / 100
    assert model_frame_box(record, processor) == [50, 200, 250, 600]
    assert NORMALISED_BOX_HINT in render_prompt(record, processor)
    # Same image processor class under Qwen2.5-VL's processor: boxes in the resized image's pixels.
    qwen25 = QwenVLImageOnlyProcessor(processor.image_processor, processor.tokenizer, chat_template=processor.chat_template)
    assert not uses_normalised_boxes(qwen25)
    assert resized_image_size(qwen25, 70, 130) == (64, 128)  # Qwen2-VL's smart resize: sides rounded to multiples of 32
    assert NORMALISED_BOX_HINT not in render_prompt(record, qwen25)


# ----------------------------------------------------------------------------------------------
# Positions and the sampler


def test_mrope_positions_equal_hf_get_rope_index(tiny):
    model, processor = tiny
    batch = make_batch(processor, MIXED)
    positions, next_position = mrope_position_ids(
        batch["input_ids"], batch["attention_mask"], batch["image_grid_thw"],
        image_token_id=model.config.image_token_id, spatial_merge_size=model.config.vision_config.spatial_merge_size,
    )
    reference, rope_deltas = model.model.get_rope_index(
        batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"], image_grid_thw=batch["image_grid_thw"],
        attention_mask=batch["attention_mask"],
    )
    assert torch.equal(positions, reference)
    # HF's decode rule: position = cache_len (real tokens) + rope_delta.
    assert torch.equal(next_position, batch["attention_mask"].sum(1) + rope_deltas.squeeze(1))


@DECODES
def test_sampling_logprobs_equal_teacher_forced_forward(tiny, decode):
    model, processor = tiny
    batch = make_batch(processor, MIXED)
    params = SamplingParams(decode=decode, group_size=3, max_new_tokens=12, temperature=0.7, pad_token_id=0, seed=1)
    free = generate_rollout(model, batch, params)
    # EOS = tokens sampled mid-way by rows 1 and 5, so some rows stop early.
    params.eos_token_ids = (free.completion_ids[1, 3].item(), free.completion_ids[5, 7].item())
    rollout = generate_rollout(model, batch, params)
    assert rollout.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert "eos" in rollout.finish_reason and "length" in rollout.finish_reason
    reference = teacher_forced_logprobs(model, batch, rollout, 3, 0.7)
    torch.testing.assert_close(rollout.sampling_logprobs, reference, atol=1e-5, rtol=0)
    assert (rollout.sampling_logprobs[rollout.completion_mask == 1] < 0).all()
    assert not torch.isin(rollout.completion_ids, torch.tensor(banned_token_ids(model.config))).any()


@pytest.mark.parametrize("prompts", [MIXED[:1], MIXED[:2], MIXED[2:]], ids=["one_prompt", "left_padded_pair", "text_only"])
@DECODES
def test_greedy_equals_generate(tiny, prompts, decode):
    model, processor = tiny
    batch = make_batch(processor, prompts)
    pad = processor.tokenizer.pad_token_id
    params = SamplingParams(decode=decode, group_size=1, max_new_tokens=16, greedy=True, eos_token_ids=eos_ids(processor), pad_token_id=pad)
    rollout = generate_rollout(model, batch, params)
    with torch.no_grad():
        sequences = model.generate(**batch, do_sample=False, max_new_tokens=16, eos_token_id=eos_ids(processor),
                                   pad_token_id=pad, suppress_tokens=banned_token_ids(model.config))
    expected = sequences[:, batch["input_ids"].shape[1] :]
    assert torch.equal(rollout.completion_ids, expected[:, : rollout.completion_ids.shape[1]])
    assert rollout.completion_ids.shape[1] == 16


@DECODES
def test_text_only_prompts_with_empty_image_tensors(tiny, decode):
    """`rollout_in_chunks` gives a text-only chunk empty `pixel_values [0, C]` / `image_grid_thw [0, 3]`:
    the same rollout as the processor's output without them (the vision tower never sees zero images)."""
    model, processor = tiny
    batch = make_batch(processor, MIXED[2:])
    assert "pixel_values" not in batch
    empty = dict(batch, pixel_values=torch.zeros(0, 3 * 2 * 16 * 16), image_grid_thw=torch.zeros(0, 3, dtype=torch.long))
    params = SamplingParams(decode=decode, group_size=2, max_new_tokens=6, pad_token_id=0, seed=3)
    for share_prefix in (True, False):
        expected = generate_rollout(model, batch, params, share_prefix=share_prefix)
        rollout = generate_rollout(model, empty, params, share_prefix=share_prefix)
        assert torch.equal(rollout.completion_ids, expected.completion_ids)
        torch.testing.assert_close(rollout.sampling_logprobs, expected.sampling_logprobs, atol=0, rtol=0)


@DECODES
def test_share_prefix_equals_separate_prefills(tiny, decode):
    model, processor = tiny
    batch = make_batch(processor, MIXED)
    params = SamplingParams(decode=decode, group_size=4, max_new_tokens=10, eos_token_ids=eos_ids(processor), pad_token_id=0, seed=7)
    shared = generate_rollout(model, batch, params, share_prefix=True)
    separate = generate_rollout(model, batch, params, share_prefix=False)
    assert torch.equal(shared.completion_ids, separate.completion_ids)
    assert torch.equal(shared.completion_mask, separate.completion_mask)
    assert shared.finish_reason == separate.finish_reason
    torch.testing.assert_close(shared.sampling_logprobs, separate.sampling_logprobs, atol=1e-5, rtol=0)
    assert len({tuple(row) for row in shared.completion_ids[:4].tolist()}) > 1


# ----------------------------------------------------------------------------------------------
# The update forward (PolicyModel) with DeepStack


@pytest.fixture()
def collated(tiny, tmp_path):
    """Three collated prompts (two images, one, none) with G=2 random completions each."""
    _, processor = tiny
    sizes = [[(128, 64), (64, 96)], [(64, 64)], []]
    records = []
    for i, per_record in enumerate(sizes):
        images = []
        for j, (h, w) in enumerate(per_record):
            images.append(tmp_path / f"image{i}-{j}.png")
            colour = ((50 * i + 30 * j) % 256, 90, 200)
            Image.new("RGB", (w, h), colour).save(images[-1])
        records.append(Record(id=f"r{i}", problem_type="open_ended", question="What colour is it?", answer="red",
                              images=tuple(images)))
    batch = collate(records, processor)
    G, T, B = 2, 5, 3
    prompt_index = torch.arange(B).repeat_interleave(G)  # [N]
    lengths = torch.tensor([5, 1, 3, 5, 2, 4])
    completion_mask = (torch.arange(T)[None] < lengths[:, None]).long()  # [N, T]
    generator = torch.Generator().manual_seed(1)
    completion_ids = torch.randint(10, 400, (B * G, T), generator=generator)
    completion_ids = completion_ids.masked_fill(completion_mask == 0, processor.tokenizer.pad_token_id)
    return records, batch, completion_ids, completion_mask, prompt_index


def plain_forward_logprobs(model, processor, records, completion_ids, completion_mask, prompt_index) -> torch.Tensor:
    """Per row: the processor on that row's prompt alone, then one plain transformers forward of
    prompt + completion (its own positions and DeepStack), log_softmax, gather."""
    out = torch.zeros(completion_ids.shape, dtype=torch.float32)
    for r in range(completion_ids.shape[0]):
        record = records[int(prompt_index[r])]
        images = record.load_images()
        enc = processor(text=[render_prompt(record, processor)], images=images or None, return_tensors="pt")
        n = int(completion_mask[r].sum())
        ids = torch.cat([enc["input_ids"][0], completion_ids[r, :n]])[None]  # [1, P+n]
        kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=(ids == model.config.image_token_id).int())
        if images:
            kwargs.update(pixel_values=enc["pixel_values"], image_grid_thw=enc["image_grid_thw"])
        P = enc["input_ids"].shape[1]
        logits = model(**kwargs).logits[0, P - 1 : -1]  # [n, V]
        out[r, :n] = torch.log_softmax(logits.float(), -1).gather(-1, completion_ids[r, :n, None])[:, 0]
    return out


def test_policy_forward_with_deepstack_equals_transformers_forward(tiny, collated):
    model, processor = tiny
    records, batch, completion_ids, completion_mask, prompt_index = collated
    seq = build_sequences(model, batch.input_ids, batch.attention_mask, batch.image_layout,
                          completion_ids, completion_mask, prompt_index)
    assert seq.position_ids.shape == (3, *seq.input_ids.shape)
    D = model.config.text_config.hidden_size
    with torch.no_grad():
        feats = features_per_prompt(model, batch.pixel_values, batch.image_layout, batch.images_per_prompt.tolist())
        assert [tuple(f.shape) for f in feats] == [(8 + 6, 3 * D), (4, 3 * D), (0, 3 * D)]  # tokens + 2 DeepStack levels
        ours, _ = PolicyModel(model, chunk_size=4)(seq, row_image_embeds(feats, prompt_index))
        theirs = plain_forward_logprobs(model, processor, records, completion_ids, completion_mask, prompt_index)
        # DeepStack matters here: with either level zeroed the forward is another model.
        without = []
        for level in (1, 2):
            zeroed = [f.clone() for f in feats]
            for f in zeroed:
                f[:, level * D : (level + 1) * D] = 0
            without.append(PolicyModel(model)(seq, row_image_embeds(zeroed, prompt_index))[0])
    mask = completion_mask.bool()
    torch.testing.assert_close(ours[mask], theirs[mask], atol=1e-5, rtol=1e-5)
    assert all((logprobs[mask] - theirs[mask]).abs().max() > 1e-3 for logprobs in without)
    # Features missing their DeepStack levels are refused, not silently used.
    with pytest.raises(ValueError, match="2 DeepStack levels"):
        PolicyModel(model)(seq, row_image_embeds([f[:, :D] for f in feats], prompt_index))

    # A micro-batch encoding its prompts' images now (trainable vision) gets the same features.
    policy = PolicyModel(model)
    mb = seq.rows(torch.tensor([4, 1, 0]))
    with torch.no_grad():
        fresh = image_embeds_for(policy, batch, mb, None)
        part, _ = policy(mb, fresh)
    torch.testing.assert_close(fresh, row_image_embeds(feats, mb.prompt_index), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(part[mask[[4, 1, 0]]], ours[[4, 1, 0]][mask[[4, 1, 0]]], atol=1e-5, rtol=1e-5)


def test_gradient_reaches_the_deepstack_mergers_when_vision_trains(tiny, collated):
    model, _ = tiny
    model = copy.deepcopy(model)
    _, batch, completion_ids, completion_mask, prompt_index = collated
    seq = build_sequences(model, batch.input_ids, batch.attention_mask, batch.image_layout,
                          completion_ids, completion_mask, prompt_index)
    model.zero_grad()
    feats = features_per_prompt(model, batch.pixel_values, batch.image_layout, batch.images_per_prompt.tolist())
    logprobs, _ = PolicyModel(model)(seq, row_image_embeds(feats, prompt_index))
    (logprobs * completion_mask).sum().backward()
    visual = model.model.visual
    for merger in [visual.merger, *visual.deepstack_merger_list]:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in merger.parameters())


def test_qwen3vl_moe_sampler_and_update_forward_equal_transformers_forward(tiny_qwen3vl_dir, tmp_path):
    """Qwen3-VL-MoE (model_type qwen3_vl_moe, same family): a tiny random MoE language model behind the
    tiny model's vision config, tokenizer and processor; the sampler's log-probs and the update
    forward's both equal one plain transformers forward."""
    import shutil

    from transformers import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration

    dense = json.loads((tiny_qwen3vl_dir / "config.json").read_text())
    text = {k: v for k, v in dense["text_config"].items() if k != "model_type"}
    text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1)
    vision = {k: v for k, v in dense["vision_config"].items() if k != "model_type"}
    ids = {k: dense[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
    torch.manual_seed(0)
    config = Qwen3VLMoeConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)
    Qwen3VLMoeForConditionalGeneration(config).save_pretrained(tmp_path)
    for f in tiny_qwen3vl_dir.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            shutil.copy(f, tmp_path / f.name)
    model = load_model(tmp_path, dtype=torch.float32, attn_implementation="sdpa")
    processor = load_processor(tmp_path)
    assert family_of(model) is QWEN3_VL and type(processor) is Qwen3VLImageOnlyProcessor
    processor.tokenizer.padding_side = "left"
    batch = make_batch(processor, MIXED)
    rollout = generate_rollout(model, batch, SamplingParams(group_size=2, max_new_tokens=8, pad_token_id=0, seed=1))
    reference = teacher_forced_logprobs(model, batch, rollout, 2, 1.0)
    torch.testing.assert_close(rollout.sampling_logprobs, reference, atol=1e-5, rtol=0)
    seq = build_sequences(model, batch["input_ids"], batch["attention_mask"], batch["image_grid_thw"],
                          rollout.completion_ids, rollout.completion_mask, rollout.prompt_index)
    with torch.no_grad():
        feats = features_per_prompt(model, batch["pixel_values"], batch["image_grid_thw"], [1, 2, 0])
        ours, _ = PolicyModel(model)(seq, row_image_embeds(feats, rollout.prompt_index))
    mask = rollout.completion_mask.bool()
    torch.testing.assert_close(ours[mask], reference[mask], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# train.py end to end


def test_tiny_family_config_field():
    assert load_config(None, ["model.tiny_family=qwen3_vl"]).model.tiny_family == "qwen3_vl"
    assert load_config(None, []).model.tiny_family == "qwen2_5_vl"
    with pytest.raises(ConfigError, match="model.tiny_family") as error:
        load_config(None, ["model.tiny_family=llava"])
    assert error.value.key == "model.tiny_family"


def test_demo_builds_the_tiny_model_of_model_tiny_family(tmp_path, monkeypatch):
    from mixedr1.models import tiny as tiny_module

    built = []
    monkeypatch.setattr(tiny_module, "build_tiny_model", lambda out_dir, seed=0, family="qwen2_5_vl": built.append(family))
    cfg = load_config(None, ["model.tiny_family=qwen3_vl"])
    cfg = tiny_module.prepare_demo_inputs(cfg, tmp_path, True)
    assert built == ["qwen3_vl"] and cfg.model.path == str(tmp_path / "tiny-model")


def test_grpo_runs_on_a_tiny_qwen3vl(tmp_path, tiny_qwen3vl_dir):
    """train.py with `model.path` = a tiny Qwen3-VL: the SFT warm-up step (boxes in its 0-1000 frame)
    then 2 GRPO steps with finite losses, ratio 1 at the first update (the sampler's log-probs are the
    DeepStack update forward's), weights moved, and a checkpoint our loader reads back as Qwen3-VL."""
    import train

    config = {
        "model": {"path": str(tiny_qwen3vl_dir)},
        "data": {"synth_items": 2},
        "rollout": {"group_size": 4, "max_new_tokens": 8, "prompts_per_batch": 2},
        "optim": {"lr": 1.0e-3},
        "train": {"steps": 2, "prompts_per_step": 4, "micro_batch_size": 8, "sft_warmup_steps": 1},
        "checkpoint": {"every": 3},
        "log": {"progress_bar": False},
        "output_dir": str(tmp_path / "run"),
    }
    (tmp_path / "qwen3vl.yaml").write_text(yaml.safe_dump(config))
    train.main([str(tmp_path / "qwen3vl.yaml")])
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[0]["loss/sft_nll"] > 0
    for row in rows[1:]:
        assert all(torch.isfinite(torch.tensor(row[k])) for k in ("loss/total", "kl", "optim/grad_norm", "reward/total"))
        assert row["completions/mean_length"] > 0
        assert abs(row["grpo/ratio_mean"] - 1) < 1e-4
    checkpoint = sorted((run / "checkpoints").glob("step-*"))[-1]
    initial = load_file(tiny_qwen3vl_dir / "model.safetensors")
    trained = load_file(checkpoint / "model.safetensors")
    assert max((trained[k] - initial[k]).abs().max().item() for k in initial if k in trained) > 0
    assert family_of_dir(checkpoint) is QWEN3_VL
    assert type(load_processor(checkpoint)) is Qwen3VLImageOnlyProcessor
