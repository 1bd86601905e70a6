"""On a CUDA device: the compiled Triton kernels (not the interpreter) of both log-prob designs against
float64 references at realistic sizes, an fp32 head with bf16 hidden states (the GPU's own rounding),
a frozen head, determinism of the chunked design, no host synchronisation in the ops (CUDA's sync debug
mode), torch.compile, V·H past 2^31, and the memory budget. Skipped without CUDA (`gpu` marker).

    python -m pytest -m gpu tests/test_gpu.py
"""

import pytest
import torch

from guard import losses, ops
from guard.kernels.linear_logprobs import IMPLS

pytestmark = pytest.mark.gpu
IGNORE = -100


def _inputs(n, h, v, dtype, seed=0, weight_dtype=None):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen).to("cuda", dtype)
    weight = (torch.randn(v, h, generator=gen) / h**0.5).to("cuda", weight_dtype or dtype)
    labels = torch.randint(0, v, (n,), generator=gen)
    labels[torch.rand(n, generator=gen) < 0.2] = IGNORE
    return hidden, weight, labels.cuda()


def _reference(hidden, weight, labels, dtype):
    logsm = torch.log_softmax((hidden.to(dtype) @ weight.to(dtype).T).float().to(dtype), -1)
    valid = labels != IGNORE
    logp = torch.where(valid, logsm.gather(1, labels.clamp(min=0)[:, None])[:, 0], 0)
    ent = torch.where(valid, -(logsm.exp() * logsm).sum(-1), 0)
    return logp, ent


def _run(fn, hidden, weight, g1, g2, dtypes):
    leaves = [hidden.detach().to(dtypes[0]).requires_grad_(), weight.detach().to(dtypes[1]).requires_grad_()]
    lp, ent = fn(*leaves)
    ((lp.double() * g1).sum() + (ent.double() * g2).sum()).backward()
    return [lp.double(), ent.double(), leaves[0].grad.double(), leaves[1].grad.double()]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_compiled_token_logprobs_match_float64(dtype, impl):
    n, h, v = 1536, 1024, 32003  # V not a multiple of any block
    hidden, weight, labels = _inputs(n, h, v, dtype)
    g1, g2 = torch.randn(n, device="cuda", dtype=torch.float64), torch.randn(n, device="cuda", dtype=torch.float64)
    ours = _run(lambda a, b: ops.token_logprobs(a, b, labels, return_entropy=True, impl=impl), hidden, weight, g1, g2, (dtype, dtype))
    truth = _run(lambda a, b: _reference(a, b, labels, torch.float64), hidden, weight, g1, g2, (torch.float64,) * 2)
    plain = _run(lambda a, b: _reference(a, b, labels, dtype), hidden, weight, g1, g2, (dtype, dtype))
    for o, t, p in zip(ours, truth, plain):
        err, base = (o - t).abs().max().item(), (p - t).abs().max().item()
        assert err <= 2 * base + 1e-3 * max(1.0, t.abs().max().item()), (err, base)


