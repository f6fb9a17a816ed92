"""Per-token log-probabilities of completion tokens without materialising `[N*T, V]` logits (docs/method.md §4).

GRPO needs `log π(o_t | q, o_<t)` for every completion token under three policies (current, old,
reference; docs/method.md §4 ρ and KL). The obvious way, `log_softmax(h @ W.T).gather(target)`, builds fp32
logits of shape `[N*T, V]`; with Qwen's V = 151936 that is 0.6 MB per token, i.e. gigabytes per
micro-batch, and autograd keeps it (plus the log-softmax output and the gradients) alive.

Here the flattened token axis is cut into chunks of `chunk_size` tokens. Forward: per chunk, logits
`[C, V]`, their logsumexp and the target logit; only the per-token logsumexp `[N*T]` is kept. Backward
recomputes each chunk's logits and forms the gradient in place:
`∂ log p_t / ∂ z_j = 1[j = t] − softmax(z)_j`, with `z = (h Wᵀ + b) / temperature`, so
`grad_h = (grad_out · (onehot − p) / temperature) @ W` and `grad_W += (…)ᵀ @ h`, chunk by chunk.
Neither pass ever holds more than one `[C, V]` fp32 block (plus a `[C, V]` copy in the weight's
dtype for the bf16 GEMMs of the backward).

Numerics: the GEMM `h @ Wᵀ` runs in the inputs' dtype (for bf16 that is what Hugging Face's
`lm_head` does, GEMM accumulating in fp32 on GPU); everything after it (temperature, logsumexp,
softmax, gather) is fp32, and log-probs and entropy come back in fp32 (fp64 inputs stay fp64
throughout, for gradcheck). Gradients come back in the inputs' dtype; the weight gradient is
accumulated over chunks in fp32.

Entropy (`with_entropy=True`) is a forward-only diagnostic: it is returned detached (marked
non-differentiable) and no gradient flows through it.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

# Tokens per chunk. 1024 tokens x V=151936 x 4 bytes = 0.62 GB per fp32 logit block: small next to
# the naive path's several `[N*T, V]` tensors, large enough that the GEMMs run at full speed.
# experiments/bench_logprobs.py (CPU, N*T=2048, D=256, V=151936, fp32): peak memory 0.18x naive,
# forward+backward time 0.80x-1.14x naive depending on machine load (512: 0.09x memory, 1.05x time).
DEFAULT_CHUNK_SIZE = 1024


def _chunk_logits(
    hidden_chunk: torch.Tensor,  # [C, D]
    weight: torch.Tensor,  # [V, D]
    bias: torch.Tensor | None,  # [V]
    temperature: float,
) -> torch.Tensor:  # [C, V] fp32 (fp64 for fp64 inputs), a fresh tensor the caller may modify in place
    if bias is None:
        logits = hidden_chunk @ weight.t()  # [C, V] in the inputs' dtype
    else:
        logits = torch.addmm(bias, hidden_chunk, weight.t())  # [C, V]
    # Copies a bf16 block; for fp32 / fp64 it returns the GEMM's own fresh output.
    logits = logits.to(_accumulation_dtype(weight.dtype))
    if temperature != 1.0:
        logits.div_(temperature)
    return logits


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for bf16 / fp16 / fp32 inputs; fp64 stays fp64 (so gradcheck can run in double)."""
    return torch.promote_types(dtype, torch.float32)


