"""BMAS, the bidirectional max-average similarity reward for open-ended answers (docs/method.md §3).

The response answer (N tokens) and the ground truth (M tokens) are tokenised with the policy's
tokenizer (no special tokens) and looked up in the policy's input embedding table, giving
E^o [N, D] and E^g [M, D]. Then

    S_ij   = cos(e^o_i, e^g_j)                                          (docs/method.md §3, Eq. 3)
    R_BMAS = (1/N) Σ_i max_j S_ij + (1/M) Σ_j max_i S_ij                (docs/method.md §3, Eq. 4)

i.e. the maximum similarity of every token is averaged in both directions and the two averages
are summed. `combine="sum"` is the paper's wording (range [-2, 2], the default **Decision**);
`combine="mean"` halves it (range [-1, 1]). An empty response or ground truth scores 0.

`bmas_scores` scores a whole group of G responses in one fused computation: the truth normalised
once, one batched matmul, one elementwise pass that divides by the response norms and masks the
padding, and the row / column maxima; it is chunked over response tokens so that memory stays bounded for long texts.
`bipartite_scores` is the "tokenizer bipartite matching" ablation of Table 4: the same S, but a
one-to-one assignment (Hungarian, maximising the total similarity) instead of per-row / column
maxima, scored Σ matched S / N + Σ matched S / M (docs/method.md §3 Decision), combined like BMAS.

Departures from the paper: none in the formula. `max_tokens` (default 4096) caps each text's
token count before scoring, so one runaway completion cannot blow up time or memory; the paper
does not say what it did with very long texts.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .answer import valid_text

# Auto chunk size: at most this many similarity entries (fp32: 64 MiB) are alive at once. With
# G=8 and M=256 this is 8192 response tokens per chunk, so ordinary answers take one chunk.
_AUTO_CHUNK_ENTRIES = 1 << 24
# Norms are clamped here so that a zero vector has cosine 0 with everything (as F.normalize).
_NORM_EPS = 1e-12
_COMBINE_SCALE = {"sum": 1.0, "mean": 0.5}


def _check_inputs(response_embeds, response_mask, truth_embeds, truth_mask, combine):
    """Validate shapes; return (G, N, M, D). Errors name the argument and the expected shape."""
    if combine not in _COMBINE_SCALE:
        raise ValueError(f"combine must be one of {sorted(_COMBINE_SCALE)}, got {combine!r}")
    if response_embeds.dim() != 3:
        raise ValueError(f"response_embeds must be [G, N, D], got shape {tuple(response_embeds.shape)}")
    G, N, D = response_embeds.shape
    if tuple(response_mask.shape) != (G, N):
        raise ValueError(f"response_mask must be [G, N] = {(G, N)}, got {tuple(response_mask.shape)}")
    if truth_embeds.dim() == 2:
        M = truth_embeds.shape[0]
        expected_truth, expected_mask = (M, D), (M,)
    elif truth_embeds.dim() == 3:
        M = truth_embeds.shape[1]
        expected_truth, expected_mask = (G, M, D), (G, M)
    else:
        raise ValueError(f"truth_embeds must be [M, D] or [G, M, D], got {tuple(truth_embeds.shape)}")
    if tuple(truth_embeds.shape) != expected_truth:
        raise ValueError(f"truth_embeds must be {expected_truth}, got {tuple(truth_embeds.shape)}")
    if tuple(truth_mask.shape) != expected_mask:
        raise ValueError(f"truth_mask must be {expected_mask}, got {tuple(truth_mask.shape)}")
    return G, N, M, D


def bmas_scores(
    response_embeds: torch.Tensor,  # [G, N, D] padded response token embeddings
    response_mask: torch.Tensor,  # [G, N] bool, True on real tokens
    truth_embeds: torch.Tensor,  # [M, D] one ground truth for the group, or [G, M, D]
    truth_mask: torch.Tensor,  # [M] or [G, M] bool
    *,
    combine: str = "sum",
    token_chunk: int | None = None,
) -> torch.Tensor:  # [G] fp32
    """Bidirectional max-average similarity (docs/method.md §3, Eq. 3 and 4) of G responses, fused.

    R_g = (1/N_g) Σ_i max_j S_ij + (1/M_g) Σ_j max_i S_ij over the real tokens only, with
    S_ij the cosine of response token i and truth token j; halved for combine="mean". A response
    or truth with no real token scores 0. Accumulation is fp32 whatever the input dtype.

    token_chunk: response tokens processed per step. Only [G, token_chunk, M] similarities exist
    at once; a running column max [G, M] and a running row-max sum [G] carry across chunks. None
    picks the largest chunk holding ≤ 2**24 entries (one chunk for ordinary sizes).
    """
    G, N, M, D = _check_inputs(response_embeds, response_mask, truth_embeds, truth_mask, combine)
    device = response_embeds.device
    response_mask = response_mask.to(device=device, dtype=torch.bool)
    truth_mask = truth_mask.to(device=device, dtype=torch.bool)
    if G == 0 or N == 0 or M == 0:
        return torch.zeros(G, dtype=torch.float32, device=device)
    if token_chunk is None:
        token_chunk = max(1, _AUTO_CHUNK_ENTRIES // (G * M))
    if token_chunk < 1:
        raise ValueError(f"token_chunk must be ≥ 1, got {token_chunk}")

    # Eq. 3 without a normalised copy of the large operand: the truth is normalised once per call
    # ([M, D] shared by the group), and each response chunk's raw dot products are scaled by
    # 1/|e^o_i| in the same elementwise pass that applies the response padding mask.
    truth_unit = torch.nn.functional.normalize(
        truth_embeds.to(device=device, dtype=torch.float32), dim=-1, eps=_NORM_EPS
    )  # [M, D] or [G, M, D]
    truth_t = truth_unit.transpose(-1, -2)  # [D, M] or [G, D, M]
    if truth_mask.dim() == 1:
        truth_mask = truth_mask.expand(G, M)  # [G, M]
    # Padding becomes -inf, so it never wins a max: padded response rows for the column max over
    # i, padded truth columns for the row max over j. -inf stays -inf through the positive row
    # scaling (inverse norms are finite and > 0) and is dropped before any sum: no NaN can arise.
    zero = torch.zeros((), dtype=torch.float32, device=device)
    minus_inf = torch.full((), float("-inf"), dtype=torch.float32, device=device)
    row_bias = torch.where(response_mask, zero, minus_inf)[:, :, None]  # [G, N, 1]
    col_bias = torch.where(truth_mask, zero, minus_inf)[:, None, :]  # [G, 1, M]
    truth_has_padding = not bool(truth_mask.all())  # a shared truth never has

    row_max_sum = torch.zeros(G, dtype=torch.float32, device=device)  # [G] Σ_i max_j S_ij
    col_max = torch.full((G, M), float("-inf"), dtype=torch.float32, device=device)  # [G, M]
    for start in range(0, N, token_chunk):
        stop = min(start + token_chunk, N)
        chunk = response_embeds[:, start:stop].to(dtype=torch.float32)  # [G, c, D]
        chunk_mask = response_mask[:, start:stop]  # [G, c]
        chunk_inv_norm = (
            torch.linalg.vector_norm(chunk, dim=-1).clamp_min_(_NORM_EPS).reciprocal_()
        )  # [G, c]
        # One matmul for the chunk (a shared truth makes it a single [G*c, D] x [D, M] GEMM).
        sim = torch.matmul(chunk, truth_t)  # [G, c, M] E^o (E^g/|E^g|)ᵀ
        # sim = row_bias + sim / |e^o_i| in place: S_ij (Eq. 3), padded rows -inf.
        torch.addcmul(row_bias[:, start:stop], sim, chunk_inv_norm[:, :, None], out=sim)
        if truth_has_padding:
            sim.add_(col_bias)
        # Rounding can push a cosine a hair past ±1; clamp the maxima so R stays in range.
        row_max = sim.amax(dim=2).clamp_(-1.0, 1.0)  # [G, c]
        row_max_sum += torch.where(chunk_mask, row_max, zero).sum(dim=1)
        col_max = torch.maximum(col_max, sim.amax(dim=1))  # [G, M]
    col_max_sum = torch.where(truth_mask, col_max.clamp(-1.0, 1.0), zero).sum(dim=1)  # [G]

    n_tokens = response_mask.sum(dim=1)  # [G]
    m_tokens = truth_mask.sum(dim=1)  # [G]
    score = row_max_sum / n_tokens.clamp_min(1) + col_max_sum / m_tokens.clamp_min(1)  # Eq. 4
    score = torch.where((n_tokens > 0) & (m_tokens > 0), score, zero)  # [G]
    return score * _COMBINE_SCALE[combine]


def cosine_matrix(
    response_embeds: torch.Tensor,  # [G, N, D]
    truth_embeds: torch.Tensor,  # [M, D] or [G, M, D]
) -> torch.Tensor:  # [G, N, M] fp32, S_ij of docs/method.md §3 Eq. 3 (padding not masked)
    """Unmasked cosine similarities S (docs/method.md §3, Eq. 3), fp32, zero vectors give 0."""
    response = torch.nn.functional.normalize(response_embeds.float(), dim=-1, eps=_NORM_EPS)
    truth = torch.nn.functional.normalize(
        truth_embeds.to(device=response.device, dtype=torch.float32), dim=-1, eps=_NORM_EPS
    )
    return torch.matmul(response, truth.transpose(-1, -2))  # [G, N, M]


def bipartite_scores(
    response_embeds: torch.Tensor,  # [G, N, D] padded
    response_mask: torch.Tensor,  # [G, N] bool
    truth_embeds: torch.Tensor,  # [M, D] shared, or [G, M, D]
    truth_mask: torch.Tensor,  # [M] or [G, M] bool
    *,
    combine: str = "sum",
) -> torch.Tensor:  # [G] fp32
    """Tokenizer bipartite matching, the Table 4 ablation of BMAS (docs/method.md §3, Decision).

    The same S as BMAS (Eq. 3), but a one-to-one assignment of min(N, M) token pairs maximising
    the total similarity (scipy's Hungarian `linear_sum_assignment`), scored
    Σ matched S / N + Σ matched S / M, halved for combine="mean". Empty → 0. With N = M it is
    never above BMAS (each matched S_ij is at most its row's and its column's maximum); with
    N ≠ M it can be, since the |N - M| unmatched tokens count 0 here but their (possibly
    negative) maximum in BMAS: response [x] vs truth [x, -x] gives 1.5 here, 1.0 for BMAS.
    """
    G, N, M, D = _check_inputs(response_embeds, response_mask, truth_embeds, truth_mask, combine)
    if truth_mask.dim() == 1:
        truth_mask = truth_mask.expand(G, M)  # [G, M]
    sim = cosine_matrix(response_embeds, truth_embeds).to(device="cpu", dtype=torch.float64)
    response_mask = response_mask.to(device="cpu", dtype=torch.bool)
    truth_mask = truth_mask.to(device="cpu", dtype=torch.bool)
    scores = []
    for g in range(G):  # the assignment itself is sequential (scipy); S was computed batched
        rows = response_mask[g].nonzero().squeeze(1)  # [N_g]
        cols = truth_mask[g].nonzero().squeeze(1)  # [M_g]
        if len(rows) == 0 or len(cols) == 0:
            scores.append(0.0)
            continue
        pair_sim = sim[g][rows][:, cols].numpy()  # [N_g, M_g]
        matched_rows, matched_cols = linear_sum_assignment(pair_sim, maximize=True)
        total = float(np.clip(pair_sim[matched_rows, matched_cols], -1.0, 1.0).sum())
        scores.append(total / len(rows) + total / len(cols))
    return torch.tensor(scores, dtype=torch.float32) * _COMBINE_SCALE[combine]


def first_tokens(tokenizer, text: str, max_tokens: int) -> list[int]:
    """The first `max_tokens` token ids of `text` (no special tokens), without tokenising all of a
    runaway text: prefixes of 4x, 16x, ... `max_tokens` characters are tried until one gives enough
    tokens. Lone surrogates become '?' first (tokenizers reject them)."""
    text = valid_text(text)
    limit = 4 * max_tokens
    while True:
        ids = tokenizer(text[:limit], add_special_tokens=False, verbose=False)["input_ids"]
        if len(ids) >= max_tokens or limit >= len(text):
            return list(ids)[:max_tokens]
        limit *= 4


def embed_texts(
    texts: list[str],
    tokenizer,
    embedding_table: torch.Tensor,  # [V, D], e.g. model.get_input_embeddings().weight
    *,
    max_tokens: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:  # ([G, N, D] table dtype, [G, N] bool)
    """Tokenise without special tokens and look the ids up in the input embedding table (docs/method.md §3).

    No transformer layer and no gradient. Each text keeps its first `max_tokens` tokens (a bound
    on cost for runaway generations; BMAS itself is chunked, so this is not a memory limit).
    Embeddings come back in the table's dtype on its device; `bmas_scores` accumulates in fp32.
    """
    G = len(texts)
    device = embedding_table.device
    token_ids = [first_tokens(tokenizer, text, max_tokens) for text in texts]
    N = max((len(ids) for ids in token_ids), default=0)
    vocab_rows = embedding_table.shape[0]
    padded_ids = torch.zeros(G, N, dtype=torch.long)  # [G, N], padding id 0 (masked out)
    mask = torch.zeros(G, N, dtype=torch.bool)  # [G, N]
    for g, ids in enumerate(token_ids):
        if ids and max(ids) >= vocab_rows:
            raise ValueError(
                f"token id {max(ids)} from the tokenizer is outside the embedding table "
                f"({vocab_rows} rows): the tokenizer and the model do not match"
            )
        padded_ids[g, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[g, : len(ids)] = True
    with torch.no_grad():
        embeds = torch.nn.functional.embedding(padded_ids.to(device), embedding_table.detach())
    return embeds, mask.to(device)  # [G, N, D], [G, N]


def bmas_reward(
    responses: list[str],
    truth: str,
    tokenizer,
    embedding_table: torch.Tensor,  # [V, D]
    *,
    combine: str = "sum",
    method: str = "bmas",
    max_tokens: int = 4096,
) -> list[float]:
    """Open-ended reward of G responses against one ground truth (docs/method.md §3, Eq. 3 and 4).

    method="bmas": bidirectional max-average similarity (the paper's reward);
    method="bipartite": the Hungarian-matching ablation of Table 4. Texts are the extracted
    answers (the caller strips the <answer> tags). Any text is accepted; empty → 0.0; the result
    is finite, in [-2, 2] for combine="sum" and [-1, 1] for "mean".
    """
    if method not in ("bmas", "bipartite"):
        raise ValueError(f"method must be 'bmas' or 'bipartite', got {method!r}")
    if not responses:
        return []
    response_embeds, response_mask = embed_texts(
        responses, tokenizer, embedding_table, max_tokens=max_tokens
    )  # [G, N, D], [G, N]
    truth_embeds, truth_mask = embed_texts([truth], tokenizer, embedding_table, max_tokens=max_tokens)
    truth_embeds, truth_mask = truth_embeds[0], truth_mask[0]  # [M, D], [M] shared by the group
    score_fn = bmas_scores if method == "bmas" else bipartite_scores
    scores = score_fn(response_embeds, response_mask, truth_embeds, truth_mask, combine=combine)
    return [float(s) for s in scores.cpu()]
