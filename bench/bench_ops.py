"""Benchmark: a DPO loss step (forward + backward to hidden and LM-head weight) straight from hidden states,
guard's fused op against the tools people use, in one process, as ratios.

    python bench/bench_ops.py                 # on a GPU: the full grid of shapes, bf16
    python bench/bench_ops.py --smoke         # one small shape (what CI runs on the CPU)
    python bench/bench_ops.py --out DIR       # where the table goes (default bench/results/)

Implementations (each computes the same loss from hidden [2B, T, H], weight [V, H], labels [2B, T] and
cached reference log-probs, and is checked against plain PyTorch before it is timed):
  guard        guard.ops.fused_preference_loss
  torch        materialised logits + log_softmax + gather (what a plain DPO trainer does)
  compile      torch.compile of the torch version
  liger        Liger-Kernel's LigerFusedLinearDPOLoss (reference-free mode: the reference is cached)
  trl          TRL's chunked log-prob head (trl.kernels.ChunkedLogProbFunction) + the DPO loss in torch
  cce          Apple's cut-cross-entropy linear_cross_entropy (per-token NLL) + the DPO loss in torch
Per row: ms (median of CUDA-event timings), TFLOP/s counting 8·N·H·V for forward + backward with
recompute, the bf16 matmul rate measured in the same run for scale, and peak device memory beyond
inputs and gradients. Results go to DIR/ops-<device>-<date>.md and .json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from guard import ops

BETA = 0.1
GPU_SHAPES = [  # (pairs B, tokens T per sequence, H, V): N = 2·B·T tokens
    (2, 1024, 2048, 32000),
    (2, 1024, 4096, 128256),
    (8, 1024, 2048, 32000),
    (8, 1024, 4096, 128256),
    (2, 1024, 4096, 32000),
    (8, 1024, 2048, 128256),
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


def run_guard(hidden, weight, labels, ref_logps):
    return ops.fused_preference_loss(hidden, weight, labels, ref_logps, loss_type="sigmoid", beta=BETA).loss


def run_torch(hidden, weight, labels, ref_logps):
    logits = (hidden @ weight.T).float()
    logp = logits.log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    return dpo_from_sequence_logps(masked_sum(logp, labels), ref_logps)


_compiled_torch = None


def run_compile(hidden, weight, labels, ref_logps):
    global _compiled_torch
    if _compiled_torch is None:
        _compiled_torch = torch.compile(run_torch)
    return _compiled_torch(hidden, weight, labels, ref_logps)


_liger = None


def run_liger(hidden, weight, labels, ref_logps):
    global _liger
    if _liger is None:
        from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss

        _liger = LigerFusedLinearDPOLoss(beta=BETA, use_ref_model=False)
    # Liger's reference-free mode has no slot for cached reference log-probs; subtracting them is a constant
    # shift of the margin that changes no cost, so its loss is checked against the reference-free value.
    out = _liger(weight, hidden, labels)
    return out[0] if isinstance(out, tuple) else out


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


IMPLS = {"guard": run_guard, "torch": run_torch, "compile": run_compile, "liger": run_liger, "trl": run_trl, "cce": run_cce}
GPU_ONLY = {"liger", "trl", "cce", "compile"}  # their fast paths need CUDA (compile: CPU inductor is not the peer)


def expected_loss(name, hidden, weight, labels, ref_logps):
    if name == "liger":  # reference-free: no cached reference in its API
        return run_torch(hidden, weight, labels, torch.zeros_like(ref_logps))
    return run_torch(hidden, weight, labels, ref_logps)


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
    """Peak memory during one step beyond what inputs and the gradients of hidden and weight occupy."""
    if device.type != "cuda":
        return None
    hidden, weight = args[0], args[1]
    hidden.grad = weight.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn(*args).backward()
    torch.cuda.synchronize()
    grads = hidden.numel() * hidden.element_size() + weight.numel() * weight.element_size()
    return (torch.cuda.max_memory_allocated() - base - grads) / 2**30


def matmul_tflops(n, h, v, dtype, device):
    if device.type != "cuda":
        return None
    a, b = torch.randn(n, h, device=device, dtype=dtype), torch.randn(h, v, device=device, dtype=dtype)
    ms = time_step_plain(lambda: a @ b, device)
    return 2 * n * h * v / ms / 1e9


def time_step_plain(fn, device, iters=10):
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def bench_shape(shape, impls, dtype, device, warmup, iters):
    pairs, steps, hidden_size, vocab = shape
    n = 2 * pairs * steps
    flops = 8 * n * hidden_size * vocab
    rows = []
    for name in impls:
        row = {"impl": name, "N": n, "H": hidden_size, "V": vocab}
        if name in GPU_ONLY and device.type != "cuda":
            rows.append({**row, "status": "needs CUDA"})
            continue
        try:
            hidden, weight, labels, ref_logps = make_inputs(pairs, steps, hidden_size, vocab, dtype, device)
            hidden.requires_grad_()
            weight.requires_grad_()
            args = (hidden, weight, labels, ref_logps)
            with torch.no_grad():
                got = IMPLS[name](*args).item()
                want = expected_loss(name, *args).item()
            rel_err = abs(got - want) / max(abs(want), 1e-6)
            ms = time_step(IMPLS[name], args, device, warmup, iters)
            extra = peak_extra_gb(IMPLS[name], args, device)
            row.update(status="ok", ms=ms, tflops=flops / ms / 1e9, extra_gb=extra, loss_rel_err=rel_err)
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
    guard_ms = next((r["ms"] for r in rows if r["impl"] == "guard" and r.get("status") == "ok"), None)
    for r in rows:
        if r.get("status") == "ok" and guard_ms:
            r["speedup_of_guard"] = r["ms"] / guard_ms
    return rows


def format_table(rows, matmul_rates):
    lines = ["| impl | N | H | V | ms | TFLOP/s | % of bf16 mm | extra GB | guard is × faster | loss rel err | status |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"| {r['impl']} | {r['N']} | {r['H']} | {r['V']} | | | | | | | {r['status']} |")
            continue
        mm = matmul_rates.get((r["N"], r["H"], r["V"]))
        pct = f"{100 * r['tflops'] / mm:.0f}%" if mm else "n/a"
        extra = f"{r['extra_gb']:.2f}" if r["extra_gb"] is not None else "n/a"
        lines.append(
            f"| {r['impl']} | {r['N']} | {r['H']} | {r['V']} | {r['ms']:.2f} | {r['tflops']:.1f} | {pct} | {extra} | "
            f"{r['speedup_of_guard']:.2f} | {r['loss_rel_err']:.1e} | ok |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one small shape (the CPU default)")
    parser.add_argument("--impls", default=",".join(IMPLS), help="comma-separated subset of " + ",".join(IMPLS))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="directory for the table")
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    smoke = args.smoke or device.type != "cuda"
    shapes = [SMOKE_SHAPE] if smoke else GPU_SHAPES
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    impls = [i for i in args.impls.split(",") if i]
    unknown = set(impls) - set(IMPLS)
    if unknown:
        parser.error(f"unknown impls {sorted(unknown)}; choose from {list(IMPLS)}")

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    rows, rates = [], {}
    for shape in shapes:
        n = 2 * shape[0] * shape[1]
        rates[(n, shape[2], shape[3])] = matmul_tflops(n, shape[2], shape[3], dtype, device)
        rows += bench_shape(shape, impls, dtype, device, warmup=1 if smoke else 3, iters=2 if smoke else args.iters)
    table = format_table(rows, rates)
    header = (f"# fused DPO loss step, forward + backward\n\ndevice: {device_name}; date: {stamp}; dtype: {str(dtype).split('.')[-1]}; "
              f"torch {torch.__version__}\n\n")
    print(header + table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = "cpu-smoke" if device.type != "cuda" else torch.cuda.get_device_name(device).replace(" ", "-")
    (out / f"ops-{slug}-{stamp}.md").write_text(header + table + "\n")
    matmul = [{"N": k[0], "H": k[1], "V": k[2], "tflops": v} for k, v in rates.items()]
    (out / f"ops-{slug}-{stamp}.json").write_text(json.dumps({"device": device_name, "date": stamp, "rows": rows, "matmul": matmul}, indent=1))
    return 0 if any(r["impl"] == "guard" and r.get("status") == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