class _ChunkedCompletionLogprobs(torch.autograd.Function):
    """Chunked `log_softmax((h Wᵀ + b) / τ).gather(target)` with a recomputing backward."""

    @staticmethod
    def forward(
        ctx,
        hidden_states: torch.Tensor,  # [N, T, D]
        weight: torch.Tensor,  # [V, D]
        bias: torch.Tensor | None,  # [V]
        target_ids: torch.Tensor,  # [N, T]
        chunk_size: int,
        temperature: float,
        with_entropy: bool,
    ):
        n, t, d = hidden_states.shape
        num_tokens = n * t
        flat_hidden = hidden_states.reshape(num_tokens, d)  # [N*T, D]
        flat_target = target_ids.reshape(num_tokens, 1)  # [N*T, 1]
        buffer = dict(dtype=_accumulation_dtype(weight.dtype), device=hidden_states.device)
        logprobs = torch.empty(num_tokens, **buffer)  # [N*T]
        logsumexp = torch.empty(num_tokens, **buffer)  # [N*T]
        entropy = torch.empty(num_tokens if with_entropy else 0, **buffer)  # [N*T] or empty

        for start in range(0, num_tokens, chunk_size):
            stop = min(start + chunk_size, num_tokens)
            logits = _chunk_logits(flat_hidden[start:stop], weight, bias, temperature)  # [C, V]
            target_logit = logits.gather(1, flat_target[start:stop]).squeeze(1)  # [C]
            row_max = logits.amax(dim=1, keepdim=True)  # [C, 1]
            shifted = logits.sub_(row_max)  # [C, V] z - max, in place: no second block
            if with_entropy:
                # H = -Σ p (z - lse) = log S - Σ e^{z'} z' / S, with z' = z - max, S = Σ e^{z'}.
                exp_shifted = shifted.exp()  # [C, V]
                sum_exp = exp_shifted.sum(dim=1)  # [C]
                weighted = torch.linalg.vecdot(exp_shifted, shifted)  # [C]
                entropy[start:stop] = sum_exp.log() - weighted / sum_exp
                del exp_shifted
            else:
                sum_exp = shifted.exp_().sum(dim=1)  # [C]
            chunk_lse = row_max.squeeze(1) + sum_exp.log()  # [C]
            logsumexp[start:stop] = chunk_lse
            logprobs[start:stop] = target_logit - chunk_lse
            del logits, shifted

        ctx.save_for_backward(hidden_states, weight, bias, target_ids, logsumexp)
        ctx.chunk_size = chunk_size
        ctx.temperature = temperature
        entropy = entropy.view(n, t) if with_entropy else entropy  # [N, T] or empty
        ctx.mark_non_differentiable(entropy)  # the very object returned, not a view of it
        return logprobs.view(n, t), entropy

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logprobs: torch.Tensor, grad_entropy: torch.Tensor):  # grad_logprobs [N, T]
        hidden_states, weight, bias, target_ids, logsumexp = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        chunk_size, temperature = ctx.chunk_size, ctx.temperature
        n, t, d = hidden_states.shape
        num_tokens = n * t
        flat_hidden = hidden_states.reshape(num_tokens, d)  # [N*T, D]
        flat_target = target_ids.reshape(num_tokens, 1)  # [N*T, 1]
        # d log p_t / d z = onehot_t - p and z = (h Wᵀ + b) / τ: fold 1/τ into the per-token scale.
        accumulation = _accumulation_dtype(weight.dtype)
        token_scale = grad_logprobs.reshape(num_tokens, 1).to(accumulation) / temperature  # [N*T, 1]

        grad_hidden = torch.empty_like(flat_hidden) if need_hidden else None  # [N*T, D]
        buffer = dict(dtype=accumulation, device=weight.device)
        grad_weight = torch.zeros(weight.shape, **buffer) if need_weight else None  # [V, D]
        grad_bias = torch.zeros(weight.shape[0], **buffer) if need_bias else None  # [V]
        same_dtype = weight.dtype == accumulation

        for start in range(0, num_tokens, chunk_size):
            stop = min(start + chunk_size, num_tokens)
            hidden_chunk = flat_hidden[start:stop]  # [C, D]
            scale = token_scale[start:stop]  # [C, 1]
            logits = _chunk_logits(hidden_chunk, weight, bias, temperature)  # [C, V]
            probs = logits.sub_(logsumexp[start:stop, None]).exp_()  # [C, V] softmax, in place
            grad_logits = probs.mul_(-scale)  # [C, V] -scale * p
            grad_logits.scatter_add_(1, flat_target[start:stop], scale)  # + scale at the target
            if need_bias:
                grad_bias += grad_logits.sum(dim=0)
            # GEMMs in the weight's dtype (bf16 on GPU runs on tensor cores), accumulation in fp32.
            grad_logits_low = grad_logits if same_dtype else grad_logits.to(weight.dtype)
            if need_hidden:
                grad_hidden[start:stop] = grad_logits_low @ weight
            if need_weight:
                if same_dtype:
                    grad_weight.addmm_(grad_logits_low.t(), hidden_chunk)
                else:
                    grad_weight += grad_logits_low.t() @ hidden_chunk
            del logits, probs, grad_logits, grad_logits_low

        return (
            grad_hidden.view(n, t, d) if need_hidden else None,
            grad_weight.to(weight.dtype) if need_weight else None,
            grad_bias.to(bias.dtype) if need_bias else None,
            None,
            None,
            None,
            None,
        )


