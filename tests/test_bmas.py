"""BMAS (docs/method.md §3, Eq. 3-4) and the bipartite ablation against slow, obvious references."""

import itertools
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixedr1.rewards.bmas import bipartite_scores, bmas_reward, bmas_scores, embed_texts

# ---------------------------------------------------------------------------------------------
# References: plain Python over lists of tensors, no batching, no masks, float64.


def _cos(a, b):
    """Cosine by its formula; 0 when either vector is zero (as F.normalize does)."""
    dot = sum(float(x) * float(y) for x, y in zip(a, b))
    norm_a = math.sqrt(sum(float(x) ** 2 for x in a))
    norm_b = math.sqrt(sum(float(y) ** 2 for y in b))
    if norm_a == 0 or norm_b == 0:
        return 0.0
    return dot / (norm_a * norm_b)


def _reference_bmas(response, truth, combine):
    """The per-pair double loop of Eq. 4 for ONE response [n, D] and ONE truth [m, D]."""
    n, m = len(response), len(truth)
    if n == 0 or m == 0:
        return 0.0
    sim = [[_cos(response[i], truth[j]) for j in range(m)] for i in range(n)]
    row = sum(max(sim[i][j] for j in range(m)) for i in range(n)) / n
    col = sum(max(sim[i][j] for i in range(n)) for j in range(m)) / m
    return (row + col) * (1.0 if combine == "sum" else 0.5)


def _reference_bipartite(response, truth, combine):
    """Brute force over every one-to-one assignment of min(n, m) pairs."""
    n, m = len(response), len(truth)
    if n == 0 or m == 0:
        return 0.0
    sim = [[_cos(response[i], truth[j]) for j in range(m)] for i in range(n)]
    if n <= m:
        best = max(sum(sim[i][cols[i]] for i in range(n)) for cols in itertools.permutations(range(m), n))
    else:
        best = max(sum(sim[rows[j]][j] for j in range(m)) for rows in itertools.permutations(range(n), m))
    return (best / n + best / m) * (1.0 if combine == "sum" else 0.5)


def _random_batch(generator, G, N, M, D, shared_truth, allow_empty=False):
    """Padded batch with uneven lengths; padding holds garbage, which must be ignored."""
    low = 0 if allow_empty else 1
    response_lengths = torch.randint(low, N + 1, (G,), generator=generator)
    response_embeds = torch.randn(G, N, D, generator=generator) * 5  # [G, N, D], garbage in pads
    response_mask = torch.arange(N)[None, :] < response_lengths[:, None]  # [G, N]
    if shared_truth:
        truth_length = int(torch.randint(max(low, 1), M + 1, (1,), generator=generator))
        truth_embeds = torch.randn(M, D, generator=generator)  # [M, D]
        truth_mask = torch.arange(M) < truth_length  # [M]
    else:
        truth_lengths = torch.randint(low, M + 1, (G,), generator=generator)
        truth_embeds = torch.randn(G, M, D, generator=generator)  # [G, M, D]
        truth_mask = torch.arange(M)[None, :] < truth_lengths[:, None]  # [G, M]
    return response_embeds, response_mask, truth_embeds, truth_mask


def _unpad(response_embeds, response_mask, truth_embeds, truth_mask):
    """Per response: (its real tokens, its truth's real tokens) as float64 tensors."""
    pairs = []
    for g in range(response_embeds.shape[0]):
        truth = truth_embeds if truth_embeds.dim() == 2 else truth_embeds[g]
        mask = truth_mask if truth_mask.dim() == 1 else truth_mask[g]
        pairs.append((response_embeds[g][response_mask[g]].double(), truth[mask].double()))
    return pairs


# ---------------------------------------------------------------------------------------------
# BMAS, fused


