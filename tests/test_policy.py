"""The training forward (PolicyModel) against a plain transformers forward of the same rows."""

import inspect

import pytest
import torch
from PIL import Image

from mixedr1.models import load_model, load_processor
from mixedr1.policy import PolicyModel, build_sequences, features_per_prompt, row_image_embeds


@pytest.fixture(scope="module")
def tiny(tiny_qwen_dir):
    path = tiny_qwen_dir
    model = load_model(path, dtype="float32", attn_implementation="sdpa")
    processor = load_processor(path)
    processor.tokenizer.padding_side = "left"
    return model, processor


def encode(processor, texts, images):
    msgs = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": t}]}] for t in texts]
    prompts = [processor.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in msgs]
    return processor(text=prompts, images=images, return_tensors="pt", padding=True)


def reference_logprobs(model, enc, completion_ids, completion_mask, prompt_index, G):
    """Per row: a full transformers forward of prompt+completion with its own image, log_softmax, gather."""
    rows = []
    per_image = (enc["image_grid_thw"].prod(-1)).tolist()
    starts = [sum(per_image[:i]) for i in range(len(per_image))]
    for r in range(completion_ids.shape[0]):
        b = int(prompt_index[r])
        keep = enc["attention_mask"][b].bool()
        prompt = enc["input_ids"][b][keep]
        T = int(completion_mask[r].sum())
        ids = torch.cat([prompt, completion_ids[r, :T]])[None]
        kwargs = dict(
            input_ids=ids, attention_mask=torch.ones_like(ids),
            pixel_values=enc["pixel_values"][starts[b] : starts[b] + per_image[b]],
            image_grid_thw=enc["image_grid_thw"][b : b + 1],
        )
        if "mm_token_type_ids" in inspect.signature(model.forward).parameters:
            kwargs["mm_token_type_ids"] = (ids == model.config.image_token_id).int()
        logits = model(**kwargs).logits[0, len(prompt) - 1 : -1]  # [T, V]
        lp = torch.log_softmax(logits.float(), -1).gather(-1, completion_ids[r, :T, None])[:, 0]
        rows.append(torch.nn.functional.pad(lp, (0, completion_ids.shape[1] - T)))
    return torch.stack(rows)


def test_policy_logprobs_match_transformers_forward(tiny):
    model, processor = tiny
    G, T = 3, 6
    images = [Image.new("RGB", (84, 56), "red"), Image.new("RGB", (56, 112), "blue")]
    enc = encode(processor, ["What colour is it?", "Is it blue?"], images)
    B = 2
    prompt_index = torch.arange(B).repeat_interleave(G)  # [N]
    torch.manual_seed(1)
    completion_ids = torch.randint(10, 400, (B * G, T))
    lengths = torch.tensor([6, 1, 4, 6, 2, 5])
    completion_mask = (torch.arange(T)[None] < lengths[:, None]).long()  # right padding
    completion_ids = completion_ids.masked_fill(completion_mask == 0, processor.tokenizer.pad_token_id)

    batch = build_sequences(model, enc["input_ids"], enc["attention_mask"], enc["image_grid_thw"],
                            completion_ids, completion_mask, prompt_index)
    with torch.no_grad():
        feats = features_per_prompt(model, enc["pixel_values"], enc["image_grid_thw"], [1, 1])
        ours, entropy = PolicyModel(model, chunk_size=5)(batch, row_image_embeds(feats, prompt_index), with_entropy=True)
        theirs = reference_logprobs(model, enc, completion_ids, completion_mask, prompt_index, G)
    mask = completion_mask.bool()
    torch.testing.assert_close(ours[mask], theirs[mask], atol=1e-5, rtol=1e-5)
    assert entropy.shape == (B * G, T) and torch.all(entropy[mask] > 0)

    # A micro-batch of rows gives the same numbers as the whole batch.
    idx = torch.tensor([4, 1])
    with torch.no_grad():
        part, _ = PolicyModel(model)(batch.rows(idx), row_image_embeds(feats, prompt_index[idx]))
    torch.testing.assert_close(part[mask[idx]], ours[idx][mask[idx]], atol=1e-5, rtol=1e-5)


def test_gradient_flows_to_language_model_not_frozen_vision(tiny):
    model, processor = tiny
    enc = encode(processor, ["Describe."], [Image.new("RGB", (56, 56), "green")])
    completion_ids = torch.randint(10, 400, (2, 4))
    completion_mask = torch.ones(2, 4, dtype=torch.long)
    prompt_index = torch.zeros(2, dtype=torch.long)
    batch = build_sequences(model, enc["input_ids"], enc["attention_mask"], enc["image_grid_thw"],
                            completion_ids, completion_mask, prompt_index)
    with torch.no_grad():
        feats = features_per_prompt(model, enc["pixel_values"], enc["image_grid_thw"], [1])
    model.zero_grad()
    logprobs, _ = PolicyModel(model)(batch, row_image_embeds(feats, prompt_index))
    logprobs.sum().backward()
    assert model.model.language_model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.model.visual.parameters())


