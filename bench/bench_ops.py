"""Benchmark: a DPO loss step (forward + backward to hidden and LM-head weight) straight from hidden states,
guard's fused op -- both designs, and with a frozen head -- against the tools people use, in one process.

    python bench/bench_ops.py                                  # on a GPU: the default shapes, bf16, every impl
    python bench/bench_ops.py --shapes 16384x4096x128256 --impls guard-chunked,guard-tiled,liger --budget-s 240
    python bench/bench_ops.py --smoke                          # one small shape on the CPU (what CI runs)
    TRITON_INTERPRET=1 python bench/bench_ops.py --smoke --backend triton   # guard's kernels, interpreted
    python bench/bench_ops.py --list                           # the implementations and what each counts

Shapes are NxHxV with N = 2·pairs·T tokens (T = --tokens-per-seq, 1024), a quarter of each sequence prompt
(label ignore_index). Implementations (each computes the same quantity from hidden [2B, T, H], weight [V, H],
labels [2B, T] and cached reference log-probs, and is checked against eager PyTorch in fp32 -- loss and the
gradients of hidden and weight -- before it is timed; a mismatch is reported, not hidden):
  guard-chunked / guard-tiled   guard.ops.fused_preference_loss, impl="chunked" / "tiled" (guard = the default)
  guard-chunked-frozen / ...    the same with the head frozen (no weight gradient: LoRA)
  torch / torch-frozen          materialised logits + log_softmax + gather (what a plain DPO trainer does)
  compile                       torch.compile of the torch version
  liger                         Liger-Kernel's LigerFusedLinearDPOLoss (reference-free: its API has no slot for
                                cached reference log-probs; checked against the reference-free loss)
  liger-ce                      Liger-Kernel's fused linear cross-entropy (summed token NLL; checked against it)
  trl                           TRL's chunked log-prob head (trl.kernels.ChunkedLogProbFunction) + DPO in torch
  cce                           Apple's cut-cross-entropy linear_cross_entropy (token NLL) + DPO in torch
Per row: ms (median of CUDA-event timings of forward + backward), TFLOP/s counting 8·N·H·V for designs that
recompute the logits in the backward and 6·N·H·V for those that do not (2 less per GEMM a frozen head skips;
the `flops` column says which), the same as % of a bf16 [N, H] x [H, V] matmul timed in this run, peak device
memory beyond inputs and gradients (extra GB), the errors against eager, and each time as a multiple of
guard's default design. N counts every token, prompt included. Results go to DIR/ops-<device>-<date>.md and
.json, with the device, torch / triton / python versions and the date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from guard import ops

BETA = 0.1
TOKENS_PER_SEQ = 1024
GPU_SHAPES = [  # (pairs B, tokens T per sequence, H, V): N = 2·B·T tokens
    (8, 1024, 4096, 128256),  # 16384 tokens through a Llama-3-8B head
    (2, 1024, 2048, 32000),  # 4096 tokens, a small head
    (4, 1024, 4096, 152064),  # 8192 tokens, a Qwen-sized vocabulary
]
SMOKE_SHAPE = (2, 16, 64, 512)


def make_inputs(pairs, steps, hidden_size, vocab, dtype, device, seed=0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    rows = 2 * pairs
    hidden = (torch.randn(rows, steps, hidden_size, generator=gen) * 0.5).to(device=device, dtype=dtype)
    weight = (torch.randn(vocab, hidden_size, generator=gen) / hidden_size**0.5).to(device=device, dtype=dtype)
    labels = torch.randint(0, vocab, (rows, steps), generator=gen)
    labels[:, : steps // 4] = -100  # the prompt
    ref_logps = -torch.rand(rows, generator=gen) * steps * 5
    return hidden, weight, labels.to(device), ref_logps.to(device)


def dpo_from_sequence_logps(logps, ref_logps):
    lr = logps.float() - ref_logps
    batch = lr.shape[0] // 2
    return -F.logsigmoid(BETA * (lr[:batch] - lr[batch:])).mean()


def masked_sum(per_token, labels):
    return (per_token.float() * (labels != -100)).sum(-1)


# ----------------------------------------------------------------------------- the implementations


def run_torch(hidden, weight, labels, ref_logps):
    logits = (hidden @ weight.T).float()
    logp = logits.log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    return dpo_from_sequence_logps(masked_sum(logp, labels), ref_logps)


def run_torch_reference_free(hidden, weight, labels, ref_logps):
    return run_torch(hidden, weight, labels, torch.zeros_like(ref_logps))


def run_token_nll_sum(hidden, weight, labels, ref_logps):
    """Σ over response tokens of −log p(label): what the cross-entropy peers compute."""
    logits = (hidden @ weight.T).float()
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")


GUARD_BACKEND = ["auto"]  # --backend: "triton" runs guard's kernels on the CPU too (under TRITON_INTERPRET=1)


def guard_runner(impl):
    def run(hidden, weight, labels, ref_logps):
        with ops.backend(GUARD_BACKEND[0]):
            return ops.fused_preference_loss(hidden, weight, labels, ref_logps, loss_type="sigmoid", beta=BETA, impl=impl).loss

    return run


_compiled = {}


def run_compile(hidden, weight, labels, ref_logps):
    if "torch" not in _compiled:
        _compiled["torch"] = torch.compile(run_torch)
    return _compiled["torch"](hidden, weight, labels, ref_logps)


def run_liger(hidden, weight, labels, ref_logps):
    if "liger" not in _compiled:
        from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss

        _compiled["liger"] = LigerFusedLinearDPOLoss(beta=BETA, use_ref_model=False)
    out = _compiled["liger"](weight, hidden, labels)
    return out[0] if isinstance(out, tuple) else out


def run_liger_ce(hidden, weight, labels, ref_logps):
    if "liger-ce" not in _compiled:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        _compiled["liger-ce"] = LigerFusedLinearCrossEntropyLoss(ignore_index=-100, reduction="sum")
    return _compiled["liger-ce"](weight, hidden.flatten(0, 1), labels.flatten())


def run_trl(hidden, weight, labels, ref_logps):
    from trl.kernels import ChunkedLogProbFunction
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    mask = labels != -100
    flat = ChunkedLogProbFunction.apply(hidden[mask], weight, None, labels[mask], 1.0, _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0, ())
    per_token = hidden.new_zeros(labels.shape, dtype=torch.float32).masked_scatter(mask, flat[0].float())
    return dpo_from_sequence_logps(per_token.sum(-1), ref_logps)


def run_cce(hidden, weight, labels, ref_logps):
    from cut_cross_entropy import linear_cross_entropy

    nll = linear_cross_entropy(hidden, weight, labels, reduction="none")
    return dpo_from_sequence_logps(-masked_sum(nll, labels), ref_logps)


@dataclass(frozen=True)
class Impl:
    run: object  # (hidden, weight, labels, ref_logps) -> scalar loss
    expected: object  # the eager function computing the same quantity
    recomputes: bool  # the backward recomputes the logits (8·N·H·V) or keeps what the forward made (6·N·H·V)
    frozen: bool = False  # the head takes no gradient
    gpu_only: bool = False  # its fast path needs CUDA (compile: CPU inductor is not the peer)


IMPLS = {
    "guard": Impl(guard_runner(None), run_torch, recomputes=True),
    "guard-chunked": Impl(guard_runner("chunked"), run_torch, recomputes=True),
    "guard-tiled": Impl(guard_runner("tiled"), run_torch, recomputes=True),
    "guard-chunked-frozen": Impl(guard_runner("chunked"), run_torch, recomputes=True, frozen=True),
    "guard-tiled-frozen": Impl(guard_runner("tiled"), run_torch, recomputes=True, frozen=True),
    "torch": Impl(run_torch, run_torch, recomputes=False),
    "torch-frozen": Impl(run_torch, run_torch, recomputes=False, frozen=True),
    "compile": Impl(run_compile, run_torch, recomputes=False, gpu_only=True),
    "liger": Impl(run_liger, run_torch_reference_free, recomputes=False, gpu_only=True),
    "liger-ce": Impl(run_liger_ce, run_token_nll_sum, recomputes=False, gpu_only=True),
    "trl": Impl(run_trl, run_torch, recomputes=True, gpu_only=True),
    "cce": Impl(run_cce, run_torch, recomputes=True, gpu_only=True),
}
BASELINE = "guard"  # every row's time is also given as a multiple of this one's


def flop_count(impl: Impl, n, h, v) -> tuple[int, str]:
    """FLOPs of one forward + backward and the formula: 2·N·H·V per GEMM (forward logits, the recompute when
    there is one, dz·W for hidden, dzᵀ·x for the weight unless frozen)."""
    gemms = 2 + (1 if impl.recomputes else 0) + (0 if impl.frozen else 1)
    return 2 * gemms * n * h * v, f"{2 * gemms}NHV"


# ----------------------------------------------------------------------------- measuring


def loss_and_grads(fn, hidden, weight, labels, ref_logps, frozen):
    leaves = [hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_(not frozen)]
    loss = fn(leaves[0], leaves[1], labels, ref_logps)
    loss.backward()
    return loss.detach().double(), [t.grad.double() if t.grad is not None else None for t in leaves]


def relative_error(got, want):
    return ((got - want).abs().max() / want.abs().max().clamp(min=1e-30)).item()


def check_against_eager(impl, hidden, weight, labels, ref_logps):
    """(loss rel err, grad_hidden rel err, grad_weight rel err | None) against the eager computation of the
    same quantity in fp32 from the same inputs; gradient errors are max |Δ| / max |reference|."""
    loss, grads = loss_and_grads(impl.run, hidden, weight, labels, ref_logps, impl.frozen)
    want_loss, want_grads = loss_and_grads(impl.expected, hidden.float(), weight.float(), labels, ref_logps, impl.frozen)
    errors = [abs(loss.item() - want_loss.item()) / max(abs(want_loss.item()), 1e-6)]
    errors += [None if g is None else relative_error(g, w) for g, w in zip(grads, want_grads)]
    return errors


def time_step(fn, args, device, warmup, iters):
    """Median ms of forward + backward; the gradients of hidden and weight are dropped between steps."""
    hidden, weight = args[0], args[1]

    def step():
        hidden.grad = weight.grad = None
        fn(*args).backward()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_extra_gb(fn, args, device):
    """Peak memory during one step beyond what the inputs and the gradients of hidden (and weight) occupy."""
    if device.type != "cuda":
        return None
    hidden, weight = args[0], args[1]
    hidden.grad = weight.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn(*args).backward()
    torch.cuda.synchronize()
    grads = sum(t.numel() * t.element_size() for t in (hidden, weight) if t.requires_grad)
    hidden.grad = weight.grad = None
    return (torch.cuda.max_memory_allocated() - base - grads) / 2**30


def matmul_tflops(n, h, v, dtype, device):
    """The rate of a plain [N, H] x [H, V] matmul in `dtype`, timed here: the scale for % of matmul."""
    if device.type != "cuda":
        return None
    a, b = torch.randn(n, h, device=device, dtype=dtype), torch.randn(h, v, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * n * h * v / (start.elapsed_time(end) / 10) / 1e9


def tolerances(dtype):
    """(loss, gradient) relative errors a row may have against eager fp32 and still count as the same step."""
    return (1e-5, 1e-4) if dtype == torch.float32 else (1e-2, 5e-2)


def bench_shape(shape, names, dtype, device, warmup, iters, deadline):
    pairs, steps, hidden_size, vocab = shape
    n = 2 * pairs * steps
    rows = []
    loss_tol, grad_tol = tolerances(dtype)
    for name in names:
        impl = IMPLS[name]
        flops, basis = flop_count(impl, n, hidden_size, vocab)
        row = {"impl": name, "N": n, "H": hidden_size, "V": vocab, "flops": basis}
        if impl.gpu_only and device.type != "cuda":
            rows.append({**row, "status": "needs CUDA"})
            continue
        if time.monotonic() > deadline:
            rows.append({**row, "status": "skipped: time budget spent"})
            continue
        try:
            hidden, weight, labels, ref_logps = make_inputs(pairs, steps, hidden_size, vocab, dtype, device)
            loss_err, hidden_err, weight_err = check_against_eager(impl, hidden, weight, labels, ref_logps)
            hidden.requires_grad_()
            weight.requires_grad_(not impl.frozen)
            args = (hidden, weight, labels, ref_logps)
            ms = time_step(impl.run, args, device, warmup, iters)
            extra = peak_extra_gb(impl.run, args, device)
            same = loss_err <= loss_tol and hidden_err <= grad_tol and (weight_err is None or weight_err <= grad_tol)
            row.update(status="ok" if same else "MISMATCH with eager", ms=ms, tflops=flops / ms / 1e9, extra_gb=extra,
                       loss_rel_err=loss_err, grad_hidden_rel_err=hidden_err, grad_weight_rel_err=weight_err)
        except ImportError as e:
            row["status"] = f"not installed ({e.name})"
        except torch.cuda.OutOfMemoryError:
            row["status"] = "out of memory"
        except Exception as e:  # a peer failing on a shape is a result to report, not a reason to stop
            row["status"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}"
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
    base_ms = next((r["ms"] for r in rows if r["impl"] == BASELINE and "ms" in r), None)
    base_ms = base_ms or next((r["ms"] for r in rows if r["impl"] == "guard-chunked" and "ms" in r), None)
    for r in rows:
        if "ms" in r and base_ms:
            r["times_guard"] = r["ms"] / base_ms
    return rows


def format_table(rows, matmul_rates):
    lines = ["| impl | N | H | V | flops | ms | TFLOP/s | % of bf16 mm | extra GB | × guard's time | loss err | "
             "grad err (hidden, weight) | status |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "ms" not in r:
            lines.append(f"| {r['impl']} | {r['N']} | {r['H']} | {r['V']} | {r['flops']} | | | | | | | | {r['status']} |")
            continue
        mm = matmul_rates.get((r["N"], r["H"], r["V"]))
        pct = f"{100 * r['tflops'] / mm:.0f}%" if mm else "n/a"
        extra = f"{r['extra_gb']:.2f}" if r["extra_gb"] is not None else "n/a"
        ratio = f"{r['times_guard']:.2f}" if "times_guard" in r else "n/a"
        weight_err = f"{r['grad_weight_rel_err']:.1e}" if r["grad_weight_rel_err"] is not None else "frozen"
        lines.append(
            f"| {r['impl']} | {r['N']} | {r['H']} | {r['V']} | {r['flops']} | {r['ms']:.2f} | {r['tflops']:.1f} | {pct} | "
            f"{extra} | {ratio} | {r['loss_rel_err']:.1e} | {r['grad_hidden_rel_err']:.1e}, {weight_err} | {r['status']} |"
        )
    return "\n".join(lines)


def parse_shapes(text: str, steps: int) -> list[tuple[int, int, int, int]]:
    shapes = []
    for item in text.split(","):
        try:
            n, h, v = (int(x) for x in item.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"shape {item!r} is not NxHxV") from None
        if n <= 0 or h <= 0 or v <= 0 or n % (2 * steps):
            raise argparse.ArgumentTypeError(f"shape {item!r}: N must be a positive multiple of 2 x {steps} tokens per sequence")
        shapes.append((n // (2 * steps), steps, h, v))
    return shapes


def versions() -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"torch": torch.__version__, "triton": triton_version, "python": platform.python_version()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one small shape on the CPU (the default without CUDA)")
    parser.add_argument("--shapes", help="comma-separated NxHxV (N = 2 x pairs x --tokens-per-seq); default: the GPU grid")
    parser.add_argument("--tokens-per-seq", type=int, default=TOKENS_PER_SEQ)
    parser.add_argument("--impls", default=",".join(IMPLS), help="comma-separated subset of " + ",".join(IMPLS))
    parser.add_argument("--budget-s", type=float, default=None, help="start no new row after this many seconds")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="directory for the table")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--backend", choices=("auto", "triton", "torch"), default="auto",
                        help="guard's backend (triton on the CPU needs TRITON_INTERPRET=1: a check, not a timing)")
    parser.add_argument("--list", action="store_true", help="print the implementations and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, impl in IMPLS.items():
            print(f"{name:22s} {flop_count(impl, 1, 1, 1)[1]:5s} {'frozen head ' if impl.frozen else ''}"
                  f"{'(CUDA only)' if impl.gpu_only else ''}")
        return 0
    names = [i for i in args.impls.split(",") if i]
    unknown = set(names) - set(IMPLS)
    if unknown:
        parser.error(f"unknown impls {sorted(unknown)}; choose from {list(IMPLS)}")

    GUARD_BACKEND[0] = args.backend
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    smoke = args.smoke or device.type != "cuda"
    try:
        shapes = parse_shapes(args.shapes, args.tokens_per_seq) if args.shapes else GPU_SHAPES
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    shapes = [SMOKE_SHAPE] if smoke else shapes
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    start = time.monotonic()
    deadline = start + args.budget_s if args.budget_s is not None else float("inf")

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    now = datetime.datetime.now(datetime.timezone.utc)
    stamp = now.strftime("%Y-%m-%d")
    rows, rates = [], {}
    for shape in shapes:
        n = 2 * shape[0] * shape[1]
        rates[(n, shape[2], shape[3])] = matmul_tflops(n, shape[2], shape[3], dtype, device)
        rows += bench_shape(shape, names, dtype, device, warmup=1 if smoke else args.warmup, iters=2 if smoke else args.iters,
                            deadline=deadline)
    table = format_table(rows, rates)
    info = versions()
    header = (f"# fused DPO loss step, forward + backward\n\ndevice: {device_name}; date: {now.isoformat(timespec='seconds')}; "
              f"dtype: {str(dtype).split('.')[-1]}; torch {info['torch']}; triton {info['triton']}; python {info['python']}; "
              f"guard's backend: {args.backend}{' (the torch path without CUDA)' if args.backend == 'auto' and device.type != 'cuda' else ''}; "
              f"{args.iters if not smoke else 2} timed steps per row (median); took {time.monotonic() - start:.0f} s\n\n")
    print(header + table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = "cpu-smoke" if device.type != "cuda" else device_name.replace(" ", "-")
    (out / f"ops-{slug}-{stamp}.md").write_text(header + table + "\n")
    matmul = [{"N": k[0], "H": k[1], "V": k[2], "tflops": v} for k, v in rates.items()]
    record = {"device": device_name, "date": now.isoformat(timespec="seconds"), "dtype": str(dtype).split(".")[-1],
              "guard_backend": args.backend, "versions": info, "rows": rows, "matmul": matmul}
    (out / f"ops-{slug}-{stamp}.json").write_text(json.dumps(record, indent=1))
    return 0 if any(r["impl"].startswith("guard") and r.get("status") == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