@pytest.mark.parametrize("G", [1, 3, 6])
@pytest.mark.parametrize("shared_truth", [True, False])
@pytest.mark.parametrize("combine", ["sum", "mean"])
def test_bmas_matches_double_loop(G, shared_truth, combine):
    generator = torch.Generator().manual_seed(G * 10 + shared_truth)
    for N, M, D in [(5, 4, 3), (7, 9, 4), (1, 6, 2)]:
        batch = _random_batch(generator, G, N, M, D, shared_truth, allow_empty=True)
        got = bmas_scores(*batch, combine=combine)
        assert got.shape == (G,) and got.dtype == torch.float32
        expected = [_reference_bmas(r, t, combine) for r, t in _unpad(*batch)]
        torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float32), atol=1e-5, rtol=0)


@pytest.mark.parametrize("token_chunk", [1, 2, 3, 5, 7, 64])
@pytest.mark.parametrize("shared_truth", [True, False])
def test_chunked_equals_unchunked(token_chunk, shared_truth):
    generator = torch.Generator().manual_seed(token_chunk)
    batch = _random_batch(generator, 4, 13, 6, 5, shared_truth, allow_empty=True)
    whole = bmas_scores(*batch, token_chunk=13)
    chunked = bmas_scores(*batch, token_chunk=token_chunk)
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)
    expected = [_reference_bmas(r, t, "sum") for r, t in _unpad(*batch)]
    torch.testing.assert_close(chunked, torch.tensor(expected, dtype=torch.float32), atol=1e-5, rtol=0)


def test_default_chunk_is_one_matmul_for_ordinary_sizes(monkeypatch):
    """G=8, N=M=256 is one chunk (no slowdown from chunking); token_chunk=100 is three."""
    calls = []
    real_matmul = torch.matmul

    def counting_matmul(*args, **kwargs):
        calls.append(args[0].shape)
        return real_matmul(*args, **kwargs)

    monkeypatch.setattr(torch, "matmul", counting_matmul)
    batch = _random_batch(torch.Generator().manual_seed(0), 8, 256, 256, 4, True)
    bmas_scores(*batch)
    assert calls == [(8, 256, 4)]
    calls.clear()
    bmas_scores(*batch, token_chunk=100)
    assert calls == [(8, 100, 4), (8, 100, 4), (8, 56, 4)]


def test_long_text_auto_chunks_and_matches():
    """N*M above the auto budget (2**24 entries) forces several chunks."""
    generator = torch.Generator().manual_seed(0)
    G, N, M, D = 2, 9000, 1000, 4
    response_embeds = torch.randn(G, N, D, generator=generator)
    response_mask = torch.ones(G, N, dtype=torch.bool)
    response_mask[1, 5000:] = False
    truth_embeds = torch.randn(M, D, generator=generator)
    truth_mask = torch.ones(M, dtype=torch.bool)
    auto = bmas_scores(response_embeds, response_mask, truth_embeds, truth_mask)
    small = bmas_scores(response_embeds, response_mask, truth_embeds, truth_mask, token_chunk=1000)
    torch.testing.assert_close(auto, small, atol=1e-5, rtol=0)
    # Independent check through the unchunked cosine matrix.
    sim = torch.nn.functional.normalize(response_embeds, dim=-1) @ torch.nn.functional.normalize(truth_embeds, dim=-1).T
    expected = []
    for g in range(G):
        s = sim[g][response_mask[g]]  # [N_g, M]
        expected.append(float(s.max(1).values.mean() + s.max(0).values.mean()))
    torch.testing.assert_close(auto, torch.tensor(expected), atol=1e-5, rtol=0)


