"""The KV-cached sampler against references: HF's M-RoPE index, a teacher-forced forward,
`model.generate`, the no-sharing prefill, and hand-computed sampling distributions."""

from __future__ import annotations

import copy

import pytest
import torch

from mixedr1.models import enable_gradient_checkpointing, load_model, load_processor
from sampler_checks import eos_ids, make_batch, teacher_forced_logprobs
from mixedr1.rollout import (
    Rollout,
    SamplingParams,
    banned_token_ids,
    decode_completions,
    generate_rollout,
    mrope_position_ids,
    repeat_prompts,
    sample_next_tokens,
)


# The sampler checks run with both decodes (mixedr1/rollout.py step 3); tests/test_static_decode.py
# compares the two directly.
DECODES = pytest.mark.parametrize("decode", ["static", "dynamic"])


@pytest.fixture(scope="module")
def tiny(tiny_qwen_dir):
    path = tiny_qwen_dir
    model = load_model(path, dtype=torch.float32, attn_implementation="sdpa")
    processor = load_processor(path)
    processor.tokenizer.padding_side = "left"
    return model, processor


MIXED = [
    ("Is there a red circle?", [(56, 56)]),  # 4 image tokens
    ("How many squares are there? Answer with a number or short text.", [(112, 56), (56, 84)]),  # 8 + 6
    ("Describe the image in one sentence.", []),  # text only
]


def test_mrope_positions_equal_hf_get_rope_index(tiny):
    model, processor = tiny
    batch = make_batch(processor, MIXED)
    positions, next_position = mrope_position_ids(
        batch["input_ids"],
        batch["attention_mask"],
        batch["image_grid_thw"],
        image_token_id=model.config.image_token_id,
        spatial_merge_size=model.config.vision_config.spatial_merge_size,
    )
    reference, rope_deltas = model.model.get_rope_index(
        batch["input_ids"],
        mm_token_type_ids=batch["mm_token_type_ids"],
        image_grid_thw=batch["image_grid_thw"],
        attention_mask=batch["attention_mask"],
    )
    assert torch.equal(positions, reference)
    # HF's decode rule: position = cache_len (real tokens) + rope_delta.
    assert torch.equal(next_position, batch["attention_mask"].sum(1) + rope_deltas.squeeze(1))
    assert next_position.tolist()[2] == batch["attention_mask"][2].sum().item()  # text only: delta 0


@DECODES
def test_sampling_logprobs_equal_teacher_forced_forward(tiny, decode):
    model, processor = tiny
    batch = make_batch(processor, MIXED)
    params = SamplingParams(decode=decode, group_size=3, max_new_tokens=12, temperature=0.7, pad_token_id=0, seed=1)
    free = generate_rollout(model, batch, params)
    # EOS = tokens sampled mid-way by rows 1 and 5, so some rows stop early (the draws are per row).
    params.eos_token_ids = (free.completion_ids[1, 3].item(), free.completion_ids[5, 7].item())
    rollout = generate_rollout(model, batch, params)
    assert rollout.completion_ids.shape[0] == 9
    assert rollout.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert "eos" in rollout.finish_reason and "length" in rollout.finish_reason
    assert rollout.completion_lengths[1].item() <= 4 and rollout.completion_lengths[5].item() <= 8
    reference = teacher_forced_logprobs(model, batch, rollout, 3, 0.7)
    torch.testing.assert_close(rollout.sampling_logprobs, reference, atol=1e-5, rtol=0)
    assert (rollout.sampling_logprobs[rollout.completion_mask == 0] == 0).all()
    assert (rollout.sampling_logprobs[rollout.completion_mask == 1] < 0).all()


@pytest.mark.parametrize("prompts", [MIXED[:1], MIXED[:2], MIXED[2:]], ids=["one_prompt", "left_padded_pair", "text_only"])
@DECODES
def test_greedy_equals_generate(tiny, prompts, decode):
    model, processor = tiny
    batch = make_batch(processor, prompts)
    pad = processor.tokenizer.pad_token_id
    params = SamplingParams(decode=decode, group_size=1, max_new_tokens=16, greedy=True, eos_token_ids=eos_ids(processor), pad_token_id=pad)
    rollout = generate_rollout(model, batch, params)
    with torch.no_grad():
        sequences = model.generate(
            **batch,
            do_sample=False,
            max_new_tokens=16,
            eos_token_id=eos_ids(processor),
            pad_token_id=pad,
            suppress_tokens=banned_token_ids(model.config),
        )
    expected = sequences[:, batch["input_ids"].shape[1] :]
    assert torch.equal(rollout.completion_ids, expected[:, : rollout.completion_ids.shape[1]])
    assert rollout.completion_ids.shape[1] == 16


