"""Rollouts: sample responses to tokenized prompts with a causal LM, cut each at its stop token, lay the
prompt + response sequences out right-padded, and score them with a reward model. Used by the PPO recipe
(guard/train/ppo.py) and by evaluation that generates (parity, diversity).

    settings = GenerationSettings(max_new_tokens=256, temperature=0.7, top_p=0.9, stop_token_ids=(eos,))
    rollout = generate(policy, prompt_ids, settings, pad_id=tok.pad_token_id)   # prompt_ids: list of int arrays
    scorer = RewardScorer.load("runs/rm/model", policy_tokenizer=hf_tok, device="cuda")
    scores = scorer.score(rollout)                                               # [B] float32
    scores, samples = answer(policy, prompt_ids, settings, pad_id=pad, dist=dist, batch_size=64, seed=0,
                             scorer=scorer)  # every prompt once, over the ranks, with a fixed seed

Sampling is `model.generate` with temperature, top-p and no top-k (top_k=0: transformers' default of 50
would cut the distribution further than asked); the pad token is never sampled (unless it is a stop token),
so it only ever marks padding, which is where reward models look for a sequence's end. A response ends at the first of `stop_token_ids` (kept as
its last token, `ended` is true) or after `max_new_tokens` (`ended` false: the recipe penalizes those).
Under torchrun every rank must run the same number of forwards (FSDP2 gathers parameters in each), so
generation then runs with `synced_gpus`: a rank whose rows are done keeps stepping until every rank is.

Reward models see what the reward-model recipe trained them on: prompt ids + response ids, the stop token
included. When the reward model's tokenizer is the policy's, the token ids are scored as they are;
otherwise the prompt text and the decoded response are tokenized with the reward model's tokenizer (its
EOS appended to responses that ended, as guard.data.encode_pairs does).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from guard import data as gdata


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.stop_token_ids:
            raise ValueError("stop_token_ids is empty: give the token(s) a response ends with (usually EOS)")


@dataclass
class Rollout:
    """B prompt + response sequences, right-padded: row b is input_ids[b, :prompt_lengths[b] +
    response_lengths[b]]. `ended[b]`: the response stops with a stop token (its last token)."""

    input_ids: torch.Tensor  # [B, L] long
    attention_mask: torch.Tensor  # [B, L] long
    prompt_lengths: torch.Tensor  # [B] long
    response_lengths: torch.Tensor  # [B] long, >= 1
    ended: torch.Tensor  # [B] bool
    prompts: list[str] | None = None  # the prompt texts, when the caller gave them (scoring across tokenizers)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def response_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(positions [B, R], mask [B, R]): the position in input_ids of each row's t-th response token
        (clamped to the row's last token where the response is shorter than R) and whether it exists."""
        steps = torch.arange(int(self.response_lengths.max()), device=self.input_ids.device)
        mask = steps[None, :] < self.response_lengths[:, None]
        last = self.prompt_lengths + self.response_lengths - 1
        positions = torch.minimum(self.prompt_lengths[:, None] + steps[None, :], last[:, None])
        return positions, mask

    def responses(self) -> list[list[int]]:
        """Each row's response token ids (the stop token included when it ended)."""
        return [self.input_ids[b, p:p + n].tolist() for b, (p, n) in
                enumerate(zip(self.prompt_lengths.tolist(), self.response_lengths.tolist()))]

    def select(self, rows: torch.Tensor | np.ndarray | Sequence[int]) -> Rollout:
        """The rollouts at `rows`, with the padding trimmed to the longest of them."""
        rows = torch.as_tensor(rows, device=self.input_ids.device)
        if rows.dtype == torch.bool:
            rows = rows.nonzero().squeeze(1)
        rows = rows.long()
        total = int((self.prompt_lengths[rows] + self.response_lengths[rows]).max())
        return Rollout(self.input_ids[rows, :total], self.attention_mask[rows, :total], self.prompt_lengths[rows],
                       self.response_lengths[rows], self.ended[rows],
                       None if self.prompts is None else [self.prompts[int(r)] for r in rows])