def test_hand_computed_2d():
    x, y = [1.0, 0.0], [0.0, 1.0]
    ones = lambda n: torch.ones(1, n, dtype=torch.bool)  # noqa: E731

    def score(response, truth, combine="sum"):
        return float(
            bmas_scores(
                torch.tensor([response]), ones(len(response)), torch.tensor(truth),
                torch.ones(len(truth), dtype=torch.bool), combine=combine,
            )[0]
        )

    assert score([x, y], [x, y]) == pytest.approx(2.0, abs=1e-6)  # identical
    assert score([x, y], [x, y], "mean") == pytest.approx(1.0, abs=1e-6)
    assert score([x], [y]) == pytest.approx(0.0, abs=1e-6)  # orthogonal
    assert score([x], [[-1.0, 0.0]]) == pytest.approx(-2.0, abs=1e-6)  # opposite
    # rows: max(cos(x,x))=1, max(cos(y,x))=0 -> 0.5; column: max(1, 0)=1 -> 1; sum 1.5.
    assert score([x, y], [x]) == pytest.approx(1.5, abs=1e-6)
    assert score([x, y], [x], "mean") == pytest.approx(0.75, abs=1e-6)
    # Scale does not matter (cosine): [3, 4]/5 against x: 0.6 both ways -> 1.2.
    assert score([[3.0, 4.0]], [[2.0, 0.0]]) == pytest.approx(1.2, abs=1e-6)


def test_empty_and_zero_vectors_give_finite_scores():
    D = 3
    response_embeds = torch.randn(3, 4, D)
    response_mask = torch.tensor([[True] * 4, [False] * 4, [True, False, False, False]])
    response_embeds[2, 0] = 0.0  # a zero embedding: cosine 0 with everything
    truth_embeds = torch.randn(2, D)
    scores = bmas_scores(response_embeds, response_mask, truth_embeds, torch.tensor([True, True]))
    assert torch.isfinite(scores).all()
    assert scores[1] == 0.0  # empty response
    assert scores[2] == pytest.approx(0.0, abs=1e-6)  # only a zero vector: all cosines 0
    # Empty truth -> 0 for every response, for both methods.
    empty_truth = torch.tensor([False, False])
    for fn in (bmas_scores, bipartite_scores):
        assert fn(response_embeds, response_mask, truth_embeds, empty_truth).tolist() == [0.0] * 3
    # Zero-length dimensions.
    assert bmas_scores(torch.zeros(2, 0, D), torch.zeros(2, 0, dtype=torch.bool), truth_embeds,
                       torch.tensor([True, True])).tolist() == [0.0, 0.0]
    assert bmas_scores(torch.zeros(0, 4, D), torch.zeros(0, 4, dtype=torch.bool), truth_embeds,
                       torch.tensor([True, True])).shape == (0,)


def test_bf16_inputs_accumulate_in_fp32():
    generator = torch.Generator().manual_seed(1)
    batch = list(_random_batch(generator, 3, 6, 5, 16, True))
    batch[0], batch[2] = batch[0].bfloat16(), batch[2].bfloat16()
    got = bmas_scores(*batch)
    assert got.dtype == torch.float32
    expected = bmas_scores(batch[0].float(), batch[1], batch[2].float(), batch[3])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_bad_shapes_name_the_argument():
    with pytest.raises(ValueError, match="response_mask"):
        bmas_scores(torch.zeros(2, 3, 4), torch.ones(2, 4, dtype=torch.bool), torch.zeros(5, 4),
                    torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="truth_embeds"):
        bmas_scores(torch.zeros(2, 3, 4), torch.ones(2, 3, dtype=torch.bool), torch.zeros(5, 3),
                    torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="combine"):
        bmas_scores(torch.zeros(2, 3, 4), torch.ones(2, 3, dtype=torch.bool), torch.zeros(5, 4),
                    torch.ones(5, dtype=torch.bool), combine="max")


@pytest.mark.gpu
def test_cuda_matches_cpu():
    generator = torch.Generator().manual_seed(2)
    batch = _random_batch(generator, 8, 40, 30, 64, True, allow_empty=True)
    cpu = bmas_scores(*batch)
    gpu = bmas_scores(*(t.cuda() for t in batch))
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# Bipartite ablation