@DECODES
def test_share_prefix_equals_separate_prefills(tiny, decode):
    model, processor = tiny
    batch = make_batch(processor, MIXED)
    params = SamplingParams(decode=decode, group_size=4, max_new_tokens=10, eos_token_ids=[563], pad_token_id=0, seed=7)
    shared = generate_rollout(model, batch, params, share_prefix=True)
    separate = generate_rollout(model, batch, params, share_prefix=False)
    assert torch.equal(shared.completion_ids, separate.completion_ids)
    assert torch.equal(shared.completion_mask, separate.completion_mask)
    assert shared.finish_reason == separate.finish_reason
    torch.testing.assert_close(shared.sampling_logprobs, separate.sampling_logprobs, atol=1e-5, rtol=0)
    # The G samples of a prompt differ: each row gets its own random numbers.
    assert len({tuple(row) for row in shared.completion_ids[:4].tolist()}) > 1


@DECODES
def test_early_eos_masks_pads_and_drops_rows_without_changing_the_others(tiny, decode):
    model, processor = tiny
    batch = make_batch(processor, MIXED)
    free = generate_rollout(model, batch, SamplingParams(decode=decode, group_size=2, max_new_tokens=12, pad_token_id=0, seed=3))
    assert free.finish_reason == ["length"] * 6 and free.completion_mask.all()
    # EOS = tokens emitted by rows 0, 3 and 4 at different steps: those rows (and any other row
    # emitting one of them) stop there, and are dropped from the batch (dynamic) or masked (static)
    # at different steps.
    eos = [free.completion_ids[0, 2].item(), free.completion_ids[3, 6].item(), free.completion_ids[4, 9].item()]
    pad = 1
    params = SamplingParams(decode=decode, group_size=2, max_new_tokens=12, eos_token_ids=eos, pad_token_id=pad, seed=3)
    stopped = generate_rollout(model, batch, params)
    assert stopped.finish_reason[0] == "eos" and stopped.completion_lengths[0].item() == 3
    assert stopped.finish_reason.count("length") >= 1 and stopped.finish_reason.count("eos") >= 3
    for row in range(6):
        hits = torch.isin(free.completion_ids[row], torch.tensor(eos)).nonzero()
        length = hits[0].item() + 1 if len(hits) else 12
        assert stopped.completion_lengths[row].item() == length
        assert stopped.finish_reason[row] == ("eos" if len(hits) else "length")
        assert stopped.completion_mask[row, :length].all() and not stopped.completion_mask[row, length:].any()
        assert (stopped.completion_ids[row, length:] == pad).all()
        # Same per-row random numbers, and a dropped / masked row does not disturb the rows still running.
        assert torch.equal(stopped.completion_ids[row, :length], free.completion_ids[row, :length])
        torch.testing.assert_close(
            stopped.sampling_logprobs[row, :length], free.sampling_logprobs[row, :length], atol=1e-5, rtol=0
        )
    assert stopped.completion_ids.shape[1] == stopped.completion_lengths.max().item()


@DECODES
def test_all_rows_stop_early_trims_the_completion_axis(tiny, decode):
    model, processor = tiny
    batch = make_batch(processor, MIXED[:1])
    greedy = SamplingParams(decode=decode, group_size=2, max_new_tokens=20, greedy=True, pad_token_id=0)
    first = generate_rollout(model, batch, greedy).completion_ids[0, 0].item()
    greedy.eos_token_ids = (first,)
    rollout = generate_rollout(model, batch, greedy)
    assert rollout.completion_ids.tolist() == [[first], [first]]
    assert rollout.finish_reason == ["eos", "eos"]


