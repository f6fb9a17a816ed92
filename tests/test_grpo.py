"""GRPO advantages and policy loss (docs/method.md §4) against hand-computed values and a slow reference."""

import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mixedr1.grpo import LOSS_AGGREGATIONS, LossNormalizers, group_advantages, grpo_policy_loss, loss_normalizers

# ---------------------------------------------------------------------------------------------
# Advantages
# ---------------------------------------------------------------------------------------------


def test_advantages_spec_worked_example():
    rewards = torch.tensor([0.0, 0, 1, 0, 1, 0, 0, 1])
    unbiased, zero_var = group_advantages(rewards, 8)
    population, _ = group_advantages(rewards, 8, std="population")
    mean = 3 / 8
    std_unbiased = math.sqrt(sum((r - mean) ** 2 for r in rewards.tolist()) / 7)
    std_population = math.sqrt(sum((r - mean) ** 2 for r in rewards.tolist()) / 8)
    assert std_unbiased == pytest.approx(0.5175491, abs=1e-7)
    assert std_population == pytest.approx(0.4841229, abs=1e-7)
    assert unbiased[2].item() == pytest.approx((1 - mean) / (std_unbiased + 1e-4), abs=1e-6)
    assert population[2].item() == pytest.approx((1 - mean) / (std_population + 1e-4), abs=1e-6)
    assert round(unbiased[2].item(), 3) == 1.207  # docs/method.md §4's numbers
    assert round(population[2].item(), 2) == 1.29
    assert unbiased[0].item() == pytest.approx(-mean / (std_unbiased + 1e-4), abs=1e-6)
    assert zero_var.tolist() == [False]
    assert unbiased.dtype == torch.float32 and unbiased.shape == (8,)


def test_advantages_dr_grpo_only_centres():
    rewards = torch.tensor([1.0, 2.0, 6.0, 0.5, 0.5, 2.0])  # B=2, G=3
    advantages, zero_var = group_advantages(rewards, 3, scale="none")
    assert advantages.tolist() == pytest.approx([-2.0, -1.0, 3.0, -0.5, -0.5, 1.0], abs=1e-6)
    assert zero_var.tolist() == [False, False]


@settings(max_examples=25, deadline=None)
@given(
    groups=st.lists(
        st.lists(st.sampled_from([0.0, 0.5, 1.0, 1.7, 2.0, -1.0]), min_size=4, max_size=4), min_size=1, max_size=5
    ),
    std=st.sampled_from(["unbiased", "population"]),
)
def test_advantages_match_python_statistics(groups, std):
    rewards = torch.tensor([r for group in groups for r in group], dtype=torch.float64)
    advantages, zero_var = group_advantages(rewards, 4, std=std)
    spread = statistics.stdev if std == "unbiased" else statistics.pstdev
    expected = []
    for group in groups:
        if len(set(group)) == 1:
            expected += [0.0] * 4
        else:
            mean, s = statistics.fmean(group), spread(group)
            expected += [(r - mean) / (s + 1e-4) for r in group]
    assert advantages.tolist() == pytest.approx(expected, abs=1e-12)
    assert zero_var.tolist() == [len(set(group)) == 1 for group in groups]


def test_zero_variance_groups_are_exactly_zero():
    # 0.1 is not representable: the group's mean differs from 0.1 in the last bit, yet Â must be 0.
    rewards = torch.tensor([0.1] * 8 + [1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0] + [0.0] * 8)
    for scale in ("group", "none"):
        for std in ("unbiased", "population"):
            advantages, zero_var = group_advantages(rewards, 8, scale=scale, std=std)
            assert zero_var.tolist() == [True, False, True]
            assert torch.equal(advantages[:8], torch.zeros(8)) and torch.equal(advantages[16:], torch.zeros(8))
            assert torch.isfinite(advantages).all() and (advantages[8:16] != 0).all()


