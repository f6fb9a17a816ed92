"""The static decode (preallocated cache, fixed shapes, finished rows masked) against the dynamic one
(growing cache, finished rows dropped): the same tokens and log-probs on every family; its attention
against sdpa with the cache repeated per head; the compiled step on CPU; the config plumbing."""

from __future__ import annotations

import pytest
import torch

from mixedr1.config import ConfigError, load_config
from mixedr1.models import load_model, load_processor
from mixedr1.rollout import SamplingParams, _static_decode_attention, generate_rollout, sampling_params_from_config
from sampler_checks import make_batch

# (text, [(height, width) of each image]) per family's patch size: one image and two images and none.
QWEN_PROMPTS = [
    ("Is there a red circle?", [(56, 56)]),
    ("How many squares are there? Answer with a number or short text.", [(112, 56), (56, 84)]),
    ("Describe the image in one sentence.", []),
]
QWEN3VL_PROMPTS = [
    ("Is there a red circle?", [(64, 64)]),
    ("How many squares are there? Answer with a number or short text.", [(128, 64), (64, 96)]),
    ("Describe the image in one sentence.", []),
]
INTERNVL_PROMPTS = [
    ("Is there a red circle?", [(56, 56)]),
    ("How many squares are there? Answer with a number or short text.", [(112, 56), (56, 56)]),
    ("Describe the image in one sentence.", []),
]


def _load(path):
    model = load_model(path, dtype=torch.float32, attn_implementation="sdpa")
    processor = load_processor(path)
    processor.tokenizer.padding_side = "left"
    return model, processor


@pytest.fixture(scope="module")
def families(tiny_qwen_dir, tiny_internvl_dir, tiny_qwen3vl_dir):
    return {
        "qwen2_5_vl": (*_load(tiny_qwen_dir), QWEN_PROMPTS),
        "internvl": (*_load(tiny_internvl_dir), INTERNVL_PROMPTS),
        "qwen3_vl": (*_load(tiny_qwen3vl_dir), QWEN3VL_PROMPTS),
    }


def assert_same_rollout(static, dynamic):
    assert torch.equal(static.completion_ids, dynamic.completion_ids)
    assert torch.equal(static.completion_mask, dynamic.completion_mask)
    assert static.finish_reason == dynamic.finish_reason
    assert torch.equal(static.prompt_index, dynamic.prompt_index)
    torch.testing.assert_close(static.sampling_logprobs, dynamic.sampling_logprobs, atol=1e-5, rtol=0)


def early_eos(rollout, picks):
    """EOS ids = the tokens some rows sampled at given steps: those rows (and any other that samples one of
    them) stop early, at different steps."""
    return tuple(rollout.completion_ids[row, step].item() for row, step in picks)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "internvl", "qwen3_vl"])
@pytest.mark.parametrize("share_prefix", [True, False], ids=["shared", "separate"])
def test_static_equals_dynamic_token_for_token_with_early_eos(families, family, share_prefix):
    model, processor, prompts = families[family]
    batch = make_batch(processor, prompts)
    base = dict(group_size=3, max_new_tokens=14, temperature=0.8, pad_token_id=1, seed=5)
    free = generate_rollout(model, batch, SamplingParams(**base, decode="dynamic"))
    eos = early_eos(free, [(0, 2), (4, 5), (7, 9)])
    # sync_every=4: the static decode runs on past some rows' EOS, between checks, on masked rows.
    static = generate_rollout(model, batch, SamplingParams(**base, eos_token_ids=eos, sync_every=4),
                              share_prefix=share_prefix)
    dynamic = generate_rollout(model, batch, SamplingParams(**base, eos_token_ids=eos, decode="dynamic"),
                               share_prefix=share_prefix)
    assert static.finish_reason.count("eos") >= 3 and "length" in static.finish_reason
    assert static.completion_lengths.min().item() <= 3
    assert_same_rollout(static, dynamic)
    assert (static.completion_ids[static.completion_mask == 0] == 1).all()  # pad after the end


@pytest.mark.parametrize("sync_every", [1, 3, 16])
def test_every_row_ending_stops_the_static_decode_at_the_next_check(families, sync_every):
    model, processor, prompts = families["qwen2_5_vl"]
    batch = make_batch(processor, prompts[:2])
    greedy = dict(group_size=2, max_new_tokens=20, greedy=True, pad_token_id=0)
    free = generate_rollout(model, batch, SamplingParams(**greedy, decode="dynamic"))
    eos = tuple({free.completion_ids[row, 1].item() for row in range(4)})  # every row ends at step 1 or before
    static = generate_rollout(model, batch, SamplingParams(**greedy, eos_token_ids=eos, sync_every=sync_every))
    dynamic = generate_rollout(model, batch, SamplingParams(**greedy, eos_token_ids=eos, decode="dynamic"))
    assert static.finish_reason == ["eos"] * 4 and static.completion_ids.shape[1] <= 2
    assert_same_rollout(static, dynamic)