def test_top_k_one_equals_greedy_and_seeds_reproduce(tiny):
    model, processor = tiny
    batch = make_batch(processor, MIXED[:2])
    greedy = generate_rollout(model, batch, SamplingParams(group_size=2, max_new_tokens=8, greedy=True))
    top1 = generate_rollout(model, batch, SamplingParams(group_size=2, max_new_tokens=8, top_k=1, seed=5))
    assert torch.equal(greedy.completion_ids, top1.completion_ids)
    sampled = [generate_rollout(model, batch, SamplingParams(group_size=2, max_new_tokens=8, seed=s)) for s in (11, 11, 12)]
    assert torch.equal(sampled[0].completion_ids, sampled[1].completion_ids)
    assert torch.equal(sampled[0].sampling_logprobs, sampled[1].sampling_logprobs)
    assert not torch.equal(sampled[0].completion_ids, sampled[2].completion_ids)
    # An explicit generator is used instead of the seed.
    params = SamplingParams(group_size=2, max_new_tokens=8, seed=0)
    explicit = generate_rollout(model, batch, params, generator=torch.Generator().manual_seed(11))
    assert torch.equal(explicit.completion_ids, sampled[0].completion_ids)


def test_training_mode_with_gradient_checkpointing_still_uses_the_cache(tiny):
    model, processor = tiny
    model = copy.deepcopy(model)
    batch = make_batch(processor, MIXED[:2])
    params = SamplingParams(group_size=2, max_new_tokens=6, seed=9)
    reference = generate_rollout(model, batch, params)
    enable_gradient_checkpointing(model)  # what the trainer does
    model.train()
    model.model.visual.eval()  # e.g. a frozen tower kept in eval mode: the flags come back as they were
    rollout = generate_rollout(model, batch, params)
    assert torch.equal(rollout.completion_ids, reference.completion_ids)
    assert model.training and model.model.language_model.training and not model.model.visual.training


def test_vision_placeholders_are_never_sampled(tiny):
    model, processor = tiny
    model = copy.deepcopy(model)
    banned = banned_token_ids(model.config)
    assert len(banned) == 4
    # A bias that makes the four vision tokens hold nearly all the probability mass.
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[banned] = 30.0
    model.lm_head = head
    batch = make_batch(processor, MIXED)
    for greedy in (True, False):
        rollout = generate_rollout(model, batch, SamplingParams(group_size=4, max_new_tokens=6, greedy=greedy, seed=2))
        assert rollout.completion_ids.shape == (12, 6)
        assert not torch.isin(rollout.completion_ids, torch.tensor(banned)).any()
        # Their mass still counts in the recorded log-prob (the teacher-forced forward's normaliser):
        # every sampled token has probability about e^-30 / 4 under the full softmax.
        assert rollout.sampling_logprobs.max().item() < -25


def test_sample_next_tokens_distribution_matches_hand_computed():
    probs = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
    rows = 40_000
    logits = probs.log().expand(rows, -1)  # [N, V]
    uniforms = torch.rand(rows, generator=torch.Generator().manual_seed(0))
    banned = torch.tensor([1])

    def frequencies(**kwargs):
        tokens, logprobs = sample_next_tokens(logits, uniforms, SamplingParams(**kwargs), banned)
        # The recorded log-prob is the full, untruncated distribution at temperature T.
        temperature = kwargs.get("temperature", 1.0)
        torch.testing.assert_close(logprobs, torch.log_softmax(logits[0] / temperature, -1)[tokens])
        return torch.bincount(tokens, minlength=6).float() / rows

    def renormalised(kept):
        target = torch.zeros(6)
        target[kept] = probs[kept] / probs[kept].sum()
        return target

    torch.testing.assert_close(frequencies(), renormalised([0, 2, 3, 4, 5]), atol=0.01, rtol=0)
    # top-k 3 of the unbanned tokens: 0, 2, 3.
    torch.testing.assert_close(frequencies(top_k=3), renormalised([0, 2, 3]), atol=0.01, rtol=0)
    # top-p 0.7 over the unbanned renormalised mass (0.533, 0.2, 0.133, ...): keeps 0, 2 (0.733 >= 0.7).
    torch.testing.assert_close(frequencies(top_p=0.7), renormalised([0, 2]), atol=0.01, rtol=0)
    tempered = torch.softmax(probs.log() / 2.0, -1)
    tempered[1] = 0
    torch.testing.assert_close(frequencies(temperature=2.0), tempered / tempered.sum(), atol=0.01, rtol=0)
    tokens, _ = sample_next_tokens(logits[:2], uniforms[:2], SamplingParams(greedy=True), torch.tensor([0]))
    assert tokens.tolist() == [1, 1]
    # The uniform 1 - 2^-24 still lands on a live token.
    tokens, _ = sample_next_tokens(logits[:1], torch.tensor([1 - 2**-24]), SamplingParams(top_k=2), banned)
    assert tokens.item() in (0, 2)


