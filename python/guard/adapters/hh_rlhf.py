"""Anthropic/hh-rlhf: string transcripts "\\n\\nHuman: ... \\n\\nAssistant: ..." -> (prompt, response) pairs, the
category read from the subset (helpful-* -> "helpful", harmless-base -> "harmless")."""

from __future__ import annotations

import os
import re

from guard.adapters.fields import _need_str, _Renderer
from guard.adapters.pairs import NO_ASSISTANT_TURN, PROMPTS_DIFFER, Drop


# Anthropic/hh-rlhf preference subsets (folder names) -> category. red-team-attempts has another schema.
HH_RLHF_SUBSETS = {
    "helpful-base": "helpful",
    "helpful-online": "helpful",
    "helpful-rejection-sampled": "helpful",
    "harmless-base": "harmless",
}


_HH_ASSISTANT = "\n\nAssistant:"


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def hh_category(subset_or_path: str | os.PathLike | None) -> str | None:
    """"helpful" or "harmless" for an hh-rlhf subset name or a path through one, else None.

    The deepest path component naming a preference subset wins: "harmless-base",
    "Anthropic/hh-rlhf/helpful-online/train.jsonl.gz" -> "harmless", "helpful".
    """
    if subset_or_path is None:
        return None
    found = None
    for part in re.split(r"[\\/]", os.fspath(subset_or_path)):
        if part in HH_RLHF_SUBSETS:
            found = HH_RLHF_SUBSETS[part]
    return found


def _split_hh(text: str):
    """(prompt, response) of one HH transcript, or None without an assistant turn."""
    cut = text.rfind(_HH_ASSISTANT)
    if cut < 0:
        return None
    cut += len(_HH_ASSISTANT)
    return text[:cut], text[cut:]


def _hh_messages(prompt: str) -> list[dict[str, str]]:
    """The HH prompt (ending in "\\n\\nAssistant:") as messages, without the empty final assistant turn."""
    parts = _HH_TURN.split(prompt)
    lead, roles, texts = parts[0], parts[1::2], parts[2::2]
    msgs = [{"role": "user" if r == "Human" else "assistant", "content": t.removeprefix(" ")}
            for r, t in zip(roles, texts)]
    if msgs and msgs[-1]["role"] == "assistant" and not msgs[-1]["content"].strip():
        msgs.pop()
    if lead.strip():  # text before the first "Human:" turn: keep it with the first message
        if msgs and msgs[0]["role"] == "user":
            msgs[0]["content"] = lead.strip() + "\n\n" + msgs[0]["content"]
        else:
            msgs.insert(0, {"role": "user", "content": lead.strip()})
    return msgs


def _hh_rows(rows, render: _Renderer, category: str | None, dims):
    for i, row in rows:
        chosen = _need_str(i, "chosen", row.get("chosen"))
        rejected = _need_str(i, "rejected", row.get("rejected"))
        c, r = _split_hh(chosen), _split_hh(rejected)
        if c is None or r is None:
            yield Drop(i, NO_ASSISTANT_TURN)
            continue
        if c[0] != r[0]:
            yield Drop(i, PROMPTS_DIFFER)
            continue
        if render.fn is None:  # raw transcript: prompt + response is the original text, byte for byte
            yield i, c[0], c[1], r[1], category, None
        else:  # templated: the template ends the prompt, so the space after "Assistant:" goes
            yield i, render.messages(_hh_messages(c[0]), i), c[1].removeprefix(" "), r[1].removeprefix(" "), category, None