def concat_rollouts(parts: Sequence[Rollout], pad_id: int) -> Rollout:
    """One Rollout of several (rows in order), padded to the widest."""
    width = max(p.input_ids.shape[1] for p in parts)

    def widen(t: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    texts = None if any(p.prompts is None for p in parts) else [t for p in parts for t in p.prompts]
    return Rollout(torch.cat([widen(p.input_ids, pad_id) for p in parts]),
                   torch.cat([widen(p.attention_mask, 0) for p in parts]),
                   torch.cat([p.prompt_lengths for p in parts]), torch.cat([p.response_lengths for p in parts]),
                   torch.cat([p.ended for p in parts]), texts)


def padded(rows: Sequence[np.ndarray], pad_id: int, device, *, left: bool = False
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows as one batch (input_ids, attention_mask) [B, longest], padded on the right, or on the left."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, r in enumerate(rows):
        if len(r):
            span = slice(width - len(r), width) if left else slice(0, len(r))
            ids[b, span] = torch.as_tensor(np.asarray(r, dtype=np.int64))
            mask[b, span] = 1
    return ids.to(device), mask.to(device)


def left_padded(prompt_ids: Sequence[np.ndarray], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts as a left-padded batch (what generate expects): (input_ids, attention_mask), [B, P]."""
    return padded(prompt_ids, pad_id, device, left=True)


def cut_at_stop(generated: torch.Tensor, stop_token_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(lengths [B], ended [B]) of generated responses [B, R]: up to and including the first stop token,
    else all R tokens."""
    is_stop = torch.isin(generated, torch.as_tensor(list(stop_token_ids), device=generated.device))
    ended = is_stop.any(dim=1)
    first = torch.where(ended, is_stop.int().argmax(dim=1), generated.shape[1] - 1)
    return first + 1, ended


def assemble(prompt_ids: Sequence[np.ndarray], responses: torch.Tensor, lengths: torch.Tensor, ended: torch.Tensor,
             pad_id: int, prompts: list[str] | None = None) -> Rollout:
    """Right-padded prompt + response rows from unpadded prompts and responses [B, R] of the given lengths."""
    cpu_responses = responses.cpu()
    rows = [np.concatenate([np.asarray(p, dtype=np.int64), cpu_responses[b, :n].numpy()])
            for b, (p, n) in enumerate(zip(prompt_ids, lengths.tolist()))]
    ids, mask = padded(rows, pad_id, responses.device)
    prompt_lengths = torch.tensor([len(p) for p in prompt_ids], dtype=torch.long, device=responses.device)
    return Rollout(ids, mask, prompt_lengths, lengths.to(responses.device), ended.to(responses.device), prompts)


@torch.no_grad()
def generate(model: torch.nn.Module, prompt_ids: Sequence[np.ndarray], settings: GenerationSettings, *, pad_id: int,
             prompts: list[str] | None = None, synced: bool = False, autocast: bool = False) -> Rollout:
    """Sample one response per prompt (model in eval mode for the call; its mode is restored)."""
    if not prompt_ids or any(len(p) == 0 for p in prompt_ids):
        raise ValueError("generate needs at least one prompt and no empty prompt")
    device = next(model.parameters()).device
    input_ids, attention_mask = left_padded(prompt_ids, pad_id, device)
    was_training = model.training
    model.eval()
    try:
        scope = torch.autocast("cuda", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with scope:
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=True,
                                 temperature=settings.temperature, top_p=settings.top_p, top_k=0,
                                 max_new_tokens=settings.max_new_tokens, eos_token_id=list(settings.stop_token_ids),
                                 pad_token_id=pad_id, synced_gpus=synced, use_cache=True,
                                 suppress_tokens=None if pad_id in settings.stop_token_ids else [pad_id])
    finally:
        model.train(was_training)
    generated = out[:, input_ids.shape[1]:]
    if generated.shape[1] == 0:  # every rank stopped before its first token: impossible with max_new_tokens >= 1
        raise RuntimeError("generate returned no new tokens")
    lengths, ended = cut_at_stop(generated, settings.stop_token_ids)
    return assemble(prompt_ids, generated, lengths, ended, pad_id, prompts)


@torch.no_grad()
def answer(model: torch.nn.Module, prompt_ids: Sequence[np.ndarray], settings: GenerationSettings, *, pad_id: int,
           dist, batch_size: int, seed: int, prompts: list[str] | None = None, scorer: RewardScorer | None = None,
           autocast: bool = False, progress: str | None = None) -> tuple[np.ndarray | None, list[dict]]:
    """One response to every prompt, in order, the prompts split over the ranks in chunks of `batch_size`:
    (float64 scores [n] from `scorer`, or None without one; [{"response_ids", "ended"}] for every prompt).
    The RNG is forked and seeded with `seed` (and the rank), so every model answered with the same seed and
    settings draws the same random numbers, and the caller's RNG state is left as it was. `progress`: the
    description of a progress bar over the prompts (main process), none by default."""
    from tqdm.auto import tqdm

    from guard import distributed

    devices = [dist.device] if dist.device.type == "cuda" else []
    scores, samples = [], []
    bar = tqdm(total=len(prompt_ids), desc=progress, disable=progress is None or not dist.is_main, dynamic_ncols=True)
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed + 7919 * (dist.rank + 1))
        for n, mine in distributed.rank_chunks(len(prompt_ids), batch_size, dist):
            rollout = generate(model, [prompt_ids[r] for r in mine], settings, pad_id=pad_id,
                               prompts=None if prompts is None else [prompts[r] for r in mine], synced=dist.enabled,
                               autocast=autocast)
            if scorer is not None:
                scores.append(distributed.gather_rows(scorer.score(rollout), dist)[:n].double().cpu())
            mine_samples = [{"response_ids": ids, "ended": bool(e)} for ids, e in
                            zip(rollout.responses(), rollout.ended.tolist())]
            samples.extend([s for rank in distributed.gather_objects(mine_samples, dist) for s in rank][:n])
            bar.update(n)
    bar.close()
    return (torch.cat(scores).numpy() if scorer is not None else None), samples


class RewardScorer:
    """A frozen sequence-classification reward model (e.g. the rm recipe's OUTPUT_DIR/model) that scores
    rollouts; see the module docstring for how sequences are tokenized for it."""

    def __init__(self, model: torch.nn.Module, hf_tokenizer, tokenizer: gdata.Tokenizer, *, policy_tokenizer=None,
                 autocast: bool = False):
        self.model = model.eval().requires_grad_(False)
        self.hf_tokenizer, self.tokenizer = hf_tokenizer, tokenizer
        self.policy_tokenizer = policy_tokenizer
        self.same_tokenizer = policy_tokenizer is not None and _same_vocabulary(hf_tokenizer, policy_tokenizer)
        self.pad_id = hf_tokenizer.pad_token_id
        eos = hf_tokenizer.eos_token_id
        self.eos_id = eos if eos not in (None, self.pad_id) else None
        self.autocast = autocast

    @classmethod
    def load(cls, path: str, *, policy_tokenizer=None, device="cpu", dist=None, trust_remote_code: bool = False,
             autocast: bool = False) -> RewardScorer:
        """The reward model saved at `path` with its tokenizer; sharded with FSDP2 under torchrun (`dist`)."""
        from guard import distributed, models

        hf_tok, tok = models.load_tokenizer(path)
        model = models.load_reward_model(path, vocab_size=len(hf_tok), pad_token_id=hf_tok.pad_token_id, device=device,
                                         trust_remote_code=trust_remote_code)
        if dist is not None and dist.enabled:
            model = distributed.shard_model(model.requires_grad_(False), dist,
                                            param_dtype=torch.bfloat16 if autocast else None)
        return cls(model, hf_tok, tok, policy_tokenizer=policy_tokenizer, autocast=autocast)

    def encode(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) of the rollout's sequences in the reward model's tokens."""
        if self.same_tokenizer:
            ids = rollout.input_ids.masked_fill(rollout.attention_mask == 0, self.pad_id)
            return ids, rollout.attention_mask
        if rollout.prompts is None or self.policy_tokenizer is None:
            raise ValueError("the reward model's tokenizer differs from the policy's: the rollout needs its prompt "
                             "texts and the scorer the policy's tokenizer")
        texts = []  # responses without their stop token, which the reward model's own EOS stands for
        for b, response in enumerate(rollout.responses()):
            if bool(rollout.ended[b]):
                response = response[:-1]
            texts.append(self.policy_tokenizer.decode(response, skip_special_tokens=False))
        prompt_part = gdata.encode_texts(self.tokenizer, rollout.prompts, add_special_tokens=True)
        nonempty = [b for b, text in enumerate(texts) if text]
        encoded = gdata.encode_texts(self.tokenizer, [texts[b] for b in nonempty], add_special_tokens=False,
                                     errors="skip")  # a text with no tokens (whitespace) is an empty response
        response_ids = {nonempty[int(k)]: encoded[i] for i, k in enumerate(encoded.kept)}
        empty = np.zeros(0, dtype=np.int64)
        rows = []
        for b in range(len(rollout)):
            tail = [self.eos_id] if bool(rollout.ended[b]) and self.eos_id is not None else []
            rows.append(np.concatenate([prompt_part[b], response_ids.get(b, empty), np.asarray(tail, dtype=np.int64)]))
        return padded(rows, self.pad_id, rollout.input_ids.device)

    @torch.no_grad()
    def score(self, rollout: Rollout) -> torch.Tensor:
        """The reward of each rollout, [B] float32."""
        input_ids, attention_mask = self.encode(rollout)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return logits.squeeze(-1).float()


def _same_vocabulary(a, b) -> bool:
    """Whether two Hugging Face tokenizers map text to the same ids (same vocabulary and special tokens)."""
    return a.get_vocab() == b.get_vocab() and a.pad_token_id == b.pad_token_id
