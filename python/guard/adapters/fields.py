"""What every schema's reader uses on a raw row: typed field checks that name the row and field, message lists,
chat-template rendering of prompts, and the (prompt, chosen, rejected) split of two conversations."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from numbers import Real
from typing import Any

from guard.adapters.pairs import NO_ASSISTANT_TURN, PROMPTS_DIFFER, RowError


def _need_str(row: int, name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise RowError(row, f"field {name} is not a string (got {type(value).__name__})")
    return value


def _need_number(row: int, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise RowError(row, f"field {name} is not a number (got {type(value).__name__})")
    if math.isnan(value):
        raise RowError(row, f"field {name} is NaN")
    return value


def _messages(row: int, name: str, value: Any) -> list[dict[str, str]]:
    """A validated copy of a message list; keys whose value is None (arrow fills absent keys) are dropped."""
    if not isinstance(value, list):
        raise RowError(row, f"field {name} is not a string or a list of messages (got {type(value).__name__})")
    out = []
    for j, msg in enumerate(value):
        if not isinstance(msg, Mapping):
            raise RowError(row, f"field {name}[{j}] is not a message dict (got {type(msg).__name__})")
        _need_str(row, f"{name}[{j}].role", msg.get("role"))
        _need_str(row, f"{name}[{j}].content", msg.get("content"))
        out.append({k: v for k, v in msg.items() if v is not None})
    return out


class NeedsChatTemplate(RowError):
    """Conversational data (message lists) was given no chat template; `row` is the first such row."""

    def __init__(self, row: int | None):
        super().__init__(row, "conversational data needs a chat template: pass chat_template=...")


class _Renderer:
    """Applies the user's chat template (or none) to prompts."""

    def __init__(self, chat_template: Any):
        if chat_template is None:
            self.fn: Callable[[list[dict[str, str]]], Any] | None = None
        elif hasattr(chat_template, "apply_chat_template"):
            tok = chat_template
            self.fn = lambda msgs: tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        elif callable(chat_template):
            self.fn = chat_template
        else:
            raise TypeError("chat_template must be a callable(messages) -> str or an object with "
                            f"apply_chat_template (a transformers tokenizer); got {type(chat_template).__name__}")

    def require(self, row: int | None = None) -> None:
        if self.fn is None:
            raise NeedsChatTemplate(row)

    def messages(self, msgs: list[dict[str, str]], row: int | None = None) -> str:
        self.require(row)
        text = self.fn(msgs)
        if not isinstance(text, str):
            raise TypeError(f"chat_template returned {type(text).__name__}, expected str")
        return text

    def text(self, prompt: str) -> str:
        """A plain-string prompt: unchanged without a template, else one user message."""
        return prompt if self.fn is None else self.messages([{"role": "user", "content": prompt}])


def _conversation(prompt_msgs: list, chosen_msgs: list, rejected_msgs: list, render: _Renderer):
    """(prompt text, chosen, rejected) from message lists, or a drop reason."""
    full_c, full_r = prompt_msgs + chosen_msgs, prompt_msgs + rejected_msgs
    if not full_c or not full_r or full_c[-1]["role"] != "assistant" or full_r[-1]["role"] != "assistant":
        return NO_ASSISTANT_TURN
    if full_c[:-1] != full_r[:-1]:
        return PROMPTS_DIFFER
    return render.messages(full_c[:-1]), full_c[-1]["content"], full_r[-1]["content"]


def _turns(row: int, name: str, value: Any, role: str) -> list[dict[str, str]]:
    """A message list as is; a plain string as one message of `role`."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return _messages(row, name, value)


def _best_worst(scores: list[tuple[int, float]]):
    """(index of the first maximum, index of the first minimum), or None when all scores are equal."""
    best = max(scores, key=lambda t: t[1])  # max/min return the first of equal keys
    worst = min(scores, key=lambda t: t[1])
    return None if best[1] == worst[1] else (best[0], worst[0])