def completion_logprobs(
    hidden_states: torch.Tensor,  # [N, T, D] states at the positions that PREDICT the completion tokens
    lm_head_weight: torch.Tensor,  # [V, D]
    target_ids: torch.Tensor,  # [N, T] the completion tokens (padding must still be a valid id)
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    temperature: float = 1.0,
    with_entropy: bool = False,
    lm_head_bias: torch.Tensor | None = None,  # [V]
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`log softmax((h Wᵀ + b) / τ)[target]` per token, `[N, T]` fp32, chunked over N*T (docs/method.md §4).

    The caller does the shift: `hidden_states[:, t]` is the state whose next-token distribution
    scores `target_ids[:, t]` (for a causal LM, hidden states at positions P-1 … P+T-2 and the
    completion tokens at P … P+T-1). Padding positions are scored like any other token; mask them
    out downstream with the completion mask (their target ids must be in [0, V)).

    `temperature` divides the logits: use the sampling temperature so that log π matches the policy
    that generated the completions (docs/method.md §4 samples at 1.0).

    Returns `logprobs [N, T]`, or `(logprobs [N, T], entropy [N, T])` when `with_entropy`; entropy is
    `-Σ_v p_v log p_v` of the tempered distribution, detached (no gradient flows through it).
    Differentiable w.r.t. `hidden_states`, `lm_head_weight` and `lm_head_bias`; memory stays at one
    `[chunk_size, V]` block in forward and backward (see the module docstring).
    """
    if hidden_states.dim() != 3:
        raise ValueError(f"hidden_states must be [N, T, D], got shape {tuple(hidden_states.shape)}")
    n, t, d = hidden_states.shape
    if lm_head_weight.dim() != 2 or lm_head_weight.shape[1] != d:
        raise ValueError(f"lm_head_weight must be [V, D={d}], got shape {tuple(lm_head_weight.shape)}")
    if tuple(target_ids.shape) != (n, t):
        raise ValueError(f"target_ids must be [N, T] = {(n, t)} like hidden_states, got {tuple(target_ids.shape)}")
    if target_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"target_ids must be an integer tensor, got {target_ids.dtype}")
    if hidden_states.dtype != lm_head_weight.dtype:
        raise ValueError(f"hidden_states ({hidden_states.dtype}) and lm_head_weight ({lm_head_weight.dtype}) must share a dtype")
    if lm_head_bias is not None and tuple(lm_head_bias.shape) != (lm_head_weight.shape[0],):
        raise ValueError(f"lm_head_bias must be [V={lm_head_weight.shape[0]}], got {tuple(lm_head_bias.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")

    logprobs, entropy = _ChunkedCompletionLogprobs.apply(
        hidden_states, lm_head_weight, lm_head_bias, target_ids.long(), int(chunk_size), float(temperature), bool(with_entropy)
    )
    return (logprobs, entropy) if with_entropy else logprobs
