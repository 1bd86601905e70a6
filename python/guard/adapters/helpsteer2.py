"""nvidia/HelpSteer2: one response per row, grouped by prompt; per attribute the first best-scored response
against the first worst-scored."""

from __future__ import annotations

from guard.adapters.fields import _best_worst, _need_number, _need_str, _Renderer
from guard.adapters.pairs import SINGLE_RESPONSE, TIE, Drop


HELPSTEER2_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")


def _helpsteer2_rows(rows, render: _Renderer, category: str | None, dims):
    groups: dict[str, list[tuple[int, str, dict[str, float]]]] = {}
    for i, row in rows:
        prompt = _need_str(i, "prompt", row.get("prompt"))
        response = _need_str(i, "response", row.get("response"))
        scores = {d: _need_number(i, d, row.get(d)) for d in dims}
        groups.setdefault(prompt, []).append((i, response, scores))
    for prompt, members in groups.items():
        rendered = None
        for dim in dims:
            if len(members) < 2:
                yield Drop(members[0][0], SINGLE_RESPONSE)
                continue
            pick = _best_worst([(k, m[2][dim]) for k, m in enumerate(members)])
            if pick is None:
                yield Drop(members[0][0], TIE)
                continue
            if rendered is None:
                rendered = render.text(prompt)
            win, lose = members[pick[0]], members[pick[1]]
            yield win[0], rendered, win[1], lose[1], category, dim
