"""The Triton loss heads (guard.kernels.preference_head, guard.kernels.bt_head) against the plain-torch
reference math of guard.losses, run in float64: every output forward, and the gradient of a random
combination of every output at once. On the CPU the kernels run under TRITON_INTERPRET=1:

    TRITON_INTERPRET=1 python -m pytest tests/test_heads.py -q
"""

import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from guard.kernels import bt_head, preference_head
from guard.kernels.bt_head import BTHeadFunction
from guard.kernels.preference_head import PreferenceHeadFunction
from guard.kernels.tuning import head_blocks
from guard.losses import (
    LOSS_TYPES,
    MOMENT_VARIANCE_FLOOR,
    bt_pair_losses,
    category_moments,
    pair_losses,
    spo_kappas,
    spo_pair_losses,
)

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
    reason="Triton needs CUDA or TRITON_INTERPRET=1",
)

DEVICE = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
PREFERENCE_LOSSES = LOSS_TYPES + ("spo",)


# ----------------------------------------------------------------------------------------------------
# helpers


def assert_close(actual, expected, *, rtol=1e-5, atol=1e-6, scale=None):
    """|actual − expected| ≤ atol·scale + rtol·|expected|, scale defaulting to max(1, max|expected|)."""
    expected = expected.detach().to(torch.float64).cpu()
    actual = actual.detach().to(torch.float64).cpu()
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if scale is None:
        scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol * scale)


def conditioning(moments64):
    """|μ|/√m2 per (category, column): float32 rewards carry eps·|v| of rounding, so the centered values
    d = v − μ, and the variance, skewness and kurtosis built on them, carry eps·|μ|/√m2 relative error."""
    m2 = moments64[..., 1].detach().cpu()
    varied = m2 > MOMENT_VARIANCE_FLOOR
    return torch.where(varied, moments64[..., 0].detach().cpu().abs() / m2.clamp(min=MOMENT_VARIANCE_FLOOR).sqrt(), 0.0)


def assert_moments_close(actual, expected):
    """Moments within 2e-6 (relative to max(1, |value|)) plus 1e-6·(1 + |μ|/√m2) for the centered ones."""
    expected = expected.detach().to(torch.float64).cpu()
    actual = actual.detach().to(torch.float64).cpu()
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    size = expected.abs().clamp(min=1.0)
    tol = 2e-6 * size
    tol[..., 1:] += 1e-6 * (1 + conditioning(expected))[..., None] * size[..., 1:]
    bad = (actual - expected).abs() > tol
    assert not bad.any(), f"moments differ at {bad.nonzero().tolist()}:\n{actual}\nvs\n{expected}"


def moment_grad_scale(moments64, counts, g_moments, chain=1.0):
    """The size the moment gradient has before its terms cancel: skewness and kurtosis gradients scale
    as g/√m2 per element, and float32 rounding leaves ~eps·(1 + |μ|/√m2) of that even where they cancel
    to ~0 (a two-element category's skewness is identically 0, yet its gradient sums ±1/√m2 terms)."""
    m2 = moments64[..., 1].detach().cpu()
    live = (counts.cpu()[:, None] >= 2) & (m2 > MOMENT_VARIANCE_FLOOR)
    g = (g_moments[..., 2].abs() + g_moments[..., 3].abs()).cpu().to(torch.float64)
    terms = torch.where(live, g / m2.clamp(min=MOMENT_VARIANCE_FLOOR).sqrt(), torch.zeros_like(m2))
    terms = terms * (1 + conditioning(moments64))
    return chain * float(terms.max()) if terms.numel() else 0.0


def upstream(batch, num_categories, seed):
    gen = torch.Generator().manual_seed(seed + 7919)
    g_moments = torch.randn(num_categories, 2, 4, generator=gen) if num_categories else None
    return torch.randn((), generator=gen), torch.randn(batch, generator=gen), torch.randn(2 * batch, generator=gen), g_moments


def objective(loss, pair, rewards, moments, grads):
    """Σ g·output over every output, so one backward checks the gradient of each."""
    g_loss, g_pair, g_rewards, g_moments = (None if g is None else g.to(device=loss.device, dtype=loss.dtype) for g in grads)
    total = loss * g_loss + (pair * g_pair).sum()
    if rewards is not None:
        total = total + (rewards * g_rewards).sum()
    if moments is not None:
        total = total + (moments * g_moments).sum()
    return total


