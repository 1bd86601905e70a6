"""Benchmark: the preference-data pipeline (dedup, tokenize, pack), guard's Rust data layer against the
same pipeline in Python over the `tokenizers` package, in one run, as ratios.

    python bench/bench_data.py                            # 200k synthetic pairs, RAYON_NUM_THREADS 1 and 2
    python bench/bench_data.py --pairs 2000 --out DIR     # smaller; the table goes to DIR
    pytest bench/bench_data.py                            # pytest-benchmark functions on 5000 pairs

Data: synthetic pairs of English-like text (pseudo-words with Zipf frequencies, common English words,
punctuation, some newlines; prompts and responses of log-normal length) with 5% exact duplicates, and
a byte-level BPE tokenizer.json trained on them in a temporary directory (BOS-only template, like
Llama 3; the EOS is appended to responses, like TRL).

Pipeline, the same steps and results on both sides:
  1. dedup: first occurrence of each exact (prompt, chosen, rejected);
  2. tokenize as TRL's DPO: prompt with special tokens, responses without, + EOS; max_prompt_length
     512 (keep the end), max_length 1024 (cut the response);
  3. pack pairs (chosen + rejected tokens) by best-fit-decreasing into 16384-token batches.
guard:  guard.data.dedup + encode_pairs + pack (Rust, rayon, numpy out).
python: dict dedup, `tokenizers` Tokenizer.encode_batch x 3 (the package's Rust and its own thread
        pool), Python lists for the sequences, best-fit-decreasing with bisect.
Both must keep the same rows, produce identical ids and the same batches; the run fails otherwise.

Each thread count runs in a fresh subprocess with RAYON_NUM_THREADS set: rayon's pool is global to a
process, and the `tokenizers` package sizes its pool from the same variable, so both pipelines get the
same cores. Tokens/s counts the tokens tokenized (prompt + chosen + rejected, each once, after dedup);
the results table (DIR/data-cpu-<date>.md and .json) also gives the sequence tokens produced.
"""

from __future__ import annotations

import argparse
import bisect
import datetime
import itertools
import json
import os
import pickle
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MAX_LENGTH = 1024
MAX_PROMPT_LENGTH = 512
MAX_TOKENS = 16384
DUPLICATE_SHARE = 0.05
COMMON = (
    "the of and to a in is that it for you was with on as have be at by this are or not from but what all "
    "were when we there can an your which their said if do will each about how up out them then she many "
    "some so these would other into has more her two like him see time could no make than first been its "
    "who now people my made over did down only way find use may water long little very after words called "
    "just where most know get through back much before go good new write our used me man too any day same"
).split()


# --- data ------------------------------------------------------------------------------------------------

def make_vocabulary(rng: np.random.Generator, size: int = 8000) -> tuple[list[str], np.ndarray]:
    """Pseudo-words from syllables plus common English words, with variants carrying punctuation, and
    Zipf-like probabilities."""
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["th", "st", "ng", "er", "on", "al", "in"]
    words = {"".join(rng.choice(syllables, size=rng.integers(1, 5))) for _ in range(size)}
    base = COMMON + sorted(words - set(COMMON))
    weights = 1.0 / np.arange(1, len(base) + 1) ** 1.05
    vocab, probs = [], []
    for suffix, share in (("", 0.86), (",", 0.06), (".", 0.05), ("?", 0.01), (":", 0.01), ("\n", 0.01)):
        vocab += [w + suffix for w in base]
        probs.append(weights * share)
    probs = np.concatenate(probs)
    return vocab, probs / probs.sum()