def test_bf16_autocast_over_fp32_weights_trains(tiny):
    """The single-GPU path (`model.dtype: auto`): fp32 weights, bf16 compute under autocast; run here
    with CPU autocast. Log-probs stay close to fp32 and the hand-written backward gets one dtype."""
    model, processor = tiny
    enc = encode(processor, ["Describe."], [Image.new("RGB", (56, 56), "green")])
    completion_ids = torch.randint(10, 400, (2, 5))
    completion_mask = torch.ones(2, 5, dtype=torch.long)
    prompt_index = torch.zeros(2, dtype=torch.long)
    batch = build_sequences(model, enc["input_ids"], enc["attention_mask"], enc["image_grid_thw"],
                            completion_ids, completion_mask, prompt_index)
    with torch.no_grad():
        feats = features_per_prompt(model, enc["pixel_values"], enc["image_grid_thw"], [1])
        exact, _ = PolicyModel(model)(batch, row_image_embeds(feats, prompt_index))
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logprobs, _ = PolicyModel(model)(batch, row_image_embeds(feats, prompt_index))
    logprobs.sum().backward()
    assert logprobs.dtype == torch.float32
    torch.testing.assert_close(logprobs, exact, atol=0.1, rtol=0.05)
    grad = model.lm_head.weight.grad
    assert grad is not None and grad.dtype == torch.float32 and torch.isfinite(grad).all()


def test_internvl_policy_logprobs_match_transformers_forward(tmp_path, tiny_internvl_dir):
    """Native InternVL (1-D positions, tiles): PolicyModel on collated prompts equals a plain forward
    of each prompt+completion row with its own tiles; micro-batch features via pixels_for_prompts."""
    from mixedr1.data.batch import collate, pixels_for_prompts
    from mixedr1.data.dataset import Record

    path = tiny_internvl_dir
    model = load_model(path, dtype="float32", attn_implementation="sdpa")
    processor = load_processor(path)
    sizes = [(112, 56), (56, 56), None]  # 2 tiles + thumbnail, 1 tile, text only
    records = []
    for i, size in enumerate(sizes):
        images = []
        if size is not None:
            images = [str(tmp_path / f"image{i}.png")]
            Image.new("RGB", (size[1], size[0]), "red").save(images[0])
        records.append(Record(id=f"r{i}", images=images, question="What colour is it?", answer="red", problem_type="open_ended"))
    batch = collate(records, processor)
    assert batch.tiles_per_image.tolist() == [3, 1] and batch.pixel_values.shape == (4, 3, 56, 56)
    assert batch.images_per_prompt.tolist() == [1, 1, 0] and batch.model_image_sizes[0] == [(1000, 1000)]
    pixels, tiles = pixels_for_prompts(batch, [1, 0, 1])
    assert tiles.tolist() == [1, 3, 1] and torch.equal(pixels, batch.pixel_values[[3, 0, 1, 2, 3]])

    G, T, B = 2, 5, 3
    prompt_index = torch.arange(B).repeat_interleave(G)  # [N]
    torch.manual_seed(1)
    lengths = torch.tensor([5, 1, 3, 5, 2, 4])
    completion_mask = (torch.arange(T)[None] < lengths[:, None]).long()
    completion_ids = torch.randint(10, 400, (B * G, T)).masked_fill(completion_mask == 0, processor.tokenizer.pad_token_id)
    seq = build_sequences(model, batch.input_ids, batch.attention_mask, batch.image_grid_thw,
                          completion_ids, completion_mask, prompt_index)
    assert seq.position_ids.shape == seq.input_ids.shape  # 1-D positions
    with torch.no_grad():
        feats = features_per_prompt(model, batch.pixel_values, batch.image_layout, batch.images_per_prompt.tolist())
        assert [f.shape[0] for f in feats] == [12, 4, 0]
        ours, _ = PolicyModel(model, chunk_size=4)(seq, row_image_embeds(feats, prompt_index))
        theirs = torch.zeros(B * G, T)
        tile_rows = {0: [0, 1, 2], 1: [3], 2: []}
        for r in range(B * G):
            b, n = int(prompt_index[r]), int(lengths[r])
            prompt = batch.input_ids[b][batch.attention_mask[b].bool()]
            ids = torch.cat([prompt, completion_ids[r, :n]])[None]
            pixel_values = batch.pixel_values[tile_rows[b]] if tile_rows[b] else None
            logits = model(input_ids=ids, pixel_values=pixel_values).logits[0, len(prompt) - 1 : -1]  # [n, V]
            theirs[r, :n] = torch.log_softmax(logits.float(), -1).gather(-1, completion_ids[r, :n, None])[:, 0]
    mask = completion_mask.bool()
    torch.testing.assert_close(ours[mask], theirs[mask], atol=1e-5, rtol=1e-5)