def make_case(seed, batch, num_categories, rounds=0, *, cats=None, with_ref=True, offset=0.0):
    gen = torch.Generator().manual_seed(seed)
    logps = torch.randn(2 * batch, generator=gen) * 4 - 60
    ref = torch.randn(2 * batch, generator=gen) * 4 - 60 - offset if with_ref else None
    if cats is None and num_categories:
        cats = torch.randint(0, num_categories, (batch,), generator=gen)
    prev = torch.randn(rounds, 2 * batch, generator=gen) * 3 if rounds else None
    return logps, ref, cats, prev


def reference_preference(logps, ref, cats, prev, loss_type, beta, eps, alphas, num_categories):
    """guard.losses in float64: (leaf logps, (loss, pair_losses, rewards, moments, counts))."""
    batch = logps.shape[0] // 2
    lp = logps.detach().to(torch.float64).requires_grad_()
    lr = lp - ref.to(torch.float64) if ref is not None else lp * 1.0
    if loss_type == "spo":
        prev64 = prev.to(torch.float64) if prev is not None else lp.new_zeros(0, 2 * batch)
        pair = spo_pair_losses(lr[:batch], lr[batch:], prev64[:, :batch], prev64[:, batch:], beta=beta, alphas=alphas)
    else:
        pair = pair_losses(lr[:batch], lr[batch:], loss_type=loss_type, beta=beta, label_smoothing=eps)
    rewards = beta * lr
    moments = counts = None
    if cats is not None:
        moments, counts = category_moments(torch.stack([rewards[:batch], rewards[batch:]], dim=1), cats, num_categories)
    return lp, (pair.mean(), pair, rewards, moments, counts)


def run_preference(logps, ref, cats, prev, loss_type, beta, eps, alphas, num_categories, grads):
    rounds = 0 if prev is None else prev.shape[0]
    kappas = tuple(spo_kappas(beta, alphas, rounds)) if rounds else ()
    to = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    lp = logps.detach().clone().to(DEVICE).requires_grad_()
    out = PreferenceHeadFunction.apply(lp, to(ref), to(cats), to(prev), loss_type, beta, eps, kappas, num_categories)
    objective(out[0], out[1], out[2], out[3], grads).backward()
    return lp, out


def check_preference(logps, ref, cats, prev, loss_type, beta, eps=0.0, alphas=0.3, num_categories=None, seed=0):
    """Kernel vs reference, forward and the gradient of every output at once; returns the kernel outputs."""
    batch = logps.shape[0] // 2
    grads = upstream(batch, num_categories if cats is not None else None, seed)
    lp, out = run_preference(logps, ref, cats, prev, loss_type, beta, eps, alphas, num_categories, grads)
    lp64, expected = reference_preference(logps, ref, cats, prev, loss_type, beta, eps, alphas, num_categories)
    objective(*expected[:4], grads).backward()

    loss, pair, rewards, moments, counts = out
    assert loss.shape == () and loss.dtype == torch.float32
    assert pair.shape == (batch,) and rewards.shape == (2 * batch,)
    assert_close(loss, expected[0])
    assert_close(pair, expected[1])
    assert_close(rewards, expected[2])
    if cats is None:
        assert moments is None and counts is None
    else:
        assert moments.shape == (num_categories, 2, 4) and moments.dtype == torch.float32
        assert counts.dtype == torch.int64 and not counts.requires_grad
        assert torch.equal(counts.cpu(), expected[4].cpu())
        assert_moments_close(moments, expected[3])
    assert lp.grad is not None and lp.grad.dtype == torch.float32
    assert torch.isfinite(lp.grad).all()
    scale = max(1.0, lp64.grad.abs().max().item())
    if cats is not None:
        scale += moment_grad_scale(expected[3], expected[4], grads[3], chain=beta)
    assert_close(lp.grad, lp64.grad, rtol=1e-5, atol=2e-6, scale=scale)
    return out


# ----------------------------------------------------------------------------------------------------
# preference head


@pytest.mark.parametrize("loss_type", PREFERENCE_LOSSES)
@pytest.mark.parametrize("batch", [1, 3, 37])
def test_preference_head_matches_reference(loss_type, batch):
    seed = 100 * PREFERENCE_LOSSES.index(loss_type) + batch
    rounds = 1 if loss_type == "spo" else 0
    logps, ref, cats, prev = make_case(seed, batch, 5, rounds)
    eps = 0.1 if loss_type == "sigmoid" else 0.0
    check_preference(logps, ref, cats, prev, loss_type, beta=0.3, eps=eps, alphas=0.4, num_categories=5, seed=seed)


