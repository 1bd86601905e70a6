"""What the `python -m guard.eval` subcommands share: the output options, the session (output directory,
device, torchrun), scoring preference pairs with a reward model, answering prompts with a policy, and the
end of every subcommand (results.json, report.md, the compact table on stdout).

An evaluation is a pure function of its inputs and --seed: run it again and it writes the same numbers.
It refuses an --output-dir that already holds results unless --overwrite is given; generated responses are
kept in OUT/responses-*.jsonl and reused by --resume, so an interrupted parity or diversity evaluation
does not generate twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from guard import jsonfiles
from guard.config import ConfigError, option
from guard.report import Report, format_table
from guard.train import inputs, options


@dataclass
class EvalOptions:
    """The options every subcommand shares; a subcommand's config subclasses it."""

    output_dir: str = option("", "where results.json, report.md and the plots are written")
    seed: int = option(0, "seed of everything random: generation, the audit's folds, permutations, bootstrap",
                       domain=">= 0")
    batch_size: int = option(64, "sequences (pairs, prompts) per forward pass or generate call on each process",
                             domain=">= 1")
    device: str = option("auto", "cuda, cpu, or auto (cuda when available)")
    bf16: bool = option(True, "bf16 autocast on GPU (CPU runs stay in float32)")
    trust_remote_code: bool = option(False, "allow model code from the hub (off: safe by default)")
    overwrite: bool = option(False, "replace the results already in --output-dir")
    resume: bool = option(False, "reuse the responses an interrupted run already generated in --output-dir")


def parse_config(cls: type, argv: list[str] | None, prog: str, doc: str):
    return options.parse_config(cls, argv, prog, doc.split("\n\n")[0])


@contextlib.contextmanager
def session(cfg: EvalOptions):
    """Check the output directory, join the torchrun process group (or not), write config.yaml; yields
    (dist, output directory, autocast) and leaves the process group at the end."""
    from guard import distributed
    from guard.config import save_config

    if not cfg.output_dir:
        raise ConfigError("--output-dir is required")
    if cfg.batch_size < 1:
        raise ConfigError(f"--batch-size must be positive, got {cfg.batch_size}")
    out = Path(cfg.output_dir)
    if (out / "results.json").exists() and not (cfg.overwrite or cfg.resume):
        raise ConfigError(f"{out} already holds results; pass --overwrite to replace them")
    dist = distributed.init_distributed(cfg.device)
    finished = False
    try:
        if dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, out / "config.yaml")
        distributed.barrier(dist)
        yield dist, out, dist.device.type == "cuda" and cfg.bf16
        finished = True
    finally:
        distributed.shutdown(dist, wait=finished)


def finish(out: Path, dist, results: dict, report: Report, table: Sequence[dict]) -> None:
    """results.json and report.md in `out`, and the compact table on stdout (main process)."""
    if not dist.is_main:
        return
    jsonfiles.write_json(out / "results.json", results)
    report.write(out / "report.md")
    print(format_table(list(table)))
    print(f"results: {out / 'results.json'}")
    print(f"report:  {out / 'report.md'}")


def label_of(path: str) -> str:
    """A short name for a model in tables: its directory name, or the run's, for a run's OUTPUT_DIR/model or
    OUTPUT_DIR/rewards.jsonl."""
    p = Path(path)
    name = p.parent.name if (p.name == "model" or p.suffix) and p.parent.name else p.name
    return name or str(path)


def distinct_labels(paths: Sequence[str], roles: Sequence[str]) -> list[str]:
    """Table labels for the models compared: their short names, or their roles when two names collide."""
    labels = [label_of(p) for p in paths]
    return labels if len(set(labels)) == len(labels) else list(roles)


# ----------------------------------------------------------------------------------------------------
# Reward models on pairs


def load_reward_model(path: str, cfg: EvalOptions, dist, autocast: bool, tokenizers=None):
    """(model, hf tokenizer, guard tokenizer, EOS id to append) of a sequence-classification reward model
    directory (the rm recipe's OUTPUT_DIR/model) or hub name; sharded with FSDP2 under torchrun.
    `tokenizers`: what train.inputs.model_tokenizer(path, None) gave, when the caller has them already."""
    from guard import distributed, models

    hf_tok, tok, eos = tokenizers or inputs.model_tokenizer(path, None)
    model = models.load_reward_model(path, vocab_size=len(hf_tok), pad_token_id=hf_tok.pad_token_id,
                                     device=dist.device, trust_remote_code=cfg.trust_remote_code)
    model = distributed.shard_model(model.eval().requires_grad_(False), dist,
                                    param_dtype=torch.bfloat16 if autocast else None)
    return model, hf_tok, tok, eos


def score_preferences(path: str, pairs, cmap, cfg: EvalOptions, dist, autocast: bool, *, max_length: int,
                      max_prompt_length: int | None = None, what: str = "data", tokenizers=None):
    """The reward model at `path` on a PreferenceSet: (PairData as tokenized for it, chosen, rejected float64).
    Duplicates and pairs its tokenizer cannot encode are set aside and counted (PairData.set_aside)."""
    from guard.train import rm

    model, hf_tok, tok, eos = load_reward_model(path, cfg, dist, autocast, tokenizers)
    data = inputs.tokenize_pairs(pairs, tok, cmap, max_length=max_length, max_prompt_length=max_prompt_length,
                                 eos_token_id=eos, what=what)
    chosen, rejected = rm.score_pairs(model, data, cfg.batch_size, hf_tok.pad_token_id, dist, autocast)
    return data, chosen, rejected


# ----------------------------------------------------------------------------------------------------
# Policies on prompts


