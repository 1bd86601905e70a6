"""guard.ops.fused_preference_loss and guard.ops.bt_loss end to end against float64 references built from
materialised logits and guard.losses: every output, with upstream gradients on all of them at once,
back to hidden, weight and bias; on the Triton kernels (interpreted on the CPU) and the torch path."""

import os

import pytest
import torch

from guard import losses, ops

IGNORE = -100
needs_triton = pytest.mark.skipif(
    not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
    reason="the Triton kernels need CUDA or TRITON_INTERPRET=1",
)
BACKENDS = [pytest.param("triton", marks=needs_triton), "torch"]


def make_batch(pairs, steps, h, v, *, num_categories=5, rounds=0, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    rows = 2 * pairs
    hidden = torch.randn(rows, steps, h, generator=gen, dtype=torch.float64).to(dtype)
    weight = (torch.randn(v, h, generator=gen, dtype=torch.float64) / h**0.5).to(dtype)
    bias = (torch.randn(v, generator=gen, dtype=torch.float64) * 0.1).to(dtype)
    labels = torch.randint(0, v, (rows, steps), generator=gen)
    labels[:, : steps // 3] = IGNORE  # prompt tokens
    if rows > 2:
        labels[1] = IGNORE  # a fully ignored chosen row
    ref_logps = -torch.rand(rows, generator=gen) * steps * 3
    # categories: 0 holds most pairs, 1 exactly one (when there are >= 3 pairs), the rest absent
    categories = torch.zeros(pairs, dtype=torch.long)
    if pairs >= 3:
        categories[1] = 1
        categories[2::2] = 3
    previous = torch.randn(rounds, rows, generator=gen) * 2
    upstream = {
        "loss": torch.randn((), generator=gen, dtype=torch.float64),
        "pair_losses": torch.randn(pairs, generator=gen, dtype=torch.float64),
        "logps": torch.randn(rows, generator=gen, dtype=torch.float64),
        "rewards": torch.randn(rows, generator=gen, dtype=torch.float64),
        "moments": torch.randn(num_categories, 2, 4, generator=gen, dtype=torch.float64),
    }
    return hidden, weight, bias, labels, ref_logps, categories, previous, upstream


def reference(hidden, weight, bias, labels, ref_logps, *, loss_type, beta, categories, num_categories,
              previous, alphas, label_smoothing, temperature):
    logits = (hidden @ weight.T + bias) / temperature
    logsm = torch.log_softmax(logits, -1)
    token = torch.where(labels != IGNORE, logsm.gather(-1, labels.clamp(min=0)[..., None])[..., 0], 0.0)
    logps = token.sum(-1)
    lr = logps - ref_logps.double()
    batch = lr.shape[0] // 2
    if loss_type == "spo":
        prev = previous.double()
        pair = losses.spo_pair_losses(lr[:batch], lr[batch:], prev[:, :batch], prev[:, batch:], beta=beta, alphas=alphas)
    else:
        pair = losses.pair_losses(lr[:batch], lr[batch:], loss_type=loss_type, beta=beta, label_smoothing=label_smoothing)
    rewards = beta * lr
    moments, counts = losses.category_moments(torch.stack([rewards[:batch], rewards[batch:]], 1), categories, num_categories)
    return {"loss": pair.mean(), "pair_losses": pair, "logps": logps, "rewards": rewards, "moments": moments}, counts


def run_both(backend, pairs, steps, h, v, *, loss_type, rounds=0, alphas=None, label_smoothing=0.0, temperature=1.0,
             beta=0.1, dtype=torch.float32, seed=0):
    hidden, weight, bias, labels, ref_logps, categories, previous, upstream = make_batch(
        pairs, steps, h, v, rounds=rounds, seed=seed, dtype=dtype)
    kwargs = dict(loss_type=loss_type, beta=beta, categories=categories, num_categories=5,
                  previous_logratios=previous if loss_type == "spo" else None, alphas=alphas,
                  label_smoothing=label_smoothing, temperature=temperature)

    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    with ops.backend(backend):
        out = ops.fused_preference_loss(leaves[0], leaves[1], labels, ref_logps, bias=leaves[2], **kwargs)
    got = {k: getattr(out, k) for k in upstream}
    sum((got[k].double() * g).sum() for k, g in upstream.items()).backward()

    ref_leaves = [t.double().requires_grad_() for t in (hidden, weight, bias)]
    kwargs["previous"] = kwargs.pop("previous_logratios")
    kwargs["alphas"] = alphas if alphas is not None else 0.0
    exp, counts = reference(ref_leaves[0], ref_leaves[1], ref_leaves[2], labels, ref_logps, **kwargs)
    sum((exp[k] * g).sum() for k, g in upstream.items()).backward()
    assert torch.equal(out.counts.cpu(), counts)
    return got, [t.grad for t in leaves], exp, [t.grad for t in ref_leaves]


def assert_matches(got, grads, exp, ref_grads, rtol=2e-4, atol=2e-5):
    for k in exp:
        scale = max(1.0, exp[k].abs().max().item())
        torch.testing.assert_close(got[k].double(), exp[k].detach(), rtol=rtol, atol=atol * scale, msg=lambda m: f"{k}: {m}")
    for name, g, e in zip(("hidden", "weight", "bias"), grads, ref_grads):
        assert torch.isfinite(g).all(), name
        scale = max(1.0, e.abs().max().item())
        torch.testing.assert_close(g.double(), e, rtol=rtol, atol=atol * scale, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "apo_zero", "apo_down", "kto_pair"])
def test_every_loss_type(backend, loss_type):
    smoothing = 0.1 if loss_type == "sigmoid" else 0.0
    assert_matches(*run_both(backend, 5, 7, 20, 90, loss_type=loss_type, label_smoothing=smoothing, temperature=0.8, seed=3))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rounds,alphas", [(0, None), (1, [0.3]), (2, [0.2, 0.4])])
def test_spo_rounds(backend, rounds, alphas):
    assert_matches(*run_both(backend, 4, 5, 18, 70, loss_type="spo", rounds=rounds, alphas=alphas, seed=rounds))


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_token_sequences_and_one_pair(backend):
    assert_matches(*run_both(backend, 1, 1, 16, 33, loss_type="sigmoid", beta=0.5, seed=7))


@needs_triton
def test_bf16_error_within_twice_torch_bf16():
    """DESIGN §5: in bf16 our error against float64 is at most 2× a bf16 torch computation's."""
    got, grads, exp, ref_grads = run_both("triton", 4, 6, 24, 80, loss_type="sigmoid", dtype=torch.bfloat16, seed=11)
    hidden, weight, bias, labels, ref_logps, categories, _, upstream = make_batch(4, 6, 24, 80, seed=11, dtype=torch.bfloat16)
    low = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    logits = low[0] @ low[1].T + low[2]
    token = torch.where(labels != IGNORE, torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0], 0)
    lr = token.sum(-1) - ref_logps.to(torch.bfloat16)
    pair = losses.pair_losses(lr[:4], lr[4:], loss_type="sigmoid", beta=0.1)
    rewards = 0.1 * lr
    moments, _ = losses.category_moments(torch.stack([rewards[:4], rewards[4:]], 1), categories, 5)
    bf = {"loss": pair.mean(), "pair_losses": pair, "logps": token.sum(-1), "rewards": rewards, "moments": moments}
    sum((bf[k].double() * g).sum() for k, g in upstream.items()).backward()
    pairs = [(got[k], bf[k], exp[k]) for k in exp] + list(zip(grads, [t.grad for t in low], ref_grads))
    for ours, theirs, truth in pairs:
        truth = truth.detach()
        err_ours = (ours.double() - truth).abs().max().item()
        err_torch = (theirs.double() - truth).abs().max().item()
        assert err_ours <= 2 * err_torch + 1e-3 * max(1.0, truth.abs().max().item()), (err_ours, err_torch)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("margin", [None, 0.3, "tensor"])