@pytest.mark.parametrize("impl", IMPLS)
def test_fp32_head_with_bf16_hidden_rounds_like_torch(impl):
    """The kernels cast fp32 head tiles to bf16 in registers: the result must be the one of the head rounded
    by torch (round to nearest even), computed without copying the head."""
    n, h, v = 1024, 512, 20011
    hidden, weight, labels = _inputs(n, h, v, torch.bfloat16, seed=3, weight_dtype=torch.float32)
    with_cast = ops.token_logprobs(hidden, weight, labels, return_entropy=True, impl=impl)
    copied = ops.token_logprobs(hidden, weight.bfloat16(), labels, return_entropy=True, impl=impl)
    for a, b in zip(with_cast, copied):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    transposed = weight.T.contiguous().T  # the same values through a transposed view
    torch.testing.assert_close(ops.token_logprobs(hidden, transposed, labels, impl=impl), with_cast[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_frozen_head_gets_no_gradient(impl):
    hidden, weight, labels = _inputs(2048, 1024, 32000, torch.bfloat16, seed=4)
    hidden.requires_grad_()
    ops.token_logprobs(hidden, weight, labels, impl=impl).sum().backward()
    assert weight.grad is None and torch.isfinite(hidden.grad).all() and hidden.grad.abs().sum() > 0
    with_head = hidden.detach().clone().requires_grad_()
    weight.requires_grad_()
    ops.token_logprobs(with_head, weight, labels, impl=impl).sum().backward()
    torch.testing.assert_close(hidden.grad, with_head.grad, rtol=2e-2, atol=1e-3)


def test_chunked_is_bitwise_deterministic():
    hidden, weight, labels = _inputs(4096, 2048, 50000, torch.bfloat16, seed=5)

    def run():
        leaves = [hidden.clone().requires_grad_(), weight.clone().requires_grad_()]
        lp, ent = ops.token_logprobs(*leaves, labels, return_entropy=True, impl="chunked")
        (lp.sum() + 0.1 * ent.sum()).backward()
        return [lp, ent, leaves[0].grad, leaves[1].grad]

    for a, b in zip(run(), run()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("impl", IMPLS)
def test_no_host_sync_in_the_ops(impl):
    """CUDA's sync debug mode raises on any synchronising call (.item(), bool(tensor), a blocking copy):
    the ops, forward and backward, make none (after a warm-up launch, which compiles the kernels)."""
    gen = torch.Generator(device="cpu").manual_seed(6)
    pairs, steps, h, v = 4, 64, 256, 5000
    hidden = torch.randn(2 * pairs, steps, h, generator=gen).cuda().requires_grad_()
    weight = (torch.randn(v, h, generator=gen) / h**0.5).cuda().requires_grad_()
    labels = torch.randint(0, v, (2 * pairs, steps), generator=gen)
    labels[:, :16] = IGNORE
    labels, ref = labels.cuda(), (-torch.rand(2 * pairs, generator=gen) * 100).cuda()
    cats, prev = torch.tensor([0, 1, 1, 2]).cuda(), torch.randn(2, 2 * pairs, generator=gen).cuda()

    def step():
        lp, ent = ops.token_logprobs(hidden[0], weight, labels[0], return_entropy=True, impl=impl)
        out = ops.fused_preference_loss(hidden, weight, labels, ref, loss_type="spo", alphas=[0.1, 0.2],
                                        previous_logratios=prev, categories=cats, num_categories=3, impl=impl)
        rm = ops.bt_loss(out.rewards[:pairs], out.rewards[pairs:], categories=cats, num_categories=3, margin=0.1)
        (out.loss + out.moments.sum() + rm.loss + lp.sum() + ent.sum()).backward()

    step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "apo_zero", "apo_down", "kto_pair", "spo"])
def test_fused_preference_loss_on_cuda_matches_cpu_float64(loss_type):
    gen = torch.Generator(device="cpu").manual_seed(1)
    pairs, steps, h, v = 8, 64, 256, 5000
    hidden = torch.randn(2 * pairs, steps, h, generator=gen)
    weight = torch.randn(v, h, generator=gen) / h**0.5
    labels = torch.randint(0, v, (2 * pairs, steps), generator=gen)
    labels[:, :20] = IGNORE
    ref = -torch.rand(2 * pairs, generator=gen) * 300
    cats = torch.randint(0, 3, (pairs,), generator=gen)
    prev = torch.randn(2, 2 * pairs, generator=gen) if loss_type == "spo" else None
    kwargs = dict(loss_type=loss_type, categories=cats, num_categories=4, previous_logratios=prev,
                  alphas=[0.1, 0.2] if prev is not None else None)

    def run(device, dtype, backend, impl=None):
        leaves = [t.to(device, dtype).requires_grad_() for t in (hidden, weight)]
        with ops.backend(backend):
            out = ops.fused_preference_loss(leaves[0], leaves[1], labels.to(device), ref.to(device), impl=impl,
                                            **{k: (x.to(device) if isinstance(x, torch.Tensor) else x) for k, x in kwargs.items()})
        (out.loss + out.moments.sum() + out.rewards.sum()).backward()
        return [out.loss, out.moments, out.rewards, leaves[0].grad, leaves[1].grad]

    want = run("cpu", torch.float64, "torch")
    for impl in IMPLS:
        got = run("cuda", torch.float32, "auto", impl)
        for g, w in zip(got, want):
            torch.testing.assert_close(g.double().cpu(), w, rtol=1e-3, atol=1e-4 * max(1.0, w.abs().max().item()))


def test_bt_loss_on_cuda():
    gen = torch.Generator(device="cpu").manual_seed(2)
    c, r = torch.randn(512, generator=gen), torch.randn(512, generator=gen)
    cats = torch.randint(0, 19, (512,), generator=gen)
    out = ops.bt_loss(c.cuda().bfloat16(), r.cuda().bfloat16(), categories=cats.cuda(), num_categories=19, margin=0.1)
    ref = losses.bt_pair_losses(c.bfloat16().double(), r.bfloat16().double(), margin=0.1)
    torch.testing.assert_close(out.pair_losses.double().cpu(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_under_inductor(impl):
    hidden, weight, labels = _inputs(512, 256, 4096, torch.bfloat16)

    def step(hd, w):
        return ops.token_logprobs(hd, w, labels, impl=impl).float().sum()

    compiled = torch.compile(step, fullgraph=True)
    a = [hidden.clone().requires_grad_(), weight.clone().requires_grad_()]
    b = [hidden.clone().requires_grad_(), weight.clone().requires_grad_()]
    step(*a).backward()
    compiled(*b).backward()
    for x, y in zip(a, b):
        torch.testing.assert_close(x.grad, y.grad, rtol=2e-2, atol=2e-2)


def test_vocab_times_hidden_past_int32():
    """V·H > 2^31 elements in the head: int64 addressing (labels in the last rows of the head)."""
    n, h, v = 256, 8192, 262_400  # V·H = 2.15e9 > 2^31
    hidden, weight, labels = _inputs(n, h, v, torch.bfloat16, seed=7)
    labels[-8:] = torch.arange(v - 8, v, device="cuda")
    for impl in IMPLS:
        logp = ops.token_logprobs(hidden, weight, labels, impl=impl)
        logits = torch.cat([hidden.float() @ weight[i : i + 65536].float().T for i in range(0, v, 65536)], dim=1)
        expected = torch.where(labels != IGNORE, logits.gather(1, labels.clamp(min=0)[:, None])[:, 0] - logits.logsumexp(-1), 0.0)
        torch.testing.assert_close(logp, expected, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("frozen", [False, True])
def test_chunked_memory_within_budget(frozen):
    """N = 16384 tokens, H = 4096, V = 128256 (the benchmark's shape): the logits alone would take 4 GiB in bf16;
    the chunked design stays within 1.5 GiB beyond the inputs and the gradients."""
    n, h, v = 16384, 4096, 128256
    hidden, weight, labels = _inputs(n, h, v, torch.bfloat16)
    hidden.requires_grad_()
    weight.requires_grad_(not frozen)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    ops.token_logprobs(hidden, weight, labels, impl="chunked").sum().backward()
    torch.cuda.synchronize()
    grads = hidden.numel() * 2 + (0 if frozen else weight.numel() * 2)
    extra_gib = (torch.cuda.max_memory_allocated() - base - grads) / 2**30
    assert extra_gib <= 1.5, f"{extra_gib:.2f} GiB beyond inputs and gradients"