def test_advantages_validate_shapes():
    with pytest.raises(ValueError, match="not a multiple of group_size=8"):
        group_advantages(torch.zeros(12), 8)
    with pytest.raises(ValueError, match="flat"):
        group_advantages(torch.zeros(2, 8), 8)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.zeros(8), 8, scale="batch")
    advantages, zero_var = group_advantages(torch.tensor([3.0, 4.0]), 1)  # G=1: every group is constant
    assert advantages.tolist() == [0.0, 0.0] and zero_var.tolist() == [True, True]


# ---------------------------------------------------------------------------------------------
# Policy loss: a slow, obvious reference (python loops over sequences and tokens, scalar ops)
# ---------------------------------------------------------------------------------------------


def reference_loss(logprobs, old, ref, advantages, mask, *, eps_low, eps_high, beta, loss_agg, max_len=None):
    """docs/method.md §4 term by term: one scalar at a time; autograd through the scalar ops gives the gradient."""
    n, t = mask.shape
    sequence_terms, total, num_tokens = [], 0.0, 0
    for i in range(n):
        token_terms = []
        for j in range(t):
            if not bool(mask[i, j]):
                continue
            old_ij = logprobs[i, j].detach() if old is None else old[i, j]
            rho = torch.exp(logprobs[i, j] - old_ij)
            a = advantages[i]
            unclipped = rho * a
            clipped = torch.clamp(rho, 1 - eps_low, 1 + eps_high) * a
            term = -(unclipped if unclipped <= clipped else clipped)
            if ref is not None and beta != 0:
                delta = ref[i, j] - logprobs[i, j]
                term = term + beta * (torch.exp(delta) - delta - 1)
            token_terms.append(term)
        if token_terms:
            sequence_total = sum(token_terms)
            total = total + sequence_total
            num_tokens += len(token_terms)
            sequence_terms.append(sequence_total / (len(token_terms) if loss_agg == "seq_mean_token_mean" else max_len))
    if loss_agg == "token_mean":
        return total / num_tokens
    return sum(sequence_terms) / len(sequence_terms)


def random_batch(n=5, t=6, dtype=torch.float64, seed=0, lengths=None):
    generator = torch.Generator().manual_seed(seed)
    logprobs = (-3 * torch.rand(n, t, generator=generator, dtype=torch.float64)).to(dtype)  # [N, T]
    # Old / ref close to the current policy, but far enough that some ratios clip on either side.
    old = (logprobs.double() + 0.3 * torch.randn(n, t, generator=generator, dtype=torch.float64)).to(dtype)
    ref = (logprobs.double() + 0.5 * torch.randn(n, t, generator=generator, dtype=torch.float64)).to(dtype)
    advantages = torch.randn(n, generator=generator, dtype=torch.float64).to(dtype)  # [N]
    if lengths is None:
        lengths = torch.randint(1, t + 1, (n,), generator=generator).tolist()
    mask = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]  # [N, T]
    return logprobs, old, ref, advantages, mask