def test_decode_completions_stops_at_the_mask_and_skips_special_tokens(tiny):
    _, processor = tiny
    tokenizer = processor.tokenizer
    ids = tokenizer("yes no", add_special_tokens=False)["input_ids"]
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    completion_ids = torch.tensor([ids + [end, 7], ids + [7, 7]])
    mask = torch.tensor([[1] * (len(ids) + 1) + [0], [1] * len(ids) + [0, 0]])
    rollout = Rollout(completion_ids, mask, torch.zeros(2, len(ids) + 2), torch.tensor([0, 0]), ["eos", "length"])
    assert decode_completions(rollout, tokenizer) == ["yes no", "yes no"]


def test_rejects_right_padding_and_unknown_models(tiny):
    model, processor = tiny
    batch = make_batch(processor, MIXED[:2])
    batch["attention_mask"] = batch["attention_mask"].flip(1)
    with pytest.raises(ValueError, match="LEFT-padded"):
        generate_rollout(model, batch, SamplingParams(group_size=1, max_new_tokens=2))


@DECODES
def test_fsdp2_sharded_model_samples_the_same_and_never_reshards_inside_the_loop(tiny, tmp_path, decode):
    dist = pytest.importorskip("torch.distributed")
    from torch.distributed.fsdp._fully_shard import _fsdp_param_group

    from mixedr1.distributed import fsdp_units, gathered_for_generation, shard_model

    model, processor = tiny
    batch = make_batch(processor, MIXED)
    params = SamplingParams(decode=decode, group_size=2, max_new_tokens=6, eos_token_ids=[563], seed=4)
    plain = generate_rollout(model, batch, params)
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        sharded = shard_model(copy.deepcopy(model))
        states = [unit._get_fsdp_state() for unit in fsdp_units(sharded)]
        # torch 2.13 keeps a list of groups per unit, earlier releases one group.
        groups = sum(len(getattr(state, "_fsdp_param_groups", None) or [state._fsdp_param_group]) for state in states)
        reshards = []
        original = _fsdp_param_group.FSDPParamGroup._to_sharded

        def counting(self):
            reshards.append(self)
            return original(self)

        _fsdp_param_group.FSDPParamGroup._to_sharded = counting
        try:
            rollout = generate_rollout(sharded, batch, params)
        finally:
            _fsdp_param_group.FSDPParamGroup._to_sharded = original
        # One reshard per unit, at the end: parameters stayed gathered for every decode step.
        assert len(reshards) == groups
        assert type(sharded.lm_head.weight).__name__ == "DTensor"
        assert torch.equal(rollout.completion_ids, plain.completion_ids)
        torch.testing.assert_close(rollout.sampling_logprobs, plain.sampling_logprobs, atol=1e-5, rtol=0)
        # Inside the caller's own gathering (the trainer's), the sampler leaves the model gathered.
        reshards.clear()
        _fsdp_param_group.FSDPParamGroup._to_sharded = counting
        try:
            with gathered_for_generation(sharded):
                first = generate_rollout(sharded, batch, params)
                assert type(sharded.lm_head.weight).__name__ != "DTensor" and not reshards
                second = generate_rollout(sharded, batch, params)
                assert not reshards
        finally:
            _fsdp_param_group.FSDPParamGroup._to_sharded = original
        assert len(reshards) == groups
        assert torch.equal(first.completion_ids, plain.completion_ids)
        assert torch.equal(second.completion_ids, plain.completion_ids)
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------
# Native InternVL: 1-D positions, tiles as pixel_values [num_tiles, 3, H, W]


@pytest.fixture(scope="module")
def tiny_internvl(tiny_internvl_dir):
    path = tiny_internvl_dir
    model = load_model(path, dtype=torch.float32, attn_implementation="sdpa")
    processor = load_processor(path)
    processor.tokenizer.padding_side = "left"
    return model, processor


