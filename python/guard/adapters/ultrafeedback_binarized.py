"""HuggingFaceH4/ultrafeedback_binarized: chosen/rejected conversations with their scores (or a flattened copy
with a prompt column and string responses)."""

from __future__ import annotations

from guard.adapters.fields import _conversation, _need_number, _need_str, _Renderer, _turns
from guard.adapters.pairs import TIE, Drop


def _ultrafeedback_binarized_rows(rows, render: _Renderer, category: str | None, dims):
    for i, row in rows:
        score_c = _need_number(i, "score_chosen", row.get("score_chosen"))
        score_r = _need_number(i, "score_rejected", row.get("score_rejected"))
        chosen, rejected = row.get("chosen"), row.get("rejected")
        if isinstance(chosen, str) and isinstance(rejected, str):  # a flattened copy: prompt column + strings
            prompt = _need_str(i, "prompt", row.get("prompt"))
            if score_c == score_r:
                yield Drop(i, TIE)
                continue
            yield i, render.text(prompt), chosen, rejected, category, None
            continue
        render.require(i)
        cm, rm = _turns(i, "chosen", chosen, "assistant"), _turns(i, "rejected", rejected, "assistant")
        if score_c == score_r:
            yield Drop(i, TIE)
            continue
        # The published rows hold whole conversations (user turn included); a bare assistant reply
        # answers the prompt column.
        if len(cm) > 1 or len(rm) > 1:
            pm = []
        else:
            pm = [{"role": "user", "content": _need_str(i, "prompt", row.get("prompt"))}]
        out = _conversation(pm, cm, rm, render)
        yield Drop(i, out) if isinstance(out, str) else (i, *out, category, None)