@pytest.mark.parametrize("loss_agg", LOSS_AGGREGATIONS)
def test_loss_on_a_hand_computed_2x3_example(loss_agg):
    logprobs = torch.tensor([[-1.0, -0.5, -2.0], [-0.2, -1.5, -9.0]], requires_grad=True)
    old = torch.tensor([[-1.5, -0.5, -1.9], [-0.1, -1.0, -9.0]])
    ref = torch.tensor([[-1.2, -0.4, -2.0], [-0.3, -1.5, -9.0]])
    advantages = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # the second completion has 2 tokens
    beta, eps = 0.04, 0.2

    def term(lp, lp_old, lp_ref, a):
        rho = math.exp(lp - lp_old)
        surrogate = min(rho * a, min(max(rho, 1 - eps), 1 + eps) * a)
        kl = math.exp(lp_ref - lp) - (lp_ref - lp) - 1
        return -surrogate + beta * kl

    # Sequence 1 (A = +1): ρ = e^0.5 = 1.6487 clips to 1.2; ρ = 1; ρ = e^-0.1 = 0.905 (not clipped, A > 0).
    seq1 = [term(-1.0, -1.5, -1.2, 1.0), term(-0.5, -0.5, -0.4, 1.0), term(-2.0, -1.9, -2.0, 1.0)]
    # Sequence 2 (A = -2): ρ = e^-0.1 = 0.905; ρ = e^-0.5 = 0.607 clips to 0.8 (A < 0: clipped side active).
    seq2 = [term(-0.2, -0.1, -0.3, -2.0), term(-1.5, -1.0, -1.5, -2.0)]
    assert seq1[0] == pytest.approx(-1.2 + 0.04 * (math.exp(-0.2) + 0.2 - 1), abs=1e-12)
    expected = {
        "seq_mean_token_mean": (sum(seq1) / 3 + sum(seq2) / 2) / 2,
        "token_mean": (sum(seq1) + sum(seq2)) / 5,
        "seq_mean_token_sum_norm": (sum(seq1) / 4 + sum(seq2) / 4) / 2,
    }[loss_agg]
    loss, stats = grpo_policy_loss(
        logprobs, old, ref, advantages, mask, eps_low=eps, eps_high=eps, beta=beta, loss_agg=loss_agg, max_completion_length=4
    )
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats["clip_frac_high"].item() == pytest.approx(1 / 5)  # token (0, 0)
    assert stats["clip_frac_low"].item() == pytest.approx(1 / 5)  # token (1, 1)
    ratios = [math.exp(0.5), 1.0, math.exp(-0.1), math.exp(-0.1), math.exp(-0.5)]
    assert stats["ratio"].item() == pytest.approx(sum(ratios) / 5, abs=1e-6)
    loss.backward()
    # Clipped tokens pass gradient only through the KL term: d/dlp of β·k3 = β(1 − e^{ref−lp}).
    norm = {"seq_mean_token_mean": 3 * 2, "token_mean": 5, "seq_mean_token_sum_norm": 4 * 2}[loss_agg]
    assert logprobs.grad[0, 0].item() == pytest.approx(beta * (1 - math.exp(-0.2)) / norm, abs=1e-7)
    assert logprobs.grad[1, 2].item() == 0.0  # padding


@pytest.mark.parametrize("loss_agg", LOSS_AGGREGATIONS)
@pytest.mark.parametrize("use_old", [True, False])
def test_loss_and_gradient_match_reference_fp64_and_fp32(loss_agg, use_old):
    options = dict(eps_low=0.2, eps_high=0.28, beta=0.04, loss_agg=loss_agg)
    logprobs, old, ref, advantages, mask = random_batch(n=6, t=7, seed=1)
    old = old if use_old else None
    leaf = logprobs.clone().requires_grad_()
    expected = reference_loss(leaf, old, ref, advantages, mask, max_len=9, **options)
    (expected_grad,) = torch.autograd.grad(expected, leaf)
    for dtype, tolerance in ((torch.float64, 1e-12), (torch.float32, 1e-6)):
        ours_leaf = logprobs.to(dtype, copy=True).requires_grad_()
        loss, _ = grpo_policy_loss(
            ours_leaf,
            None if old is None else old.to(dtype),
            ref.to(dtype),
            advantages.to(dtype),
            mask,
            max_completion_length=9,
            **options,
        )
        loss.backward()
        assert loss.dtype == dtype
        assert loss.item() == pytest.approx(expected.item(), abs=tolerance)
        torch.testing.assert_close(ours_leaf.grad.double(), expected_grad, atol=tolerance, rtol=0)


def test_bf16_inputs_are_computed_in_fp32():
    logprobs, old, ref, advantages, mask = random_batch(n=6, t=7, seed=2, dtype=torch.bfloat16)
    # The reference runs in fp64 on the very same (bf16-rounded) numbers, so the only differences
    # are fp32 arithmetic in the loss (1e-6) and the bf16 rounding of the returned gradient (2^-8).
    leaf = logprobs.double().requires_grad_()
    expected = reference_loss(leaf, old.double(), ref.double(), advantages.double(), mask, eps_low=0.2, eps_high=0.2, beta=0.04, loss_agg="seq_mean_token_mean")
    (expected_grad,) = torch.autograd.grad(expected, leaf)
    ours_leaf = logprobs.clone().requires_grad_()
    loss, _ = grpo_policy_loss(ours_leaf, old, ref, advantages, mask)
    loss.backward()
    assert loss.dtype == torch.float32 and ours_leaf.grad.dtype == torch.bfloat16
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    torch.testing.assert_close(ours_leaf.grad.double(), expected_grad, rtol=2**-8, atol=1e-6)