def make_pairs(n: int, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """n synthetic preference pairs: prompts ~40 words, responses ~70 words (log-normal), 5% duplicates."""
    rng = np.random.default_rng(seed)
    vocab, probs = make_vocabulary(rng)
    lengths = np.concatenate([
        np.clip(rng.lognormal(np.log(40), 0.7, n), 3, 600),
        np.clip(rng.lognormal(np.log(70), 0.8, 2 * n), 1, 900),
    ]).astype(np.int64)
    words = np.asarray(vocab, dtype=object)[rng.choice(len(vocab), size=int(lengths.sum()), p=probs)].tolist()
    texts, at = [], 0
    for length in lengths.tolist():
        texts.append(" ".join(words[at : at + length]).capitalize())
        at += length
    prompts, chosen, rejected = texts[:n], texts[n : 2 * n], texts[2 * n :]
    # Exact duplicates of earlier pairs, scattered through the set.
    for i in rng.choice(np.arange(1, n), size=int(DUPLICATE_SHARE * n), replace=False) if n > 1 else []:
        j = int(rng.integers(0, i))
        prompts[i], chosen[i], rejected[i] = prompts[j], chosen[j], rejected[j]
    return prompts, chosen, rejected


def train_tokenizer(path: Path, texts: list[str], vocab_size: int = 16384) -> None:
    """A byte-level BPE tokenizer.json with <s> (BOS, added by the template), </s> (EOS) and <pad>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    tok.save(str(path))


# --- the two pipelines -----------------------------------------------------------------------------------

def guard_pipeline(tok, prompts, chosen, rejected, eos_id):
    """guard.data: Rust dedup, encode_pairs and pack. Returns (kept input rows, pairs, batches)."""
    import guard.data as gd

    # dedup keys on (prompt, response): the two responses go in as one field, NUL-separated.
    keep = gd.dedup(prompts, [c + "\0" + r for c, r in zip(chosen, rejected)]).tolist()
    pairs = gd.encode_pairs(
        tok, [prompts[i] for i in keep], [chosen[i] for i in keep], [rejected[i] for i in keep],
        max_length=MAX_LENGTH, max_prompt_length=MAX_PROMPT_LENGTH, eos_token_id=eos_id, errors="skip",
    )
    kept = np.asarray(keep, dtype=np.int64)[pairs.kept]
    batches = gd.pack(pairs.lengths, MAX_TOKENS)
    return kept, pairs, batches


def python_bfd(costs: list[int], budget: int) -> list[list[int]]:
    """Best-fit-decreasing in plain Python (largest first, ties by index; tightest batch, ties by age)."""
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    room: list[tuple[int, int]] = []
    batches: list[list[int]] = []
    for i in order:
        cost = costs[i]
        k = bisect.bisect_left(room, (cost, -1))
        if k < len(room):
            left, b = room.pop(k)
            bisect.insort(room, (left - cost, b))
            batches[b].append(i)
        else:
            bisect.insort(room, (budget - cost, len(batches)))
            batches.append([i])
    return sorted((sorted(b) for b in batches), key=lambda b: b[0])


def python_pipeline(hf, prompts, chosen, rejected, eos_id):
    """The same pipeline over the `tokenizers` package. Returns (kept rows, chosen seqs, rejected seqs,
    prompt lengths, batches, tokens tokenized)."""
    seen: dict = {}
    keep = [i for i, key in enumerate(zip(prompts, chosen, rejected)) if seen.setdefault(key, i) == i]
    p_enc = hf.encode_batch([prompts[i] for i in keep])
    c_enc = hf.encode_batch([chosen[i] for i in keep], add_special_tokens=False)
    r_enc = hf.encode_batch([rejected[i] for i in keep], add_special_tokens=False)
    kept, chosen_seqs, rejected_seqs, prompt_lengths, tokens = [], [], [], [], 0
    for row, p, c, r in zip(keep, p_enc, c_enc, r_enc):
        p, c, r = p.ids, c.ids, r.ids
        if not c or not r:
            continue
        tokens += len(p) + len(c) + len(r)
        p = p[-MAX_PROMPT_LENGTH:]
        if len(p) >= MAX_LENGTH:
            continue
        room = MAX_LENGTH - len(p)
        chosen_seqs.append(p + (c + [eos_id])[:room])
        rejected_seqs.append(p + (r + [eos_id])[:room])
        prompt_lengths.append(len(p))
        kept.append(row)
    batches = python_bfd([len(a) + len(b) for a, b in zip(chosen_seqs, rejected_seqs)], MAX_TOKENS)
    return kept, chosen_seqs, rejected_seqs, prompt_lengths, batches, tokens


def flat(seqs: list[list[int]]) -> np.ndarray:
    return np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int32)


def run_both(data_path: Path, tokenizer_path: Path, warmup: int = 2000) -> dict:
    """Time both pipelines on the pickled pairs (after a short warm-up of each) and check they agree."""
    from tokenizers import Tokenizer as HFTokenizer

    import guard.data as gd

    prompts, chosen, rejected = pickle.loads(data_path.read_bytes())
    tok = gd.Tokenizer.from_file(tokenizer_path)
    hf = HFTokenizer.from_file(str(tokenizer_path))
    eos_id = tok.token_to_id("</s>")
    small = (prompts[:warmup], chosen[:warmup], rejected[:warmup])
    guard_pipeline(tok, *small, eos_id)
    python_pipeline(hf, *small, eos_id)

    start = time.perf_counter()
    kept, pairs, batches = guard_pipeline(tok, prompts, chosen, rejected, eos_id)
    guard_s = time.perf_counter() - start
    start = time.perf_counter()
    py_kept, py_chosen, py_rejected, py_prompt_lengths, py_batches, tokens = python_pipeline(hf, prompts, chosen, rejected, eos_id)
    python_s = time.perf_counter() - start

    checks = {
        "same kept rows": kept.tolist() == py_kept,
        "same chosen ids": np.array_equal(pairs.chosen.ids, flat(py_chosen)) and pairs.chosen.lengths.tolist() == [len(s) for s in py_chosen],
        "same rejected ids": np.array_equal(pairs.rejected.ids, flat(py_rejected)) and pairs.rejected.lengths.tolist() == [len(s) for s in py_rejected],
        "same prompt lengths": pairs.chosen_prompt_lengths.tolist() == py_prompt_lengths,
        "same batches": [b.tolist() for b in batches] == py_batches,
    }
    sequence_tokens = int(pairs.chosen.offsets[-1] + pairs.rejected.offsets[-1])
    grouped = gd.group_by_length(pairs.lengths, MAX_TOKENS)
    return {
        "threads": int(os.environ.get("RAYON_NUM_THREADS", "0")) or os.cpu_count(),
        "pairs": len(prompts),
        "kept": len(kept),
        "batches": len(batches),
        "py_batches": len(py_batches),
        "tokens": tokens,
        "sequence_tokens": sequence_tokens,
        "guard_s": guard_s,
        "python_s": python_s,
        "efficiency": gd.padding_efficiency(pairs.lengths, batches, MAX_TOKENS),
        "grouped_batches": len(grouped),
        "grouped_efficiency": gd.padding_efficiency(pairs.lengths, grouped, MAX_TOKENS),
        "checks": checks,
        "kept_rows": kept.tolist(),
    }


# --- the report ------------------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def format_table(rows: list[dict]) -> str:
    lines = [
        "| RAYON_NUM_THREADS | pipeline | seconds | M tokens/s | M tokens/s per thread | guard is × faster |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        for name, key in (("guard", "guard_s"), ("python + tokenizers", "python_s")):
            rate = r["tokens"] / r[key] / 1e6
            ratio = f"{r['python_s'] / r['guard_s']:.2f}" if name == "guard" else ""
            lines.append(f"| {r['threads']} | {name} | {r[key]:.2f} | {rate:.2f} | {rate / r['threads']:.2f} | {ratio} |")
    return "\n".join(lines)


def prepare(pairs: int, workdir: Path) -> tuple[Path, Path]:
    """Generate the pairs (pickled for the workers) and train the tokenizer on a sample of them."""
    prompts, chosen, rejected = make_pairs(pairs)
    data_path = workdir / "pairs.pkl"
    data_path.write_bytes(pickle.dumps((prompts, chosen, rejected), protocol=pickle.HIGHEST_PROTOCOL))
    sample = (prompts + chosen + rejected)[: 3 * min(pairs, 20_000)]
    tokenizer_path = workdir / "tokenizer.json"
    train_tokenizer(tokenizer_path, sample)
    return data_path, tokenizer_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200_000, help="synthetic preference pairs (default 200000)")
    parser.add_argument("--threads", default="1,2", help="RAYON_NUM_THREADS values, one subprocess each")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="directory for the table")
    parser.add_argument("--worker", nargs=3, metavar=("PAIRS_PKL", "TOKENIZER_JSON", "RESULT_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        data_path, tokenizer_path, result_path = map(Path, args.worker)
        result_path.write_text(json.dumps(run_both(data_path, tokenizer_path)))
        return 0

    threads = [int(t) for t in args.threads.split(",") if t]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        workdir = Path(tmp)
        start = time.perf_counter()
        data_path, tokenizer_path = prepare(args.pairs, workdir)
        print(f"{args.pairs} pairs generated and tokenizer trained in {time.perf_counter() - start:.1f}s", flush=True)
        for t in threads:
            result_path = workdir / f"result-{t}.json"
            env = {**os.environ, "RAYON_NUM_THREADS": str(t), "TOKENIZERS_PARALLELISM": "true"}
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", str(data_path), str(tokenizer_path), str(result_path)], env=env,
            )
            if proc.returncode != 0:
                print(f"worker with RAYON_NUM_THREADS={t} failed", file=sys.stderr)
                return 1
            row = json.loads(result_path.read_text())
            row["threads"] = t
            rows.append(row)
            print(f"RAYON_NUM_THREADS={t}: guard {row['guard_s']:.2f}s, python {row['python_s']:.2f}s, "
                  f"ratio {row['python_s'] / row['guard_s']:.2f}, checks {row['checks']}", flush=True)

    failed = [f"{name} (threads={r['threads']})" for r in rows for name, ok in r["checks"].items() if not ok]
    first = rows[0]
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    device = f"{cpu_model()}, {os.cpu_count()} logical CPUs"
    per_core = [r["tokens"] / r["guard_s"] / r["threads"] / 1e6 for r in rows]
    ratios = [r["python_s"] / r["guard_s"] for r in rows]
    eff = first["efficiency"]
    header = (
        "# preference-data pipeline: dedup + tokenize + pack\n\n"
        f"device: {device}; date: {stamp}; python {platform.python_version()}\n\n"
        f"{first['pairs']} synthetic pairs, {first['kept']} kept after dedup; {first['tokens']:,} tokens tokenized "
        f"(prompt + chosen + rejected), {first['sequence_tokens']:,} sequence tokens out; byte-level BPE; "
        f"max_length {MAX_LENGTH}, max_prompt_length {MAX_PROMPT_LENGTH}. pack: {first['batches']} batches of {MAX_TOKENS} tokens, "
        f"budget fill {eff['budget_fill']:.4f}; real tokens per slot: packed rows {eff['packed']:.4f}, "
        f"padded {eff['padded']:.4f} if those batches were padded; group_by_length (not timed): "
        f"{first['grouped_batches']} padded batches, real tokens per slot {first['grouped_efficiency']['padded']:.4f}.\n\n"
    )
    summary = (
        f"\n\nguard vs python: {', '.join(f'{x:.2f}x' for x in ratios)} (threads {', '.join(str(r['threads']) for r in rows)}; "
        f"goal >= 1.5x); guard M tokens/s per thread: {', '.join(f'{x:.2f}' for x in per_core)} (goal >= 0.8). "
        f"Outputs identical (kept rows, ids, prompt lengths, batches): {'yes' if not failed else 'NO: ' + ', '.join(failed)}.\n"
    )
    table = format_table(rows)
    print(header + table + summary)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"data-cpu-{stamp}.md").write_text(header + table + summary)
    for r in rows:
        r.pop("kept_rows", None)
    (out / f"data-cpu-{stamp}.json").write_text(json.dumps({"device": device, "date": stamp, "rows": rows}, indent=1))
    return 1 if failed else 0


# --- pytest-benchmark ------------------------------------------------------------------------------------

BENCH_PAIRS = 5000


def _bench_setup(tmp_path_factory):
    import guard.data as gd
    from tokenizers import Tokenizer as HFTokenizer

    data_path, tokenizer_path = prepare(BENCH_PAIRS, tmp_path_factory.mktemp("bench_data"))
    prompts, chosen, rejected = pickle.loads(data_path.read_bytes())
    tok = gd.Tokenizer.from_file(tokenizer_path)
    return tok, HFTokenizer.from_file(str(tokenizer_path)), (prompts, chosen, rejected), tok.token_to_id("</s>")


def test_bench_guard_pipeline(benchmark, tmp_path_factory):
    tok, _, data, eos = _bench_setup(tmp_path_factory)
    kept, pairs, batches = benchmark(guard_pipeline, tok, *data, eos)
    assert len(kept) > 0.9 * BENCH_PAIRS and sum(map(len, batches)) == len(kept)


def test_bench_python_pipeline(benchmark, tmp_path_factory):
    _, hf, data, eos = _bench_setup(tmp_path_factory)
    kept, *_, batches, tokens = benchmark(python_pipeline, hf, *data, eos)
    assert len(kept) > 0.9 * BENCH_PAIRS and sum(map(len, batches)) == len(kept)


if __name__ == "__main__":
    sys.exit(main())