@pytest.mark.parametrize("rounds", [0, 1, 2])
def test_spo_earlier_rounds(rounds):
    logps, ref, cats, prev = make_case(rounds, 29, 4, rounds)
    alphas = [0.5, 0.25][:rounds]
    check_preference(logps, ref, cats, prev, "spo", beta=0.2, alphas=alphas, num_categories=4, seed=rounds)
    if rounds == 0:  # no earlier round: SPO is DPO
        out = run_preference(logps, ref, None, None, "spo", 0.2, 0.0, [], None, upstream(29, None, 0))[1]
        dpo = run_preference(logps, ref, None, None, "sigmoid", 0.2, 0.0, [], None, upstream(29, None, 0))[1]
        assert_close(out[1], dpo[1].double())


@pytest.mark.parametrize("eps", [0.0, 0.25, 0.45])
def test_label_smoothing(eps):
    logps, ref, cats, prev = make_case(11, 17, 3)
    check_preference(logps, ref, cats, prev, "sigmoid", beta=0.5, eps=eps, num_categories=3, seed=11)


@pytest.mark.parametrize("offset", [-4.0, 4.0])
def test_kto_reference_points_both_sides_of_zero(offset):
    # offset shifts the log-ratios so that mean(lr) is clearly negative (z = 0) or positive (z = mean).
    logps, ref, cats, _ = make_case(5, 23, 3, offset=offset)
    batch = 23
    lr = logps - ref
    assert (lr[:batch].mean() > 0) == (offset > 0)
    check_preference(logps, ref, cats, None, "kto_pair", beta=0.4, num_categories=3, seed=5)


@pytest.mark.parametrize(
    "loss_type,with_cats", [("sigmoid", True), ("kto_pair", True), ("spo", True), ("apo_down", False), ("ipo", False)]
)
def test_preference_head_several_blocks(loss_type, with_cats):
    num_categories = 19 if with_cats else None
    block_b, block_c = head_blocks(1 << 20, num_categories)  # the largest BLOCK_B for C
    batch = 2 * block_b + 37  # three blocks, the last one partial
    assert batch > 2 * block_b and block_c >= (num_categories or 1)
    logps, ref, cats, prev = make_case(3, batch, num_categories or 0, 2 if loss_type == "spo" else 0)
    check_preference(logps, ref, cats, prev, loss_type, beta=0.1, alphas=[0.3, 0.6], num_categories=num_categories, seed=3)


def test_categories_absent_single_and_constant():
    # C = 8: categories 1, 4, 6, 7 hold no pair, 3 holds exactly one, 2 holds four pairs with identical
    # rewards (zero variance), 0 and 5 are ordinary.
    cats = torch.tensor([0, 2, 5, 3, 2, 0, 5, 2, 0, 5, 2, 0])
    batch = cats.shape[0]
    logps, ref, _, _ = make_case(21, batch, 8)
    const = (cats == 2).nonzero().flatten()
    for idx in (const, const + batch):  # same logp and ref in every pair of category 2, both columns
        logps[idx] = logps[idx[0]].item()
        ref[idx] = ref[idx[0]].item()
    moments, counts = check_preference(logps, ref, cats, None, "sigmoid", beta=0.3, num_categories=8, seed=21)[3:]
    assert counts.tolist() == [4, 0, 4, 1, 0, 3, 0, 0]
    moments = moments.detach().cpu()
    assert torch.equal(moments[[1, 4, 6, 7]], torch.zeros(4, 2, 4))  # empty: zeros
    assert torch.equal(moments[3, :, 1:], torch.zeros(2, 3))  # one element: no spread
    assert torch.equal(moments[2, :, 2:], torch.zeros(2, 2))  # constant: skewness = kurtosis = 0
    assert moments[2, :, 1].abs().max() < MOMENT_VARIANCE_FLOOR
    assert (moments[[0, 5], :, 1] > 0).all()


def test_no_categories_no_reference():
    logps, _, _, _ = make_case(8, 13, 0, with_ref=False)
    logps = logps / 30  # reference-free: the log-ratio is logp itself; keep β·logp in a useful range
    for loss_type in ("sigmoid", "apo_zero"):
        check_preference(logps, None, None, None, loss_type, beta=0.2, seed=8)
    check_preference(logps, None, torch.arange(13) % 3, None, "ipo", beta=0.2, num_categories=3, seed=8)