def test_clipping_zeroes_the_gradient_on_the_active_side():
    logprobs = torch.zeros(4, 1, requires_grad=True)
    old = torch.tensor([[-0.5], [0.5], [-0.5], [0.5]])  # ρ = e^0.5 (1.65), e^-0.5 (0.61), 1.65, 0.61
    advantages = torch.tensor([1.0, -1.0, -1.0, 1.0])
    loss, stats = grpo_policy_loss(logprobs, old, None, advantages, torch.ones(4, 1, dtype=torch.bool), beta=0.0)
    loss.backward()
    # Rows 0 and 1: clip active (ρ > 1.2 with Â > 0, ρ < 0.8 with Â < 0) → no gradient.
    # Rows 2 and 3: the unclipped branch is the minimum → gradient −ρÂ/N.
    expected = [0.0, 0.0, math.exp(0.5) / 4, -math.exp(-0.5) / 4]
    assert logprobs.grad.squeeze(1).tolist() == pytest.approx(expected, abs=1e-7)
    assert stats["clip_frac_high"].item() == pytest.approx(0.25) and stats["clip_frac_low"].item() == pytest.approx(0.25)


def test_single_update_case_old_none_gives_ratio_one():
    logprobs, _, _, advantages, mask = random_batch(n=4, t=5, seed=3, dtype=torch.float32)
    leaf = logprobs.clone().requires_grad_()
    loss, stats = grpo_policy_loss(leaf, None, None, advantages, mask)
    lengths = mask.sum(1).float()
    assert loss.item() == pytest.approx(-advantages.mean().item(), abs=1e-6)  # ρ = 1: −mean Â
    loss.backward()
    expected_grad = (-advantages / lengths / 4)[:, None] * mask  # d/dlogp of −ρÂ/|o|/N at ρ = 1
    torch.testing.assert_close(leaf.grad, expected_grad, atol=1e-7, rtol=0)
    assert stats["ratio"].item() == pytest.approx(1.0) and stats["clip_frac_low"].item() == 0.0


# ---------------------------------------------------------------------------------------------
# Split invariance: micro-batches and ranks
# ---------------------------------------------------------------------------------------------


def contributions(batch, rows, normalizers, loss_agg, trim=True):
    """Loss contribution of a subset of rows, padded only to the subset's own longest completion."""
    logprobs, old, ref, advantages, mask = batch
    sub_mask = mask[rows]
    width = max(int(sub_mask.sum(1).max()), 1) if trim else mask.shape[1]
    return grpo_policy_loss(
        logprobs[rows][:, :width],
        old[rows][:, :width],
        ref[rows][:, :width],
        advantages[rows],
        sub_mask[:, :width],
        eps_low=0.2,
        eps_high=0.2,
        beta=0.04,
        loss_agg=loss_agg,
        num_sequences=normalizers.num_sequences,
        num_tokens=normalizers.num_tokens,
        max_completion_length=8,
    )