INTERNVL_MIXED = [
    ("Is there a red circle?", [(56, 56)]),  # 1 tile: 4 image tokens
    ("How many squares are there? Answer with a number or short text.", [(112, 56), (56, 56)]),  # 2 + thumbnail, 1
    ("Describe the image in one sentence.", []),  # text only
]


def internvl_teacher_forced_logprobs(model, batch, rollout: Rollout, group_size: int, temperature: float) -> torch.Tensor:
    """One plain transformers forward per prompt+completion row (positions as `generate` makes them:
    cumsum of the mask), no cache, log_softmax(logits / T) at the completion tokens."""
    rows = repeat_prompts(batch, group_size, model.config)
    prompt_len = rows["input_ids"].shape[1]
    input_ids = torch.cat([rows["input_ids"], rollout.completion_ids], dim=1)  # [B*G, P+T]
    attention_mask = torch.cat([rows["attention_mask"], rollout.completion_mask], dim=1)  # [B*G, P+T]
    position_ids = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       pixel_values=rows.get("pixel_values")).logits  # [B*G, P+T, V]
    logprobs = torch.log_softmax(logits[:, prompt_len - 1 : -1].float() / temperature, dim=-1)
    return logprobs.gather(2, rollout.completion_ids.unsqueeze(2)).squeeze(2) * rollout.completion_mask


def test_internvl_prompt_tiles_and_repeat(tiny_internvl):
    model, processor = tiny_internvl
    batch = make_batch(processor, INTERNVL_MIXED)
    assert batch["pixel_values"].shape == (5, 3, 56, 56)  # 1 + (2 + thumbnail) + 1 tiles
    assert (batch["input_ids"] == model.config.image_token_id).sum(1).tolist() == [4, 16, 0]
    rows = repeat_prompts(batch, 2, model.config)
    expected = batch["pixel_values"][[0, 0, 1, 2, 3, 4, 1, 2, 3, 4]]
    assert torch.equal(rows["pixel_values"], expected)


@DECODES
def test_internvl_sampling_logprobs_equal_teacher_forced_forward(tiny_internvl, decode):
    model, processor = tiny_internvl
    batch = make_batch(processor, INTERNVL_MIXED)
    params = SamplingParams(decode=decode, group_size=3, max_new_tokens=10, temperature=0.7, pad_token_id=0, seed=1)
    free = generate_rollout(model, batch, params)
    params.eos_token_ids = (free.completion_ids[1, 3].item(), free.completion_ids[5, 6].item())
    rollout = generate_rollout(model, batch, params)
    assert rollout.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert "eos" in rollout.finish_reason and "length" in rollout.finish_reason
    reference = internvl_teacher_forced_logprobs(model, batch, rollout, 3, 0.7)
    torch.testing.assert_close(rollout.sampling_logprobs, reference, atol=1e-5, rtol=0)
    assert (rollout.sampling_logprobs[rollout.completion_mask == 1] < 0).all()
    assert not (rollout.completion_ids == model.config.image_token_id).any()
    # The no-sharing prefill (B*G rows, tiles repeated) draws the same completions.
    unshared = generate_rollout(model, batch, params, share_prefix=False)
    assert torch.equal(unshared.completion_ids, rollout.completion_ids)
    torch.testing.assert_close(unshared.sampling_logprobs, rollout.sampling_logprobs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("prompts", [INTERNVL_MIXED[:1], INTERNVL_MIXED[:2], INTERNVL_MIXED[2:]],
                         ids=["one_prompt", "left_padded_pair", "text_only"])
@DECODES
def test_internvl_greedy_equals_generate(tiny_internvl, prompts, decode):
    model, processor = tiny_internvl
    batch = make_batch(processor, prompts)
    pad = processor.tokenizer.pad_token_id
    eos = [processor.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    params = SamplingParams(decode=decode, group_size=1, max_new_tokens=16, greedy=True, eos_token_ids=eos, pad_token_id=pad)
    rollout = generate_rollout(model, batch, params)
    with torch.no_grad():
        sequences = model.generate(**batch, do_sample=False, max_new_tokens=16, eos_token_id=eos, pad_token_id=pad,
                                   suppress_tokens=banned_token_ids(model.config))
    expected = sequences[:, batch["input_ids"].shape[1] :]
    assert torch.equal(rollout.completion_ids, expected[:, : rollout.completion_ids.shape[1]])
    assert rollout.completion_ids.shape[1] == 16