def test_bt_loss(backend, margin):
    gen = torch.Generator().manual_seed(5)
    batch = 23
    chosen, rejected = torch.randn(batch, generator=gen) * 2, torch.randn(batch, generator=gen) * 2
    categories = torch.randint(0, 3, (batch,), generator=gen)
    categories[0] = 4  # category 4 holds one pair, category 3 none
    if margin == "tensor":
        margin = torch.rand(batch, generator=gen)
    leaves = [chosen.clone().requires_grad_(), rejected.clone().requires_grad_()]
    with ops.backend(backend):
        out = ops.bt_loss(*leaves, categories=categories, num_categories=5, margin=margin, center_coef=0.01)
    g_pair, g_mom = torch.randn(batch, generator=gen), torch.randn(5, 2, 4, generator=gen)
    (out.loss * 0.7 + (out.pair_losses * g_pair).sum() + (out.moments * g_mom).sum()).backward()

    ref_leaves = [chosen.double().requires_grad_(), rejected.double().requires_grad_()]
    m = margin.double() if isinstance(margin, torch.Tensor) else margin
    pair = losses.bt_pair_losses(*ref_leaves, margin=m, center_coef=0.01)
    moments, counts = losses.category_moments(torch.stack(ref_leaves, 1), categories, 5)
    (pair.mean() * 0.7 + (pair * g_pair.double()).sum() + (moments * g_mom.double()).sum()).backward()
    torch.testing.assert_close(out.pair_losses.double(), pair.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.moments.double(), moments.detach(), rtol=1e-4, atol=1e-5)
    assert torch.equal(out.counts.cpu(), counts)
    assert out.accuracy.item() == pytest.approx((chosen > rejected).float().mean().item())
    for g, e in zip(leaves, ref_leaves):
        torch.testing.assert_close(g.grad.double(), e.grad, rtol=1e-4, atol=1e-5)