@pytest.mark.parametrize("loss_agg", LOSS_AGGREGATIONS)
@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_micro_batches_sum_to_the_whole_batch(loss_agg, dtype, tolerance):
    lengths = [8, 1, 3, 0, 6, 2, 8]  # uneven token counts, and one fully masked row
    logprobs, old, ref, advantages, mask = random_batch(n=7, t=8, seed=4, dtype=dtype, lengths=lengths)
    whole_leaf = logprobs.clone().requires_grad_()
    whole, whole_stats = grpo_policy_loss(whole_leaf, old, ref, advantages, mask, loss_agg=loss_agg, max_completion_length=8)
    whole.backward()

    leaf = logprobs.clone().requires_grad_()
    batch = (leaf, old, ref, advantages, mask)
    normalizers = loss_normalizers(mask)
    assert normalizers == LossNormalizers(num_sequences=6, num_tokens=28)
    total, stats_total = 0.0, {}
    for rows in ([0], [1, 2, 3], [4, 5, 6]):  # uneven micro-batches, each padded to its own width
        loss, stats = contributions(batch, rows, normalizers, loss_agg)
        loss.backward()  # gradient accumulation
        total = total + loss.detach()
        stats_total = {k: stats_total.get(k, 0) + v for k, v in stats.items()}
    assert total.item() == pytest.approx(whole.item(), abs=tolerance)
    torch.testing.assert_close(leaf.grad, whole_leaf.grad, atol=tolerance, rtol=0)
    for key, value in whole_stats.items():
        assert stats_total[key].item() == pytest.approx(value.item(), abs=tolerance), key


@pytest.mark.parametrize("loss_agg", LOSS_AGGREGATIONS)
def test_two_ranks_with_averaging_data_parallel_equal_the_whole_batch(loss_agg):
    lengths = [5, 2, 8, 8, 1, 0, 3, 7]
    logprobs, old, ref, advantages, mask = random_batch(n=8, t=8, seed=5, lengths=lengths)
    whole_leaf = logprobs.clone().requires_grad_()
    whole, _ = grpo_policy_loss(whole_leaf, old, ref, advantages, mask, loss_agg=loss_agg, max_completion_length=8)
    whole.backward()

    world_size = 2
    rank_rows = ([0, 1, 2], [3, 4, 5, 6, 7])  # uneven shards
    # Each rank counts its own rows; the all-reduce (SUM) of the counts gives the step's normalisers.
    local = [loss_normalizers(mask[rows]) for rows in rank_rows]
    normalizers = LossNormalizers(*(sum(counts) for counts in zip(*local)))
    rank_grads, rank_losses = [], []
    for rows, micro_batches in zip(rank_rows, ([[0, 1], [2]], [[3], [4, 5, 6, 7]])):
        leaf = logprobs.clone().requires_grad_()  # each rank its own replica of the parameters
        batch = (leaf, old, ref, advantages, mask)
        rank_loss = 0.0
        for micro_rows in micro_batches:
            loss, _ = contributions(batch, micro_rows, normalizers, loss_agg)
            (loss * world_size).backward()  # DDP / FSDP average gradients over ranks
            rank_loss += loss.item()
        rank_grads.append(leaf.grad)
        rank_losses.append(rank_loss)
    averaged = sum(rank_grads) / world_size  # what the DDP all-reduce (mean) produces
    assert sum(rank_losses) == pytest.approx(whole.item(), abs=1e-12)
    torch.testing.assert_close(averaged, whole_leaf.grad, atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------------------------
# Edge cases
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_agg", LOSS_AGGREGATIONS)
def test_fully_masked_rows_give_no_nan_and_do_not_count(loss_agg):
    logprobs, old, ref, advantages, mask = random_batch(n=4, t=5, seed=6, lengths=[3, 0, 5, 0])
    garbage = logprobs.clone()
    garbage[1] = float("-inf")  # what a padded row may hold
    garbage[3] = float("nan")
    leaf = garbage.requires_grad_()
    loss, stats = grpo_policy_loss(leaf, old, ref, advantages, mask, loss_agg=loss_agg, max_completion_length=5)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in stats.values())
    assert torch.equal(leaf.grad[1], torch.zeros(5)) and torch.equal(leaf.grad[3], torch.zeros(5))
    kept, _ = grpo_policy_loss(logprobs[[0, 2]], old[[0, 2]], ref[[0, 2]], advantages[[0, 2]], mask[[0, 2]], loss_agg=loss_agg, max_completion_length=5)
    assert loss.item() == pytest.approx(kept.item(), abs=1e-12)  # the empty rows do not count in S
    assert loss_normalizers(mask) == (2, 8)
    empty, _ = grpo_policy_loss(torch.zeros(2, 3, requires_grad=True), None, None, torch.ones(2), torch.zeros(2, 3), loss_agg=loss_agg, max_completion_length=5)
    assert empty.item() == 0.0