def test_large_margins_are_finite_and_exact():
    # |βΔ| up to ~300: logσ must not go through log(σ) (underflow to log 0) nor lose the tiny tail.
    batch = 6
    logps = torch.tensor([0.0, 500.0, -500.0, 80.0, -80.0, 1e-3] + [0.0] * batch)
    for loss_type in ("sigmoid", "spo", "apo_zero", "kto_pair"):
        out = check_preference(logps, None, None, None, loss_type, beta=0.6, seed=1)
        assert torch.isfinite(out[1]).all()
    loss = PreferenceHeadFunction.apply(logps, None, None, None, "sigmoid", 0.6, 0.0, (), None)[1]
    assert loss[1].item() == 0.0 or loss[1].item() < 1e-30  # −logσ(300) ≈ 5e-131 → 0 in float32
    assert abs(loss[2].item() - 300.0) < 1e-4  # −logσ(−300) = 300
    assert loss[3].item() == pytest.approx(math.exp(-48), rel=1e-5)  # −logσ(48) ≈ e^−48, kept


def test_partial_upstream_gradients():
    """Only some outputs reach the loss (the others' gradients are None in backward)."""
    logps, ref, cats, _ = make_case(2, 19, 4)
    beta = 0.25
    for pick in ("loss", "rewards", "moments", "pair"):
        lp = logps.clone().requires_grad_()
        loss, pair, rewards, moments, _ = PreferenceHeadFunction.apply(lp, ref, cats, None, "apo_down", beta, 0.0, (), 4)
        lp64, expected = reference_preference(logps, ref, cats, None, "apo_down", beta, 0.0, None, 4)
        index = {"loss": 0, "pair": 1, "rewards": 2, "moments": 3}[pick]
        g = torch.randn_like(expected[index]).to(torch.float32)
        ((loss, pair, rewards, moments)[index] * g).sum().backward()
        (expected[index] * g.double()).sum().backward()
        scale = max(1.0, lp64.grad.abs().max().item()) + moment_grad_scale(expected[3], expected[4], torch.zeros(4, 2, 4) if pick != "moments" else g, beta)
        assert_close(lp.grad, lp64.grad, atol=2e-6, scale=scale)


def test_one_launch_each_way(monkeypatch):
    launches = []

    class Counting:
        def __init__(self, kernel, name):
            self.kernel, self.name = kernel, name

        def __getitem__(self, grid):
            launches.append((self.name, tuple(grid)))
            return self.kernel[grid]

    for module, fwd, bwd in (
        (preference_head, "_preference_head_fwd_kernel", "_preference_head_bwd_kernel"),
        (bt_head, "_bt_head_fwd_kernel", "_bt_head_bwd_kernel"),
    ):
        monkeypatch.setattr(module, fwd, Counting(getattr(module, fwd), "fwd"))
        monkeypatch.setattr(module, bwd, Counting(getattr(module, bwd), "bwd"))
    logps, ref, cats, prev = make_case(4, 300, 19, 2)
    lp = logps.requires_grad_()
    out = PreferenceHeadFunction.apply(lp, ref, cats, prev, "spo", 0.1, 0.0, spo_kappas(0.1, 0.5, 2), 19)
    assert launches == [("fwd", (1,))]
    objective(out[0], out[1], out[2], out[3], upstream(300, 19, 4)).backward()
    assert launches == [("fwd", (1,)), ("bwd", (1,))]
    launches.clear()
    rc, rr = torch.randn(300, requires_grad=True), torch.randn(300, requires_grad=True)
    out = BTHeadFunction.apply(rc, rr, None, cats, 19, 0.01)
    (out[0] + out[2].sum()).backward()
    assert launches == [("fwd", (1,)), ("bwd", (1,))]


