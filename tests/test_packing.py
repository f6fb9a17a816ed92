"""Sequence packing (`train.packing`): several `[prompt | completion]` sequences per row, positions
restarting per sequence, attention inside each sequence. The packed forward must give the padded
forward's log-probs, entropy and gradients, in the same per-sequence layout, for every family."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image

from mixedr1.data.batch import collate
from mixedr1.data.dataset import Record
from mixedr1.grpo import grpo_policy_loss, loss_normalizers
from mixedr1.models import load_model, load_processor
from mixedr1.policy import PackedBatch, PolicyModel, build_sequences, features_per_prompt, image_embeds_for, row_image_embeds

# Image sizes per prompt (h, w): two images, one, none. The tiny models merge 2x2 patches of 14 px
# (Qwen2.5-VL, InternVL tiles of 56 px) or 16 px (Qwen3-VL).
SIZES = [[(112, 56), (56, 84)], [(56, 56)], []]
FAMILY_DIRS = {"qwen2_5_vl": "tiny_qwen_dir", "internvl": "tiny_internvl_dir", "qwen3_vl": "tiny_qwen3vl_dir"}


def make_step(request, tmp_path, family, attn="sdpa"):
    """A model of `family`, three collated prompts (uneven: their images and text differ) and G=3
    completions each of uneven lengths (one of a single token)."""
    path = request.getfixturevalue(FAMILY_DIRS[family])
    model = load_model(path, dtype="float32", attn_implementation=attn)
    processor = load_processor(path)
    processor.tokenizer.padding_side = "left"
    records = []
    questions = ["What colour is it?", "How many squares are there? Answer with a number.", "Describe it."]
    for i, (question, sizes) in enumerate(zip(questions, SIZES)):
        images = []
        for j, (h, w) in enumerate(sizes):
            images.append(str(tmp_path / f"image{i}-{j}.png"))
            Image.new("RGB", (w, h), ((70 * i + 40 * j) % 256, 90, 200)).save(images[-1])
        records.append(Record(id=f"r{i}", images=tuple(images), question=question, answer="red", problem_type="open_ended"))
    batch = collate(records, processor)
    G, T, B = 3, 7, 3
    prompt_index = torch.arange(B).repeat_interleave(G)  # [N]
    lengths = torch.tensor([7, 1, 4, 6, 2, 7, 3, 5, 1])  # [N]
    completion_mask = (torch.arange(T)[None] < lengths[:, None]).long()  # [N, T]
    generator = torch.Generator().manual_seed(3)
    completion_ids = torch.randint(10, 400, (B * G, T), generator=generator)
    image_token = model.config.image_token_id if hasattr(model.config, "image_token_id") else model.config.image_token_index
    completion_ids[completion_ids == image_token] += 1  # a sampled image token would take an image feature
    completion_ids = completion_ids.masked_fill(completion_mask == 0, processor.tokenizer.pad_token_id)
    seq = build_sequences(model, batch.input_ids, batch.attention_mask, batch.image_layout,
                          completion_ids, completion_mask, prompt_index)
    return model, batch, seq


def packed_logprobs(policy, seq, micro_batches, feats, with_entropy=True):
    logprobs = torch.zeros(seq.completion_mask.shape)  # [N, T]
    entropy = torch.zeros(seq.completion_mask.shape)
    for idx, mb in micro_batches:
        lp, ent = policy(mb, row_image_embeds(feats, mb.prompt_index), with_entropy=with_entropy)
        logprobs[idx, : mb.num_completion_tokens] = lp
        entropy[idx, : mb.num_completion_tokens] = ent
    return logprobs, entropy


@pytest.mark.parametrize("family", list(FAMILY_DIRS))
def test_packed_forward_equals_the_padded_forward(request, tmp_path, family):
    model, batch, seq = make_step(request, tmp_path, family)
    policy = PolicyModel(model, chunk_size=5)
    mask = seq.completion_mask.bool()
    with torch.no_grad():
        feats = features_per_prompt(model, batch.pixel_values, batch.image_layout, batch.images_per_prompt.tolist())
        padded, padded_entropy = policy(seq, row_image_embeds(feats, seq.prompt_index), with_entropy=True)
        longest = int(seq.attention_mask.sum(1).max())
        # One row per micro-batch of up to 2.5 sequences' worth, two rows per micro-batch, everything in one row.
        for max_tokens, row_tokens in ((0, 2 * longest + longest // 2), (4 * longest, 2 * longest), (0, 10**6)):
            micro_batches = seq.packed_micro_batches(max_tokens, row_tokens)
            assert sorted(torch.cat([idx for idx, _ in micro_batches]).tolist()) == list(range(9))
            assert all(isinstance(mb, PackedBatch) for _, mb in micro_batches)
            packed, packed_entropy = packed_logprobs(policy, seq, micro_batches, feats)
            torch.testing.assert_close(packed[mask], padded[mask], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(packed_entropy[mask], padded_entropy[mask], atol=1e-5, rtol=1e-5)
            assert not packed[~mask].any() and not packed_entropy[~mask].any()  # 0 off the completion mask
            processed, real = seq.padded_tokens(micro_batches)
            assert real == int(seq.attention_mask.sum()) and real <= processed < seq.input_ids.numel()
    # Several sequences do share a row (else the test would not test packing).
    assert any(mb.segment_ids.max() > 0 for _, mb in seq.packed_micro_batches(0, 10**6))


def test_packed_rows_restart_positions_and_keep_each_sequence_whole(request, tmp_path):
    model, _, seq = make_step(request, tmp_path, "qwen2_5_vl")
    (idx, mb), = seq.packed_micro_batches(0, 10**6)  # one row holds all nine
    assert mb.input_ids.shape[0] == 1 and mb.input_ids.shape[1] == int(seq.attention_mask.sum())
    column = 0
    for k, i in enumerate(idx.tolist()):
        real = seq.attention_mask[i].bool()
        n = int(real.sum())
        assert torch.equal(mb.input_ids[0, column : column + n], seq.input_ids[i, real])
        assert torch.equal(mb.position_ids[:, 0, column : column + n], seq.position_ids[:, i, real])  # mRoPE [3, r, W]
        assert (mb.segment_ids[0, column : column + n] == k).all()
        column += n
    assert mb.cu_seq_lens.tolist()[-1] == column and len(mb.cu_seq_lens) == 10  # flash-attn varlen boundaries


@pytest.mark.parametrize("family", ["qwen2_5_vl", "internvl"])
def test_eager_attention_packs_too(request, tmp_path, family):
    """eager adds the mask to the scores: the packed mask is additive there."""
    model, batch, seq = make_step(request, tmp_path, family, attn="eager")
    policy = PolicyModel(model)
    mask = seq.completion_mask.bool()
    with torch.no_grad():
        feats = features_per_prompt(model, batch.pixel_values, batch.image_layout, batch.images_per_prompt.tolist())
        padded, _ = policy(seq, row_image_embeds(feats, seq.prompt_index))
        packed, _ = packed_logprobs(policy, seq, seq.packed_micro_batches(0, 10**6), feats)
    torch.testing.assert_close(packed[mask], padded[mask], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_packed_loss_gradients_equal_the_padded_ones(request, tmp_path, family):
    """The GRPO loss summed over packed micro-batches (gradient accumulation, global normalisers) has the
    gradient of the padded whole batch; the vision tower trains here, so the features' gradient
    (DeepStack mergers included for Qwen3-VL) goes through the packed image tokens too."""
    model, batch, seq = make_step(request, tmp_path, family)
    policy = PolicyModel(model)
    N, T = seq.completion_mask.shape
    generator = torch.Generator().manual_seed(5)
    advantages = torch.randn(N, generator=generator)
    old = -torch.rand(N, T, generator=generator)
    num_sequences, num_tokens = loss_normalizers(seq.completion_mask)

    def loss_of(logprobs, idx, mb):
        loss, _ = grpo_policy_loss(logprobs, old[idx, : mb.num_completion_tokens], old[idx, : mb.num_completion_tokens],
                                   advantages[idx], mb.completion_mask, beta=0.04, loss_agg="token_mean",
                                   num_sequences=num_sequences, num_tokens=num_tokens, max_completion_length=T)
        return loss

    def gradients(micro_batches):
        model.zero_grad()
        total = 0.0
        for idx, mb in micro_batches:
            loss = loss_of(policy(mb, image_embeds_for(policy, batch, mb, None))[0], idx, mb)
            loss.backward()
            total += loss.item()
        return total, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    padded_loss, padded = gradients([(torch.arange(N), seq)])
    packed_loss, packed = gradients(seq.packed_micro_batches(3 * int(seq.attention_mask.sum(1).max()), 0))
    assert packed_loss == pytest.approx(padded_loss, rel=1e-5, abs=1e-7)
    assert packed.keys() == padded.keys() and any("visual" in name for name in packed)
    for name in padded:
        torch.testing.assert_close(packed[name], padded[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.gpu
@pytest.mark.parametrize("family", list(FAMILY_DIRS))
def test_flash_attention_varlen_packing_equals_the_padded_forward(request, tmp_path, family):
    """flash_attention_2 takes the packed rows as varlen boundaries (cu_seq_lens, no mask). Not yet run:
    needs CUDA and flash-attn."""
    pytest.importorskip("flash_attn")
    model, batch, seq = make_step(request, tmp_path, family, attn="flash_attention_2")
    model = model.to("cuda", torch.bfloat16)
    batch = batch.to("cuda")
    seq = dataclasses.replace(seq, **{name: getattr(seq, name).cuda() for name in
                                      ("input_ids", "attention_mask", "position_ids", "completion_mask", "prompt_index")})
    policy = PolicyModel(model)
    mask = seq.completion_mask.bool()
    with torch.no_grad():
        feats = features_per_prompt(model, batch.pixel_values, batch.image_layout, batch.images_per_prompt.tolist())
        padded, _ = policy(seq, row_image_embeds(feats, seq.prompt_index))
        packed = torch.zeros_like(padded)
        for idx, mb in seq.packed_micro_batches(4 * int(seq.attention_mask.sum(1).max())):
            packed[idx, : mb.num_completion_tokens] = policy(mb, row_image_embeds(feats, mb.prompt_index))[0]
    torch.testing.assert_close(packed[mask], padded[mask], atol=3e-2, rtol=3e-2)