@pytest.mark.parametrize("shared_truth", [True, False])
@pytest.mark.parametrize("combine", ["sum", "mean"])
def test_bipartite_matches_brute_force(shared_truth, combine):
    generator = torch.Generator().manual_seed(3 + shared_truth)
    for N, M in [(1, 1), (2, 5), (5, 2), (4, 4), (5, 5), (3, 4)]:
        batch = _random_batch(generator, 3, N, M, 3, shared_truth, allow_empty=True)
        got = bipartite_scores(*batch, combine=combine)
        expected = [_reference_bipartite(r, t, combine) for r, t in _unpad(*batch)]
        torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float32), atol=1e-5, rtol=0)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    N=st.integers(1, 7),
    M=st.integers(1, 7),
    D=st.integers(1, 6),
    shared_truth=st.booleans(),
)
def test_bipartite_never_above_bmas(seed, N, M, D, shared_truth):
    """An assignment cannot beat per-row / per-column maxima when every token is matched
    (equal lengths), or, with unequal lengths, when no maximum is negative (unmatched tokens
    count 0 in the bipartite score but their maximum in BMAS; see the test below)."""
    generator = torch.Generator().manual_seed(seed)
    # Equal lengths: all masks full, N == M.
    equal = _random_batch(generator, 3, N, N, D, shared_truth)
    equal[1][:] = True
    equal[3][:] = True
    assert (bipartite_scores(*equal) <= bmas_scores(*equal) + 1e-5).all()
    # Unequal lengths, nonnegative embeddings (so every cosine is ≥ 0).
    batch = list(_random_batch(generator, 3, N, M, D, shared_truth, allow_empty=True))
    batch[0], batch[2] = batch[0].abs(), batch[2].abs()
    assert (bipartite_scores(*batch) <= bmas_scores(*batch) + 1e-5).all()


def test_bipartite_can_exceed_bmas_with_unequal_lengths():
    """Hand case for the docs/method.md §3 Decision: response [x], truth [x, -x].
    BMAS: row 1 + columns (1 + -1)/2 = 1. Bipartite: one pair (x, x): 1/1 + 1/2 = 1.5."""
    response = torch.tensor([[[1.0, 0.0]]])  # [1, 1, 2]
    truth = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # [2, 2]
    masks = torch.ones(1, 1, dtype=torch.bool), torch.ones(2, dtype=torch.bool)
    assert float(bmas_scores(response, masks[0], truth, masks[1])[0]) == pytest.approx(1.0, abs=1e-6)
    assert float(bipartite_scores(response, masks[0], truth, masks[1])[0]) == pytest.approx(1.5, abs=1e-6)


def test_bipartite_equals_bmas_on_identical_texts():
    """A permutation of identical tokens: the identity matching is also every row's maximum."""
    truth = torch.randn(5, 8)
    response = truth[torch.tensor([3, 0, 4, 1, 2])][None]  # [1, 5, 8]
    mask = torch.ones(1, 5, dtype=torch.bool)
    for fn in (bmas_scores, bipartite_scores):
        assert float(fn(response, mask, truth, mask[0])[0]) == pytest.approx(2.0, abs=1e-5)


# ---------------------------------------------------------------------------------------------
# String level, with a tiny real byte-level BPE tokenizer

_SENTENCES = [
    "A man is riding a red bicycle down the street.",
    "Two dogs play with a ball on the green grass.",
    "The chart shows sales rising from 2019 to 2023.",
    "<think> reasoning </think> <answer> yes </answer>",
    "A woman holds an umbrella in the rain, smiling.",
]


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(_SENTENCES, trainer=trainer)
    # A BOS post-processor, so that the test can see special tokens are NOT added.
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>")


@pytest.fixture(scope="module")
def embedding_table(tokenizer):
    return torch.randn(len(tokenizer) + 7, 16, generator=torch.Generator().manual_seed(0))  # [V, D]


def test_embed_texts_uses_no_special_tokens(tokenizer, embedding_table):
    texts = ["a red bicycle", "", "dogs"]
    embeds, mask = embed_texts(texts, tokenizer, embedding_table)
    ids = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    assert tokenizer.encode("dogs")[0] == tokenizer.bos_token_id  # the post-processor is live
    assert mask.sum(1).tolist() == [len(i) for i in ids]
    assert embeds.shape == (3, max(len(i) for i in ids), 16)
    torch.testing.assert_close(embeds[0, : len(ids[0])], embedding_table[ids[0]])
    assert not embeds.requires_grad