def test_without_categories_or_reference():
    hidden, weight, _, labels, _, _, _, _ = make_batch(3, 4, 16, 40)
    out = ops.fused_preference_loss(hidden, weight, labels, None, loss_type="sigmoid")
    assert out.moments is None and out.counts is None
    torch.testing.assert_close(out.rewards, 0.1 * out.logps)


def test_bad_input_is_named():
    hidden, weight, _, labels, ref_logps, categories, _, _ = make_batch(3, 4, 16, 40)
    labels[1, -1] = 3  # make_batch leaves row 1 without a response token, which check=True refuses
    with pytest.raises(ValueError, match=r"hidden must be \[2B, T, H\]"):
        ops.fused_preference_loss(hidden[:5], weight, labels[:5], ref_logps[:5])
    with pytest.raises(ValueError, match=r"ref_logps must be \[2B\] = \[6\]"):
        ops.fused_preference_loss(hidden, weight, labels, ref_logps[:4])
    with pytest.raises(ValueError, match=r"categories\[1\] = 7 is out of range \[0, 5\)"):
        ops.fused_preference_loss(hidden, weight, labels, ref_logps, categories=torch.tensor([0, 7, 1]), num_categories=5,
                                  check=True)
    with pytest.raises(ValueError, match="categories need num_categories"):
        ops.fused_preference_loss(hidden, weight, labels, ref_logps, categories=categories)
    with pytest.raises(ValueError, match="loss_type must be one of"):
        ops.fused_preference_loss(hidden, weight, labels, ref_logps, loss_type="dpo")
    with pytest.raises(ValueError, match="previous_logratios only applies"):
        ops.fused_preference_loss(hidden, weight, labels, ref_logps, previous_logratios=torch.zeros(1, 6))
    with pytest.raises(ValueError, match=r"previous_logratios must be \[R, 2B\]"):
        ops.fused_preference_loss(hidden, weight, labels, ref_logps, loss_type="spo", previous_logratios=torch.zeros(1, 5), alphas=[0.1])
    with pytest.raises(ValueError, match=r"labels\[\(2, 3\)\] = 40"):
        bad = labels.clone()
        bad[2, 3] = 40
        ops.fused_preference_loss(hidden, weight, bad, ref_logps, check=True)
    with pytest.raises(ValueError, match="both be \\[B\\]"):
        ops.bt_loss(torch.zeros(3), torch.zeros(4))


@needs_triton
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")  # dynamo's own probe
def test_preference_and_bt_ops_work_under_torch_compile():
    hidden, weight, bias, labels, ref_logps, categories, previous, _ = make_batch(4, 5, 16, 50, rounds=1, seed=9)

    def step(hd, w):
        out = ops.fused_preference_loss(hd, w, labels, ref_logps, loss_type="spo", categories=categories, num_categories=5,
                                        previous_logratios=previous, alphas=[0.2], bias=bias)
        rm = ops.bt_loss(out.rewards[:4], out.rewards[4:], categories=categories, num_categories=5, margin=0.1)
        return out.loss + out.moments.sum() + rm.loss + rm.moments.sum()

    compiled = torch.compile(step, backend="aot_eager")
    with ops.backend("triton"):
        eager = [t.clone().requires_grad_() for t in (hidden, weight)]
        traced = [t.clone().requires_grad_() for t in (hidden, weight)]
        expected, got = step(*eager), compiled(*traced)
        expected.backward()
        got.backward()
    torch.testing.assert_close(got, expected)
    for a, e in zip(traced, eager):
        torch.testing.assert_close(a.grad, e.grad)


@needs_triton
def test_head_custom_ops_pass_opcheck():
    from guard.kernels import bt_head, preference_head

    gen = torch.Generator().manual_seed(0)
    logps, ref = torch.randn(8, generator=gen), torch.randn(8, generator=gen)
    cats, shift = torch.tensor([0, 1, 1, 2]), torch.randn(4, generator=gen)
    torch.library.opcheck(preference_head.preference_head_fwd, (logps, ref, cats, shift, "spo", 0.1, 0.0, 3))
    torch.library.opcheck(preference_head.preference_head_fwd, (logps, None, None, None, "sigmoid", 0.1, 0.0, 0))
    grads = (torch.ones(()), torch.ones(4), torch.ones(8), torch.ones(3, 2, 4))
    torch.library.opcheck(preference_head.preference_head_bwd, (logps, ref, cats, shift, *grads, "spo", 0.1, 0.0, 3))
    c, r = logps[:4].clone(), logps[4:].clone()
    torch.library.opcheck(bt_head.bt_head_fwd, (c, r, None, 0.2, cats, 3, 0.01))
    torch.library.opcheck(bt_head.bt_head_bwd, (c, r, torch.rand(4), 0.0, cats, 3, 0.0, torch.ones(()), None, torch.ones(3, 2, 4)))


@needs_triton
def test_heads_refuse_more_categories_than_they_tile():
    rewards = torch.randn(4)
    with ops.backend("triton"), pytest.raises(ValueError, match="at most 256 categories"):
        ops.bt_loss(rewards, rewards, categories=torch.tensor([0, 299, 5, 7]), num_categories=300)