def test_preference_head_rejects_bad_input():
    logps = torch.randn(8)
    with pytest.raises(ValueError, match="loss_type"):
        PreferenceHeadFunction.apply(logps, None, None, None, "hinge", 0.1, 0.0, (), None)
    with pytest.raises(ValueError, match="2B"):
        PreferenceHeadFunction.apply(torch.randn(7), None, None, None, "sigmoid", 0.1, 0.0, (), None)
    with pytest.raises(ValueError, match="num_categories"):
        PreferenceHeadFunction.apply(logps, None, torch.zeros(4, dtype=torch.long), None, "sigmoid", 0.1, 0.0, (), None)
    with pytest.raises(ValueError, match="kappas"):
        PreferenceHeadFunction.apply(logps, None, None, torch.randn(2, 8), "spo", 0.1, 0.0, (0.1,), None)
    with pytest.raises(ValueError, match="beta"):
        PreferenceHeadFunction.apply(logps, None, None, None, "sigmoid", 0.0, 0.0, (), None)


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(
    batch=st.integers(1, 300),  # with C > 16 the one-hot tile holds 128 rows: past that, several blocks
    num_categories=st.integers(1, 24),
    loss_type=st.sampled_from(PREFERENCE_LOSSES),
    rounds=st.integers(0, 2),
    with_ref=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_preference_head_property(batch, num_categories, loss_type, rounds, with_ref, seed):
    rounds = rounds if loss_type == "spo" else 0
    logps, ref, cats, prev = make_case(seed, batch, num_categories, rounds, with_ref=with_ref)
    if not with_ref:
        logps = logps / 40
    eps = 0.2 if loss_type == "sigmoid" else 0.0
    beta = 0.05 + (seed % 7) / 10
    check_preference(logps, ref, cats, prev, loss_type, beta, eps, [0.3, 0.7][:rounds], num_categories, seed)


# ----------------------------------------------------------------------------------------------------
# Bradley–Terry head


def reference_bt(chosen, rejected, margin, cats, num_categories, center_coef, dtype=torch.float64):
    c = chosen.detach().to(dtype).requires_grad_()
    r = rejected.detach().to(dtype).requires_grad_()
    m = margin.to(dtype) if isinstance(margin, torch.Tensor) else margin
    pair = bt_pair_losses(c, r, margin=m, center_coef=center_coef)
    moments = counts = None
    if cats is not None:
        moments, counts = category_moments(torch.stack([c, r], dim=1), cats, num_categories)
    return (c, r), (pair.mean(), pair, moments, counts, (c > r).to(torch.float64).mean())


def bt_objective(loss, pair, moments, grads):
    g_loss, g_pair, _, g_moments = grads
    return objective(loss, pair, None, moments, (g_loss, g_pair, None, g_moments))


def run_bt(chosen, rejected, margin, cats, num_categories, center_coef, grads):
    c = chosen.detach().clone().to(DEVICE).requires_grad_()
    r = rejected.detach().clone().to(DEVICE).requires_grad_()
    m = margin.to(DEVICE) if isinstance(margin, torch.Tensor) else margin
    out = BTHeadFunction.apply(c, r, m, None if cats is None else cats.to(DEVICE), num_categories, center_coef)
    bt_objective(out[0], out[1], out[2], grads).backward()
    return (c, r), out


def bt_case(seed, batch, num_categories, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    chosen = (torch.randn(batch, generator=gen) * 2 + 0.5).to(dtype)
    rejected = (torch.randn(batch, generator=gen) * 2).to(dtype)
    margin = torch.rand(batch, generator=gen)
    cats = torch.randint(0, num_categories, (batch,), generator=gen) if num_categories else None
    return chosen, rejected, margin, cats


def check_bt(chosen, rejected, margin, cats, num_categories, center_coef, seed=0):
    batch = chosen.shape[0]
    grads = upstream(batch, num_categories if cats is not None else None, seed)
    (c, r), out = run_bt(chosen, rejected, margin, cats, num_categories, center_coef, grads)
    (c64, r64), expected = reference_bt(chosen, rejected, margin, cats, num_categories, center_coef)
    bt_objective(*expected[:3], grads).backward()
    loss, pair, moments, counts, accuracy = out
    assert loss.shape == () and accuracy.shape == () and accuracy.dtype == torch.float32
    assert not accuracy.requires_grad
    assert_close(loss, expected[0])
    assert_close(pair, expected[1])
    assert accuracy.item() == pytest.approx(expected[4].item(), abs=1e-7)
    scale = max(1.0, c64.grad.abs().max().item(), r64.grad.abs().max().item())
    if cats is None:
        assert moments is None and counts is None
    else:
        assert torch.equal(counts.cpu(), expected[3].cpu()) and not counts.requires_grad
        assert_moments_close(moments, expected[2])
        scale += moment_grad_scale(expected[2], expected[3], grads[3])
    for got, want, x in ((c.grad, c64.grad, chosen), (r.grad, r64.grad, rejected)):
        assert got.dtype == x.dtype and torch.isfinite(got).all()
        assert_close(got, want, atol=2e-6, scale=scale)
    return out


@pytest.mark.parametrize("batch", [1, 3, 37])
@pytest.mark.parametrize("margin_kind", ["none", "tensor", "float"])
def test_bt_head_matches_reference(batch, margin_kind):
    chosen, rejected, margin, cats = bt_case(batch, batch, 6)
    margin = {"none": None, "tensor": margin, "float": 0.75}[margin_kind]
    check_bt(chosen, rejected, margin, cats, 6, 0.0 if margin_kind == "none" else 0.01, seed=batch)


@pytest.mark.parametrize("with_cats", [True, False])
def test_bt_head_several_blocks(with_cats):
    num_categories = 19 if with_cats else None
    block_b = head_blocks(1 << 20, num_categories)[0]
    batch = 2 * block_b + 37
    chosen, rejected, margin, cats = bt_case(9, batch, num_categories or 0)
    check_bt(chosen, rejected, margin, cats, num_categories, 0.02, seed=9)


def test_bt_head_edge_categories():
    cats = torch.tensor([1, 1, 4, 1, 0, 4])
    chosen, rejected, margin, _ = bt_case(13, 6, 6)
    chosen[cats == 1] = 1.25  # constant chosen rewards in category 1
    out = check_bt(chosen, rejected, margin, cats, 6, 0.0, seed=13)
    moments, counts = out[2].detach(), out[3]
    assert counts.tolist() == [1, 3, 0, 0, 2, 0]
    assert torch.equal(moments[[2, 3, 5]], torch.zeros(3, 2, 4))
    assert torch.equal(moments[1, 0], torch.tensor([1.25, 0.0, 0.0, 0.0]))
    assert torch.equal(moments[0, :, 1:], torch.zeros(2, 3))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("batch,num_categories", [(5, 3), (61, 19)])
def test_bt_head_low_precision(dtype, batch, num_categories):
    """Error against float64 ≤ 2× that of the same reference run in the low-precision dtype."""
    chosen, rejected, margin, cats = bt_case(batch, batch, num_categories, dtype)
    grads = upstream(batch, num_categories, batch)
    (c, r), out = run_bt(chosen, rejected, margin, cats, num_categories, 0.01, grads)
    (c64, r64), exact = reference_bt(chosen, rejected, margin, cats, num_categories, 0.01)
    bt_objective(*exact[:3], grads).backward()
    (cl, rl), low = reference_bt(chosen, rejected, margin, cats, num_categories, 0.01, dtype=dtype)
    bt_objective(*low[:3], grads).backward()
    assert torch.equal(out[3], exact[3]) and out[4].item() == pytest.approx(exact[4].item())

    def error(a, b):
        return (a.detach().double() - b.detach().double()).abs().max().item()

    floor = 1e-6 if dtype == torch.float16 else 1e-5
    for got, ref_low, want in zip(out[:3], low[:3], exact[:3]):
        assert error(got, want) <= 2 * error(ref_low, want) + floor * max(1.0, want.abs().max().item())
    for got, ref_low, want in ((c.grad, cl.grad, c64.grad), (r.grad, rl.grad, r64.grad)):
        assert got.dtype == dtype and torch.isfinite(got).all()
        assert error(got, want) <= 2 * error(ref_low, want) + floor * max(1.0, want.abs().max().item())


def test_bt_head_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        BTHeadFunction.apply(torch.randn(4), torch.randn(5), None, None, None, 0.0)
    with pytest.raises(ValueError, match="num_categories"):
        BTHeadFunction.apply(torch.randn(4), torch.randn(4), None, torch.zeros(4, dtype=torch.long), None, 0.0)
    with pytest.raises(ValueError, match="margin"):
        BTHeadFunction.apply(torch.randn(4), torch.randn(4), torch.randn(3), None, None, 0.0)


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(
    batch=st.integers(1, 90),
    num_categories=st.integers(0, 24),
    center_coef=st.sampled_from([0.0, 0.05]),
    with_margin=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_bt_head_property(batch, num_categories, center_coef, with_margin, seed):
    chosen, rejected, margin, cats = bt_case(seed, batch, num_categories)
    check_bt(chosen, rejected, margin if with_margin else None, cats, num_categories or None, center_coef, seed)
