"""openbmb/UltraFeedback (raw, fine-grained): one pair per aspect, the first best-rated completion against the
first worst-rated."""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Real
from typing import Any

from guard.adapters.fields import _best_worst, _need_str, _Renderer
from guard.adapters.pairs import SINGLE_RESPONSE, TIE, Drop, RowError


ULTRAFEEDBACK_ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")


def _uf_rating(row: int, name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.upper() in ("N/A", "NA", ""):
            return None
        try:
            return float(text)
        except ValueError:
            raise RowError(row, f"field {name} is not a rating (got {value!r})") from None
    if isinstance(value, Real) and not isinstance(value, bool):
        return float(value)
    raise RowError(row, f"field {name} is not a rating (got {type(value).__name__})")


def _ultrafeedback_rows(rows, render: _Renderer, category: str | None, dims):
    for i, row in rows:
        prompt = _need_str(i, "instruction", row.get("instruction"))
        completions = row.get("completions")
        if not isinstance(completions, list):
            raise RowError(i, f"field completions is not a list (got {type(completions).__name__})")
        responses, ratings = [], []
        for k, comp in enumerate(completions):
            if not isinstance(comp, Mapping):
                raise RowError(i, f"field completions[{k}] is not a dict (got {type(comp).__name__})")
            responses.append(_need_str(i, f"completions[{k}].response", comp.get("response")))
            notes = comp.get("annotations") or {}
            per = {}
            for aspect in dims:
                note = notes.get(aspect) if isinstance(notes, Mapping) else None
                value = note.get("Rating") if isinstance(note, Mapping) else None
                per[aspect] = _uf_rating(i, f"completions[{k}].annotations.{aspect}.Rating", value)
            ratings.append(per)
        rendered = None
        for aspect in dims:
            if len(completions) < 2:
                yield Drop(i, SINGLE_RESPONSE)
                continue
            rated = [(k, r[aspect]) for k, r in enumerate(ratings) if r[aspect] is not None]
            pick = _best_worst(rated) if len(rated) >= 2 else None
            if pick is None:
                yield Drop(i, TIE)
                continue
            if rendered is None:
                rendered = render.text(prompt)
            yield i, rendered, responses[pick[0]], responses[pick[1]], category, aspect
