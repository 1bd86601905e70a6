"""No host sync in the hot path: torch.compile(fullgraph=True) traces token_logprobs, fused_preference_loss
(SPO with earlier rounds and categories) and bt_loss with zero graph breaks -- a `.item()`, `bool(tensor)`,
`.tolist()` or data-dependent shape anywhere would break the graph -- on the torch path and on the Triton
path (the kernels are custom ops, opaque to the compiler), forward and backward, and matches eager.
(On CUDA, tests/test_gpu.py also runs the ops under torch.cuda.set_sync_debug_mode("error").)

    TRITON_INTERPRET=1 python -m pytest tests/test_ops_compile.py -q
"""

import os

import pytest
import torch

from guard import ops

IGNORE = -100
needs_triton = pytest.mark.skipif(
    not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
    reason="the Triton kernels need CUDA or TRITON_INTERPRET=1",
)


def inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    pairs, steps, h, v = 4, 6, 16, 70
    hidden = torch.randn(2 * pairs, steps, h, generator=gen)
    weight = torch.randn(v, h, generator=gen) / h**0.5
    bias = torch.randn(v, generator=gen) * 0.1
    labels = torch.randint(0, v, (2 * pairs, steps), generator=gen)
    labels[:, :2] = IGNORE
    ref_logps = -torch.rand(2 * pairs, generator=gen) * 10
    categories = torch.tensor([0, 1, 1, 2])
    previous = torch.randn(2, 2 * pairs, generator=gen)
    return hidden, weight, bias, labels, ref_logps, categories, previous


def step(hidden, weight, bias, labels, ref_logps, categories, previous, impl):
    logp, entropy = ops.token_logprobs(hidden[0], weight, labels[0], bias=bias, return_entropy=True, impl=impl)
    out = ops.fused_preference_loss(hidden, weight, labels, ref_logps, loss_type="spo", alphas=[0.2, 0.3],
                                    previous_logratios=previous, categories=categories, num_categories=3,
                                    bias=bias, impl=impl)
    rm = ops.bt_loss(out.rewards[:4], out.rewards[4:], categories=categories, num_categories=3, margin=0.1,
                     center_coef=0.01)
    return out.loss + out.moments.sum() + rm.loss + rm.moments.sum() + (logp + 0.1 * entropy).sum()


@pytest.mark.parametrize("backend_impl", [
    pytest.param(("triton", "chunked"), marks=needs_triton),
    pytest.param(("triton", "tiled"), marks=needs_triton),
    ("torch", None),
])
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")  # dynamo's own probe
def test_fullgraph_compile_has_no_graph_break(backend_impl):
    backend, impl = backend_impl
    hidden, weight, bias, labels, ref_logps, categories, previous = inputs()
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")  # fullgraph: a break is an error
    with ops.backend(backend):
        eager = [t.clone().requires_grad_() for t in (hidden, weight)]
        traced = [t.clone().requires_grad_() for t in (hidden, weight)]
        expected = step(*eager, bias, labels, ref_logps, categories, previous, impl)
        got = compiled(*traced, bias, labels, ref_logps, categories, previous, impl)
        expected.backward()
        got.backward()
        explained = torch._dynamo.explain(step)(hidden, weight, bias, labels, ref_logps, categories, previous, impl)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
    torch.testing.assert_close(got, expected)
    for a, e in zip(traced, eager):
        torch.testing.assert_close(a.grad, e.grad)


def test_checking_is_what_synchronises():
    """The value checks need the device's answer: with check=True the trace breaks (that is the cost the
    flag names), without it there is nothing to break on."""
    hidden, weight, _, labels, ref_logps, *_ = inputs()

    def checked(hd, w):
        return ops.fused_preference_loss(hd, w, labels, ref_logps, check=True).loss

    torch._dynamo.reset()
    with ops.backend("torch"):
        explained = torch._dynamo.explain(checked)(hidden, weight)
    assert explained.graph_break_count >= 1