def test_bmas_reward_values(tokenizer, embedding_table):
    truth = "A man is riding a red bicycle."
    scores = bmas_reward([truth, "", "   ", "two dogs"], truth, tokenizer, embedding_table)
    assert scores[0] == pytest.approx(2.0, abs=1e-5)
    assert scores[1] == 0.0
    assert all(-2.0 <= s <= 2.0 for s in scores)
    mean = bmas_reward([truth], truth, tokenizer, embedding_table, combine="mean")
    assert mean[0] == pytest.approx(1.0, abs=1e-5)
    bipartite = bmas_reward([truth, "two dogs"], truth, tokenizer, embedding_table, method="bipartite")
    assert bipartite[0] == pytest.approx(2.0, abs=1e-5)
    assert bipartite[1] <= scores[3] + 1e-5
    assert bmas_reward(["anything"], "", tokenizer, embedding_table) == [0.0]
    assert bmas_reward([], truth, tokenizer, embedding_table) == []


def test_bmas_reward_matches_token_level(tokenizer, embedding_table):
    responses, truth = ["a red ball on grass", "sales rising"], "Two dogs play with a ball."
    got = bmas_reward(responses, truth, tokenizer, embedding_table)
    truth_ids = tokenizer.encode(truth, add_special_tokens=False)
    for response, score in zip(responses, got):
        ids = tokenizer.encode(response, add_special_tokens=False)
        assert score == pytest.approx(
            _reference_bmas(embedding_table[ids].double(), embedding_table[truth_ids].double(), "sum"),
            abs=1e-5,
        )


def test_max_tokens_caps_long_text(tokenizer, embedding_table):
    long_text = "The chart shows sales rising. " * 3000
    capped = bmas_reward([long_text], "sales", tokenizer, embedding_table, max_tokens=50)
    ids = tokenizer.encode(long_text, add_special_tokens=False)[:50]
    prefix = tokenizer.decode(ids)
    assert capped[0] == pytest.approx(
        bmas_reward([prefix], "sales", tokenizer, embedding_table, max_tokens=10**6)[0], abs=1e-5
    )
    # The default cap (4096 tokens) on a ~100K-character string: finite and in range.
    (score,) = bmas_reward([long_text], "sales rising", tokenizer, embedding_table)
    assert math.isfinite(score) and -2.0 <= score <= 2.0


def test_bf16_table(tokenizer, embedding_table):
    texts, truth = ["a man with an umbrella", "2019"], "A woman holds an umbrella."
    bf16 = bmas_reward(texts, truth, tokenizer, embedding_table.bfloat16())
    fp32 = bmas_reward(texts, truth, tokenizer, embedding_table.bfloat16().float())
    assert bf16 == pytest.approx(fp32, abs=1e-6)


_ODD_TEXTS = st.one_of(
    st.text(max_size=300),
    st.sampled_from([
        "nan", "NaN", "-inf", "1e999", "-1e999", "0", "<answer>nan</answer>", "<think></think>",
        "\x00\x01\x02", "\u200b\u200b", "🙂" * 50, "\n\t \r", "[1, 2, 3, 4]", "é" * 2000,
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 " * 500, "a" * 50_000, "<|im_end|>", "<s>",
    ]),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(responses=st.lists(_ODD_TEXTS, min_size=1, max_size=4), truth=_ODD_TEXTS,
       combine=st.sampled_from(["sum", "mean"]), method=st.sampled_from(["bmas", "bipartite"]))
def test_bmas_reward_never_raises(tokenizer, embedding_table, responses, truth, combine, method):
    bound = 2.0 if combine == "sum" else 1.0
    scores = bmas_reward(responses, truth, tokenizer, embedding_table, combine=combine,
                         method=method, max_tokens=512)
    assert len(scores) == len(responses)
    for text, score in zip(responses, scores):
        assert isinstance(score, float) and math.isfinite(score)
        assert -bound <= score <= bound
        if not text or not truth:
            assert score == 0.0
