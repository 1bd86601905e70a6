"""Float64 references and helpers shared by the log-prob op tests (test_ops_logprobs, test_ops_linear_impls):
random inputs, log p(label) and entropy from materialised logits, and a runner that backpropagates a random
combination of the outputs."""

import torch

from guard import ops

IGNORE = -100
SHAPES = [  # N, H, V: H not a multiple of 16, V not a multiple of any block, a single row, many tiles
    (37, 40, 300),
    (1, 16, 64),
    (20, 24, 129),
    (33, 7, 515),
]


def make_inputs(n, h, v, *, dtype=torch.float32, bias=True, ignored=0.2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen, dtype=torch.float64)
    weight = torch.randn(v, h, generator=gen, dtype=torch.float64) / h**0.5 * 2
    b = torch.randn(v, generator=gen, dtype=torch.float64) if bias else None
    labels = torch.randint(0, v, (n,), generator=gen)
    labels[torch.rand(n, generator=gen) < ignored] = IGNORE
    grads = torch.randn(n, generator=gen, dtype=torch.float64), torch.randn(n, generator=gen, dtype=torch.float64)
    cast = lambda t: None if t is None else t.to(dtype)
    return cast(hidden), cast(weight), cast(b), labels, grads


def reference(hidden, weight, bias, labels, temperature, *, dtype=torch.float64):
    """log p(label) and entropy from materialised logits, computed in `dtype` (float64 = the truth)."""
    logits = hidden.to(dtype) @ weight.to(dtype).T
    if bias is not None:
        logits = logits + bias.to(dtype)
    logsm = torch.log_softmax(logits / temperature, dim=-1)
    valid = labels != IGNORE
    logp = torch.where(valid, logsm.gather(1, labels.clamp(min=0)[:, None])[:, 0], torch.zeros((), dtype=dtype))
    entropy = torch.where(valid, -(logsm.exp() * logsm).sum(-1), torch.zeros((), dtype=dtype))
    return logp, entropy


def outputs_and_grads(fn, tensors, grads):
    """Run fn on leaf copies of tensors, backprop Σ g·outputs, return outputs and input gradients."""
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in tensors]
    outs = fn(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    sum(((o.double() * g).sum() for o, g in zip(outs, grads)), torch.zeros((), dtype=torch.float64)).backward()
    return [o.detach().double() for o in outs], [None if t is None else t.grad.double() for t in leaves]


def assert_close_all(got, expected, rtol, atol):
    for g, e in zip(got, expected):
        if e is None:
            assert g is None
            continue
        scale = e.abs().max().item() if e.numel() else 0.0
        torch.testing.assert_close(g, e, rtol=rtol, atol=atol * max(1.0, scale))


def linear_case(backend, n, h, v, *, dtype, bias, temperature, entropy, ignored, seed, impl=None):
    """(our outputs and gradients, the float64 reference's, the inputs) of token_logprobs on fresh inputs."""
    hidden, weight, b, labels, grads = make_inputs(n, h, v, dtype=dtype, bias=bias, ignored=ignored, seed=seed)

    def ours(hd, w, bb):
        with ops.backend(backend):
            return ops.token_logprobs(hd, w, labels, bias=bb, temperature=temperature, ignore_index=IGNORE,
                                      return_entropy=entropy, impl=impl)

    def truth(hd, w, bb):
        out = reference(hd, w, bb, labels, temperature)
        return out if entropy else out[0]

    got = outputs_and_grads(ours, (hidden, weight, b), grads)
    exp = outputs_and_grads(truth, (hidden, weight, b), grads)
    return got, exp, (hidden, weight, b, labels, grads)
