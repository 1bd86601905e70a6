"""Generic preference data: prompt, chosen, rejected [, category] [, dimension] as strings, or TRL's
conversational form (message lists; without a prompt column, whole conversations)."""

from __future__ import annotations

from guard.adapters.fields import _conversation, _need_str, _Renderer, _turns
from guard.adapters.pairs import DIMENSION_NOT_SELECTED, Drop, RowError


def _generic_rows(rows, render: _Renderer, category: str | None, dims):
    for i, row in rows:
        dim = row.get("dimension")
        if dim is not None:
            _need_str(i, "dimension", dim)
        cat = row.get("category", category)
        if cat is not None:
            _need_str(i, "category", cat)
        prompt, chosen, rejected = row.get("prompt"), row.get("chosen"), row.get("rejected")
        has_prompt = "prompt" in row
        conversational = any(isinstance(v, list) for v in (prompt, chosen, rejected)) or not has_prompt
        if conversational:
            for name, v in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
                if (name != "prompt" or has_prompt) and not isinstance(v, (str, list)):
                    raise RowError(i, f"field {name} is not a string (got {type(v).__name__})")
            if not has_prompt:
                for name, v in (("chosen", chosen), ("rejected", rejected)):
                    if not isinstance(v, list):
                        raise RowError(i, f"field {name} is not a list of messages (data without a "
                                         "prompt column must hold whole conversations)")
            render.require(i)
            pm = _turns(i, "prompt", prompt, "user") if has_prompt else []
            cm = _turns(i, "chosen", chosen, "assistant")
            rm = _turns(i, "rejected", rejected, "assistant")
        else:
            _need_str(i, "prompt", prompt)
            _need_str(i, "chosen", chosen)
            _need_str(i, "rejected", rejected)
        if dims is not None and dim not in dims:
            yield Drop(i, DIMENSION_NOT_SELECTED)
            continue
        if conversational:
            out = _conversation(pm, cm, rm, render)
            yield Drop(i, out) if isinstance(out, str) else (i, *out, cat, dim)
        else:
            yield i, render.text(prompt), chosen, rejected, cat, dim
