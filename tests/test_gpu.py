"""On a CUDA device: the compiled Triton kernels (not the interpreter) against float64 references at
realistic sizes, under torch.compile, and within the memory budget. Skipped without CUDA (`gpu` marker).

    python -m pytest -m gpu tests/test_gpu.py
"""

import pytest
import torch

from guard import losses, ops

pytestmark = pytest.mark.gpu
IGNORE = -100


def _inputs(n, h, v, dtype, seed=0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen).to("cuda", dtype)
    weight = (torch.randn(v, h, generator=gen) / h**0.5).to("cuda", dtype)
    labels = torch.randint(0, v, (n,), generator=gen)
    labels[torch.rand(n, generator=gen) < 0.2] = IGNORE
    return hidden, weight, labels.cuda()


def _reference(hidden, weight, labels, dtype):
    logsm = torch.log_softmax((hidden.to(dtype) @ weight.to(dtype).T).float().to(dtype), -1)
    valid = labels != IGNORE
    logp = torch.where(valid, logsm.gather(1, labels.clamp(min=0)[:, None])[:, 0], 0)
    ent = torch.where(valid, -(logsm.exp() * logsm).sum(-1), 0)
    return logp, ent


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_compiled_token_logprobs_match_float64(dtype):
    n, h, v = 1536, 1024, 32003  # V not a multiple of any block
    hidden, weight, labels = _inputs(n, h, v, dtype)
    g1, g2 = torch.randn(n, device="cuda", dtype=torch.float64), torch.randn(n, device="cuda", dtype=torch.float64)

    def run(fn, dt):
        leaves = [hidden.detach().to(dt).requires_grad_(), weight.detach().to(dt).requires_grad_()]
        lp, ent = fn(*leaves)
        ((lp.double() * g1).sum() + (ent.double() * g2).sum()).backward()
        return [lp.double(), ent.double(), leaves[0].grad.double(), leaves[1].grad.double()]

    ours = run(lambda a, b: ops.token_logprobs(a, b, labels, return_entropy=True), dtype)
    truth = run(lambda a, b: _reference(a, b, labels, torch.float64), torch.float64)
    plain = run(lambda a, b: _reference(a, b, labels, dtype), dtype)
    for o, t, p in zip(ours, truth, plain):
        err, base = (o - t).abs().max().item(), (p - t).abs().max().item()
        assert err <= 2 * base + 1e-3 * max(1.0, t.abs().max().item()), (err, base)


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

    def run(device, dtype, backend):
        leaves = [t.to(device, dtype).requires_grad_() for t in (hidden, weight)]
        with ops.backend(backend):
            out = ops.fused_preference_loss(leaves[0], leaves[1], labels.to(device), ref.to(device),
                                            **{k: (x.to(device) if isinstance(x, torch.Tensor) else x) for k, x in kwargs.items()})
        (out.loss + out.moments.sum() + out.rewards.sum()).backward()
        return [out.loss, out.moments, out.rewards, leaves[0].grad, leaves[1].grad]

    got = run("cuda", torch.float32, "auto")
    want = run("cpu", torch.float64, "torch")
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double().cpu(), w, rtol=1e-3, atol=1e-4 * max(1.0, w.abs().max().item()))


def test_bt_loss_on_cuda():
    gen = torch.Generator(device="cpu").manual_seed(2)
    c, r = torch.randn(512, generator=gen), torch.randn(512, generator=gen)
    cats = torch.randint(0, 19, (512,), generator=gen)
    out = ops.bt_loss(c.cuda().bfloat16(), r.cuda().bfloat16(), categories=cats.cuda(), num_categories=19, margin=0.1)
    ref = losses.bt_pair_losses(c.bfloat16().double(), r.bfloat16().double(), margin=0.1)
    torch.testing.assert_close(out.pair_losses.double().cpu(), ref, rtol=1e-5, atol=1e-5)


def test_under_inductor():
    hidden, weight, labels = _inputs(512, 256, 4096, torch.bfloat16)

    def step(hd, w):
        return ops.token_logprobs(hd, w, labels).float().sum()

    compiled = torch.compile(step)
    a = [hidden.clone().requires_grad_(), weight.clone().requires_grad_()]
    b = [hidden.clone().requires_grad_(), weight.clone().requires_grad_()]
    step(*a).backward()
    compiled(*b).backward()
    for x, y in zip(a, b):
        torch.testing.assert_close(x.grad, y.grad, rtol=2e-2, atol=2e-2)


def test_memory_stays_far_below_logits():
    """N = 16384 tokens, V = 128256: the logits alone would take 4 GiB in bf16 (8 GiB in fp32)."""
    n, h, v = 16384, 2048, 128256
    hidden, weight, labels = _inputs(n, h, v, torch.bfloat16)
    hidden.requires_grad_()
    weight.requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    ops.token_logprobs(hidden, weight, labels).sum().backward()
    torch.cuda.synchronize()
    grads = hidden.numel() * 2 + weight.numel() * 2
    extra_gib = (torch.cuda.max_memory_allocated() - base - grads) / 2**30
    assert extra_gib <= 1.5, f"{extra_gib:.2f} GiB beyond inputs and gradients"
