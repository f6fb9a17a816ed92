"""Our mRoPE positions against the installed transformers' get_rope_index."""

import inspect

import pytest
import torch
from transformers import Qwen2_5_VLConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

from mixedr1.positions import append_text_positions, mrope_position_ids

IMG = 7  # image token id in these synthetic sequences


@pytest.fixture(scope="module")
def hf_model():
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=64,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                           patch_size=14, spatial_merge_size=2, fullatt_block_indexes=[0]),
        image_token_id=IMG, video_token_id=8, vision_start_token_id=5, vision_end_token_id=6,
    )
    return Qwen2_5_VLModel(config).eval()


def hf_rope_index(model, input_ids, attention_mask, grid):
    params = inspect.signature(model.get_rope_index).parameters
    kwargs = dict(image_grid_thw=grid, attention_mask=attention_mask)
    if "mm_token_type_ids" in params:  # transformers >= 5.2x
        kwargs["mm_token_type_ids"] = (input_ids == IMG).int()
    return model.get_rope_index(input_ids, **kwargs)


def row(prefix, grids, suffix):
    ids = list(prefix)
    for t, h, w in grids:
        ids += [5] + [IMG] * (t * h * w // 4) + [6]
    return ids + list(suffix)


def test_matches_transformers_with_left_padding_and_several_images(hf_model):
    rows = [
        row([1, 2, 3], [(1, 4, 6)], [9, 10]),  # one wide image
        row([1], [(1, 6, 4), (1, 2, 2)], [9, 10, 11, 12]),  # two images, one tall
        row([1, 2, 3, 4, 9, 10], [], []),  # text only
    ]
    grids = torch.tensor([[1, 4, 6], [1, 6, 4], [1, 2, 2]])
    L = max(len(r) for r in rows)
    input_ids = torch.tensor([[0] * (L - len(r)) + r for r in rows])  # left padded
    attention_mask = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in rows])
    ours, next_position = mrope_position_ids(input_ids, attention_mask, grids, IMG, 2)
    theirs, deltas = hf_rope_index(hf_model, input_ids, attention_mask, grids)
    valid = attention_mask.bool()
    assert torch.equal(ours[:, valid], theirs[:, valid])
    # delta = next_position - number of real tokens (transformers' rope_deltas)
    assert torch.equal(next_position - attention_mask.sum(1), deltas.view(-1))


@pytest.fixture(scope="module")
def hf_qwen3vl_model():
    from transformers import Qwen3VLConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel

    config = Qwen3VLConfig(
        text_config=dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=16, intermediate_size=64,
                         rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [4, 2, 2],
                                          "mrope_interleaved": True}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                           patch_size=16, spatial_merge_size=2, num_position_embeddings=16, deepstack_visual_indexes=[0]),
        image_token_id=IMG, video_token_id=8, vision_start_token_id=5, vision_end_token_id=6,
    )
    return Qwen3VLModel(config).eval()


def test_matches_qwen3vl_get_rope_index(hf_qwen3vl_model):
    """Qwen3-VL's own get_rope_index (interleaved mRoPE: the interleaving is in its rotary embedding)
    gives images the positions of the Qwen2-VL rule, so the same `[3, B, L]` ids serve it."""
    rows = [
        row([1, 2, 3], [(1, 4, 6)], [9, 10]),  # one wide image
        row([1], [(1, 6, 4), (1, 2, 2)], [9, 10, 11, 12]),  # two images, one tall
        row([1, 2, 3, 4, 9, 10], [], []),  # text only
        row([], [(1, 8, 2)], [9]),  # starts with an image
    ]
    grids = torch.tensor([[1, 4, 6], [1, 6, 4], [1, 2, 2], [1, 8, 2]])
    L = max(len(r) for r in rows)
    input_ids = torch.tensor([[0] * (L - len(r)) + r for r in rows])  # left padded
    attention_mask = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in rows])
    ours, next_position = mrope_position_ids(input_ids, attention_mask, grids, IMG, 2)
    theirs, deltas = hf_qwen3vl_model.get_rope_index(
        input_ids, mm_token_type_ids=(input_ids == IMG).int(), image_grid_thw=grids, attention_mask=attention_mask
    )
    valid = attention_mask.bool()
    assert torch.equal(ours[:, valid], theirs[:, valid])
    assert torch.equal(next_position - attention_mask.sum(1), deltas.view(-1))


def test_hand_computed_small_case():
    # [text, text, <img 2x2 merged: 4 tokens>, text]: text 0,1; image t=2, h=2+{0,1}, w=2+{0,1}; then 2+2=4
    ids = torch.tensor([[1, 2, IMG, IMG, IMG, IMG, 3]])
    pos, nxt = mrope_position_ids(ids, torch.ones_like(ids), torch.tensor([[1, 4, 4]]), IMG, 2)
    assert pos[0].tolist() == [[0, 1, 2, 2, 2, 2, 4]]
    assert pos[1].tolist() == [[0, 1, 2, 2, 3, 3, 4]]
    assert pos[2].tolist() == [[0, 1, 2, 3, 2, 3, 4]]
    assert nxt.tolist() == [5]
    full = append_text_positions(pos, nxt, 3)
    assert full[:, 0, 7:].tolist() == [[5, 6, 7]] * 3


def test_mismatched_image_tokens_raise():
    ids = torch.tensor([[1, IMG, IMG, 2]])
    with pytest.raises(ValueError, match="needs 4 image tokens"):
        mrope_position_ids(ids, torch.ones_like(ids), torch.tensor([[1, 4, 4]]), IMG, 2)
    with pytest.raises(ValueError, match="images in image_grid_thw"):
        mrope_position_ids(torch.tensor([[1, 2]]), torch.ones(1, 2), torch.tensor([[1, 4, 4]]), IMG, 2)
