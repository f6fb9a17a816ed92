"""Chunked completion log-probs (docs/method.md §4 needs log π per token) against the naive log_softmax path."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mixedr1.logprobs import completion_logprobs


def naive_logprobs(hidden, weight, target_ids, temperature=1.0, bias=None):
    """The obvious reference: full `[N, T, V]` logits, log_softmax, gather."""
    logits = hidden @ weight.t()  # [N, T, V]
    if bias is not None:
        logits = logits + bias
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, target_ids.unsqueeze(-1)).squeeze(-1)  # [N, T]


def naive_entropy(hidden, weight, temperature=1.0):
    logp = torch.log_softmax((hidden @ weight.t()).double() / temperature, dim=-1)  # [N, T, V]
    return -(logp.exp() * logp).sum(-1)  # [N, T]


def make_inputs(n=3, t=5, d=16, v=97, dtype=torch.float32, seed=0, with_bias=False):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, t, d, generator=generator, dtype=torch.float64).to(dtype)  # [N, T, D]
    weight = (torch.randn(v, d, generator=generator, dtype=torch.float64) / 2).to(dtype)  # [V, D]
    bias = torch.randn(v, generator=generator, dtype=torch.float64).to(dtype) if with_bias else None  # [V]
    target_ids = torch.randint(0, v, (n, t), generator=generator)  # [N, T]
    grad_out = torch.randn(n, t, generator=generator, dtype=torch.float64)  # [N, T]
    return hidden, weight, bias, target_ids, grad_out


def values_and_grads(fn, hidden, weight, bias, grad_out):
    leaves = [x.detach().clone().requires_grad_() for x in (hidden, weight) + ((bias,) if bias is not None else ())]
    out = fn(*leaves)
    grads = torch.autograd.grad((out * grad_out.to(out.dtype)).sum(), leaves)
    return out.detach(), grads


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 15, 16, 1000])  # 15 = N*T; 4, 7 do not divide it
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_naive_fp32(chunk_size, temperature, with_bias):
    hidden, weight, bias, target_ids, grad_out = make_inputs(with_bias=with_bias)

    def ours(h, w, b=None):
        return completion_logprobs(h, w, target_ids, chunk_size=chunk_size, temperature=temperature, lm_head_bias=b)

    def reference(h, w, b=None):
        return naive_logprobs(h, w, target_ids, temperature, b)

    got, got_grads = values_and_grads(ours, hidden, weight, bias, grad_out)
    want, want_grads = values_and_grads(reference, hidden, weight, bias, grad_out)
    assert got.dtype == torch.float32 and got.shape == (3, 5)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-6)
    for g, w in zip(got_grads, want_grads):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, atol=5e-6, rtol=1e-5)


def test_float64_is_exact_and_passes_gradcheck():
    hidden, weight, bias, target_ids, _ = make_inputs(n=2, t=3, d=4, v=7, dtype=torch.float64, with_bias=True)
    leaves = tuple(x.requires_grad_() for x in (hidden, weight, bias))

    def ours(h, w, b):
        return completion_logprobs(h, w, target_ids, chunk_size=4, temperature=1.3, lm_head_bias=b)

    assert torch.autograd.gradcheck(ours, leaves)
    torch.testing.assert_close(ours(*leaves), naive_logprobs(*leaves[:2], target_ids, 1.3, leaves[2]), atol=1e-13, rtol=0)


def test_matches_naive_bf16():
    hidden, weight, _, target_ids, grad_out = make_inputs(n=4, t=6, d=32, v=101, dtype=torch.bfloat16)
    got, got_grads = values_and_grads(lambda h, w: completion_logprobs(h, w, target_ids, chunk_size=5), hidden, weight, None, grad_out)
    # Reference: the same bf16 numbers in fp64. Ours rounds each logit to bf16 after the GEMM (as HF's
    # lm_head does): |Δlogit| <= 2^-8 |logit|, so log-probs agree to ~0.05 here; gradients come back in
    # bf16 (2^-8 relative) on top of that.
    want, want_grads = values_and_grads(
        lambda h, w: naive_logprobs(h, w, target_ids), hidden.double(), weight.double(), None, grad_out
    )
    assert got.dtype == torch.float32
    assert all(g.dtype == torch.bfloat16 for g in got_grads)
    torch.testing.assert_close(got.double(), want, atol=5e-2, rtol=0)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g.double(), w, atol=3e-2, rtol=3e-2)
    # Against the naive path computed in bf16 the same way, the gap is fp32 round-off only.
    same_numerics = naive_logprobs(hidden, weight, target_ids)
    torch.testing.assert_close(got, same_numerics, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 6, 40])
def test_entropy_matches_reference_and_carries_no_gradient(chunk_size):
    hidden, weight, _, target_ids, _ = make_inputs(n=4, t=10, d=8, v=53)
    hidden.requires_grad_()
    logprobs, entropy = completion_logprobs(hidden, weight, target_ids, chunk_size=chunk_size, temperature=0.8, with_entropy=True)
    torch.testing.assert_close(entropy.double(), naive_entropy(hidden.detach(), weight, 0.8), atol=2e-6, rtol=0)
    torch.testing.assert_close(logprobs, naive_logprobs(hidden, weight, target_ids, 0.8), atol=2e-6, rtol=1e-6)
    assert logprobs.requires_grad and not entropy.requires_grad
    assert entropy.dtype == torch.float32 and (entropy >= 0).all()


def test_non_contiguous_inputs_and_frozen_weight():
    full_hidden, weight, _, target_ids, grad_out = make_inputs(n=3, t=8, d=12, v=31)
    # A causal LM's hidden states sliced to the positions predicting the completion: a strided view.
    hidden_view = full_hidden.clone().requires_grad_()
    shifted = hidden_view[:, 2:7]  # [N, T=5, D], non-contiguous
    targets = target_ids[:, 3:8]  # [N, T]
    out = completion_logprobs(shifted, weight, targets, chunk_size=4)  # weight has no grad
    (out * grad_out[:, :5].float()).sum().backward()
    reference_hidden = full_hidden.clone().requires_grad_()
    want = naive_logprobs(reference_hidden[:, 2:7], weight, targets)
    (want * grad_out[:, :5].float()).sum().backward()
    torch.testing.assert_close(out, want, atol=2e-6, rtol=1e-6)
    torch.testing.assert_close(hidden_view.grad, reference_hidden.grad, atol=5e-6, rtol=1e-5)
    assert weight.grad is None


def test_no_full_logits_tensor_in_forward_or_backward():
    """The largest tensor any op creates is one chunk of logits, not the `[N*T, V]` block."""
    n, t, v, d, chunk_size = 4, 16, 401, 4, 8
    hidden, weight, _, target_ids, grad_out = make_inputs(n=n, t=t, d=d, v=v)
    hidden.requires_grad_()
    weight.requires_grad_()

    class LargestOutput(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(tensor, torch.Tensor):
                    self.largest = max(self.largest, tensor.numel())
            return out

    with LargestOutput() as mode:
        out = completion_logprobs(hidden, weight, target_ids, chunk_size=chunk_size)
        (out * grad_out.float()).sum().backward()
    assert mode.largest == chunk_size * v  # [C, V]; the weight's gradient [V, D] is smaller here
    assert mode.largest < n * t * v / 4


def test_empty_completion_batch_and_input_validation():
    hidden, weight, _, target_ids, _ = make_inputs(n=2, t=3, d=4, v=9)
    assert completion_logprobs(hidden[:, :0], weight, target_ids[:, :0]).shape == (2, 0)
    with pytest.raises(ValueError, match="lm_head_weight must be"):
        completion_logprobs(hidden, weight[:, :3], target_ids)
    with pytest.raises(ValueError, match="target_ids must be"):
        completion_logprobs(hidden, weight, target_ids[:, :2])
    with pytest.raises(ValueError, match="dtype"):
        completion_logprobs(hidden.double(), weight, target_ids)
    with pytest.raises(ValueError, match="chunk_size"):
        completion_logprobs(hidden, weight, target_ids, chunk_size=0)
    with pytest.raises(ValueError, match="temperature"):
        completion_logprobs(hidden, weight, target_ids, temperature=0.0)