@dataclass
class Answers:
    """One policy's responses to the evaluated prompts: rows[k] is the prompt's position in the prompt set."""

    rows: np.ndarray
    responses: list[str]  # decoded without special tokens
    ended: list[bool]
    tokens: list[int]  # the response's length in tokens (the stop token included)
    scores: np.ndarray | None
    set_aside: dict[str, int]

    def to_rows(self) -> list[dict]:
        scores = self.scores if self.scores is not None else [None] * len(self.rows)
        return [{"row": int(r), "response": text, "ended": e, "tokens": n, "score": None if s is None else float(s)}
                for r, text, e, n, s in zip(self.rows, self.responses, self.ended, self.tokens, scores)]

    def select(self, index: np.ndarray) -> Answers:
        return Answers(self.rows[index], [self.responses[k] for k in index], [self.ended[k] for k in index],
                       [self.tokens[k] for k in index], None if self.scores is None else self.scores[index],
                       self.set_aside)


def sample_prompts(prompts, cmap, *, num_prompts: int | None, per_category: int | None, seed: int) -> np.ndarray:
    """Positions of the prompts to evaluate, in order: all, or a fixed-seed sample of `num_prompts`, or of
    `per_category` from each category (GUARD B.1: 100 helpful + 100 harmless)."""
    n = len(prompts)
    rng = np.random.default_rng([seed, 0x5A3D])
    if per_category is not None:
        ids = inputs.categories_of(prompts, cmap, "prompts")
        chosen = []
        for c, name in enumerate(cmap.names):
            members = np.flatnonzero(ids == c)
            if len(members) < per_category:
                raise ConfigError(f"--per-category {per_category}: category {name!r} has only {len(members)} prompts")
            chosen.append(rng.choice(members, size=per_category, replace=False))
        return np.sort(np.concatenate(chosen))
    if num_prompts is not None:
        if num_prompts > n:
            raise ConfigError(f"--num-prompts {num_prompts} is more than the {n} prompts")
        return np.sort(rng.choice(n, size=num_prompts, replace=False))
    return np.arange(n)


def settings_fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def answer_prompts(policy: str, prompts, cmap, rows: np.ndarray, settings_kwargs: dict, cfg, dist, autocast: bool,
                   out: Path, role: str, *, scorer_path: str | None = None, max_prompt_length: int | None = None
                   ) -> Answers:
    """The policy at `policy` (a causal LM directory, e.g. a recipe's OUTPUT_DIR/model, or a hub name) answers
    the prompts at `rows` with `settings_kwargs` (GenerationSettings without stop tokens: the policy's EOS)
    and --seed; the reward model at `scorer_path`, if any, scores the answers. Written to
    OUT/responses-{role}.jsonl, which --resume reuses when it was made with the same settings."""
    from guard import distributed, models
    from guard.rollout import GenerationSettings, RewardScorer, answer

    path = out / f"responses-{role}.jsonl"
    fingerprint = settings_fingerprint(policy, scorer_path, settings_kwargs, cfg.seed, rows.tolist(),
                                       max_prompt_length)
    if cfg.resume and path.exists():
        saved = jsonfiles.read_jsonl(path)
        if saved and saved[0].get("fingerprint") == fingerprint:
            head, body = saved[0], saved[1:]
            scores = None if scorer_path is None else np.asarray([r["score"] for r in body], dtype=np.float64)
            return Answers(np.asarray([r["row"] for r in body], dtype=np.int64), [r["response"] for r in body],
                           [r["ended"] for r in body], [r["tokens"] for r in body], scores, head["set_aside"])

    hf_tok, tok, _ = inputs.model_tokenizer(policy, None)
    encoded = inputs.tokenize_prompts(prompts.select(rows), tok, cmap, max_prompt_length, f"prompts for {policy}")
    if hf_tok.eos_token_id is None:
        raise ConfigError(f"the tokenizer of {policy} has no EOS token to end responses with")
    settings = GenerationSettings(stop_token_ids=(hf_tok.eos_token_id,), **settings_kwargs)
    model = models.load_causal_lm(policy, vocab_size=len(hf_tok), pad_token_id=hf_tok.pad_token_id,
                                  device=dist.device, trust_remote_code=cfg.trust_remote_code)
    model = distributed.shard_model(model.eval().requires_grad_(False), dist,
                                    param_dtype=torch.bfloat16 if autocast else None)
    scorer = None
    if scorer_path is not None:
        scorer = RewardScorer.load(scorer_path, policy_tokenizer=hf_tok, device=dist.device, dist=dist,
                                   trust_remote_code=cfg.trust_remote_code, autocast=autocast)
    scores, samples = answer(model, encoded.ids, settings, pad_id=hf_tok.pad_token_id, dist=dist,
                             batch_size=cfg.batch_size, seed=cfg.seed, prompts=encoded.texts, scorer=scorer,
                             autocast=autocast, progress=f"{role} answers")
    eos = hf_tok.eos_token_id
    responses = [hf_tok.decode([t for t in s["response_ids"] if t != eos], skip_special_tokens=True) for s in samples]
    answers = Answers(rows[encoded.rows], responses, [s["ended"] for s in samples],
                      [len(s["response_ids"]) for s in samples], scores, encoded.set_aside)
    del model, scorer
    if dist.is_main:
        head = {"fingerprint": fingerprint, "policy": policy, "scorer": scorer_path, "set_aside": answers.set_aside}
        jsonfiles.write_jsonl(path, [head, *answers.to_rows()])
    return answers


def align(answers: Sequence[Answers]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The prompt positions every policy answered, and for each policy the indices of those answers (so the
    comparison is paired: prompt k of one is prompt k of the other)."""
    common_rows = answers[0].rows
    for a in answers[1:]:
        common_rows = np.intersect1d(common_rows, a.rows)
    index = [np.searchsorted(a.rows, common_rows) for a in answers]
    return common_rows, index