def test_static_attention_equals_sdpa_with_the_cache_repeated_per_head():
    generator = torch.Generator().manual_seed(0)
    rows, heads, kv_heads, columns, dim = 5, 6, 2, 11, 8
    query = torch.randn(rows, heads, 1, dim, generator=generator)
    key = torch.randn(rows, kv_heads, columns, dim, generator=generator)
    value = torch.randn(rows, kv_heads, columns, dim, generator=generator)
    mask = torch.rand(rows, 1, 1, columns, generator=generator) < 0.7
    mask[:, ..., 0] = True
    out, weights = _static_decode_attention(None, query, key, value, mask, scaling=0.3)
    assert weights is None and out.shape == (rows, 1, heads, dim)
    repeat = heads // kv_heads  # query head h reads key/value head h // repeat (transformers' repeat_kv)
    reference = torch.nn.functional.scaled_dot_product_attention(
        query, key.repeat_interleave(repeat, 1), value.repeat_interleave(repeat, 1), attn_mask=mask, scale=0.3
    )  # [N, H, 1, D]
    torch.testing.assert_close(out, reference.transpose(1, 2), atol=1e-6, rtol=1e-6)


@pytest.mark.slow  # compiles the decode step: ~35 s on two busy CPU cores, most of it inductor's C++ builds
@pytest.mark.timeout(300)
def test_compiled_static_decode_on_cpu_draws_the_same_and_never_recompiles(families):
    """One compiled step for the whole decode, for a shorter prompt batch with fewer rows (the held
    workspace's spare rows), and for a longer one that grows the workspace: no new graph, no graph break."""
    from torch._dynamo.utils import counters

    model, processor, prompts = families["qwen2_5_vl"]
    base = dict(group_size=2, temperature=0.9, pad_token_id=0, seed=3)
    counters.clear()
    for call, (chosen, max_new) in enumerate([(prompts, 10), (prompts[2:], 6), (prompts[1:], 24)]):
        batch = make_batch(processor, chosen)
        free = generate_rollout(model, batch, SamplingParams(**base, max_new_tokens=max_new, decode="dynamic"))
        eos = early_eos(free, [(1, 3)])
        compiled = generate_rollout(model, batch, SamplingParams(**base, max_new_tokens=max_new, eos_token_ids=eos,
                                                                 compile=True, sync_every=4))
        dynamic = generate_rollout(model, batch, SamplingParams(**base, max_new_tokens=max_new, eos_token_ids=eos,
                                                                decode="dynamic"))
        assert compiled.finish_reason[1] == "eos"
        assert_same_rollout(compiled, dynamic)
        if call == 0:
            assert counters["stats"]["unique_graphs"] == 1
    assert counters["stats"]["unique_graphs"] == 1  # no recompile: other rows, prompt lengths, completion widths
    assert not counters["graph_break"]


def test_rollout_config_reaches_the_sampling_params():
    cfg = load_config(None, ["rollout.decode=dynamic", "rollout.compile=true", "rollout.sync_every=4"])
    params = sampling_params_from_config(cfg.rollout, eos_token_ids=[2], pad_token_id=0)
    assert (params.decode, params.compile, params.sync_every) == ("dynamic", True, 4)
    defaults = sampling_params_from_config(load_config().rollout, eos_token_ids=[2], pad_token_id=0)
    assert (defaults.decode, defaults.compile, defaults.sync_every) == ("static", "auto", 16)
    for override, message in [("rollout.decode=eager", "rollout.decode: expected one of 'static', 'dynamic'"),
                              ("rollout.compile=1", "rollout.compile: expected one of 'auto', True, False, got 1"),
                              ("rollout.compile=sometimes", "rollout.compile: expected one of"),
                              ("rollout.sync_every=0", "rollout.sync_every must be >= 1")]:
        with pytest.raises(ConfigError, match=message):
            load_config(None, [override])
    with pytest.raises(ValueError, match="decode must be 'static' or 'dynamic'"):
        SamplingParams(decode="fast")


def test_compile_auto_decodes_eagerly_when_the_compiler_rejects_the_model(families, tmp_path, monkeypatch):
    """An FSDP2-sharded model (its hooks stop fullgraph tracing): compile=True raises; "auto" does not try it, and
    where it tries a model the compiler rejects, warns once and decodes eagerly, drawing what the dynamic
    decode draws."""
    import copy

    import torch.distributed as dist

    import mixedr1.rollout as rollout
    from mixedr1.distributed import shard_model

    model, processor, prompts = families["qwen2_5_vl"]
    batch = make_batch(processor, prompts)
    params = dict(group_size=2, max_new_tokens=6, pad_token_id=0, seed=4)
    dynamic = generate_rollout(model, batch, SamplingParams(**params, decode="dynamic"))
    auto = SamplingParams(**params, compile="auto")
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        sharded = shard_model(copy.deepcopy(model))
        assert rollout._compile_enabled(auto, torch.device("cuda"), model)
        assert not rollout._compile_enabled(auto, torch.device("cuda"), sharded)
        # The fallback itself, for any rejection: "auto" made to try (also on CPU, also this model).
        monkeypatch.setattr(rollout, "_compile_enabled", lambda params, device, model: params.compile is not False)
        with pytest.raises(torch._dynamo.exc.Unsupported):
            generate_rollout(sharded, batch, SamplingParams(**params, compile=True))
        with pytest.warns(UserWarning, match="torch.compile of the decode step failed, decoding eagerly"):
            first = generate_rollout(sharded, batch, auto)
        second = generate_rollout(sharded, batch, auto)  # eager from the start
    finally:
        dist.destroy_process_group()
    assert_same_rollout(first, dynamic)
    assert_same_rollout(second, dynamic)