def test_length_one_completions():
    logprobs = torch.tensor([[-0.7], [-2.0]], requires_grad=True)
    old = torch.tensor([[-0.8], [-2.0]])
    advantages = torch.tensor([0.5, -1.5])
    loss, _ = grpo_policy_loss(logprobs, old, None, advantages, torch.ones(2, 1), beta=0.0)
    expected = -(math.exp(0.1) * 0.5 + 1.0 * -1.5) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    for loss_agg in LOSS_AGGREGATIONS:
        other, _ = grpo_policy_loss(logprobs, old, None, advantages, torch.ones(2, 1), beta=0.0, loss_agg=loss_agg, max_completion_length=1)
        assert other.item() == pytest.approx(expected, abs=1e-6)  # one token per sequence: all modes agree


def test_all_groups_zero_variance_give_zero_advantages_and_a_finite_loss():
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    advantages, zero_var = group_advantages(rewards, 4)
    assert torch.equal(advantages, torch.zeros(8)) and zero_var.all()
    logprobs, old, ref, _, mask = random_batch(n=8, t=4, seed=7, dtype=torch.float32)
    leaf = logprobs.clone().requires_grad_()
    loss, _ = grpo_policy_loss(leaf, old, None, advantages, mask, beta=0.04)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(leaf.grad, torch.zeros_like(leaf))
    with_kl, _ = grpo_policy_loss(logprobs, old, ref, advantages, mask)  # only the KL term remains
    assert torch.isfinite(with_kl) and with_kl.item() > 0


def test_beta_zero_ignores_the_reference():
    logprobs, old, ref, advantages, mask = random_batch(n=4, t=5, seed=8)
    without, stats_without = grpo_policy_loss(logprobs, old, None, advantages, mask, beta=0.0)
    ignored, stats_ignored = grpo_policy_loss(logprobs, old, ref, advantages, mask, beta=0.0)
    no_ref, _ = grpo_policy_loss(logprobs, old, None, advantages, mask, beta=0.04)
    assert without.item() == ignored.item() == no_ref.item()
    assert "kl" not in stats_without and stats_ignored["kl"].item() > 0  # still reported when given
    with_kl, _ = grpo_policy_loss(logprobs, old, ref, advantages, mask, beta=0.04)
    delta = ref - logprobs
    k3 = (torch.exp(delta) - delta - 1) * mask  # [N, T]
    assert with_kl.item() - without.item() == pytest.approx(0.04 * (k3.sum(1) / mask.sum(1)).mean().item(), abs=1e-12)
    assert stats_ignored["kl"].item() == pytest.approx((k3.sum() / mask.sum()).item(), abs=1e-12)


def test_entropy_stat_is_a_token_mean():
    entropy = torch.tensor([[1.0, 2.0, 99.0], [3.0, 99.0, 99.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    _, stats = grpo_policy_loss(torch.zeros(2, 3), None, None, torch.zeros(2), mask, entropy=entropy)
    assert stats["entropy"].item() == pytest.approx(2.0)
    assert not any(v.requires_grad for v in stats.values())


def test_loss_validates_its_inputs():
    logprobs, old, ref, advantages, mask = random_batch(n=3, t=4, seed=9)
    with pytest.raises(ValueError, match="max_completion_length"):
        grpo_policy_loss(logprobs, old, ref, advantages, mask, loss_agg="seq_mean_token_sum_norm")
    with pytest.raises(ValueError, match="loss_agg"):
        grpo_policy_loss(logprobs, old, ref, advantages, mask, loss_agg="sum")
    with pytest.raises(ValueError, match="old_logprobs"):
        grpo_policy_loss(logprobs, old[:, :3], ref, advantages, mask)
    with pytest.raises(ValueError, match="advantages"):
        grpo_policy_loss(logprobs, old, ref, advantages[:2], mask)
