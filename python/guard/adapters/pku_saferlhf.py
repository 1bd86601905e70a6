"""PKU-Alignment/PKU-SafeRLHF: two responses per row, a "helpful" and a "harmless" pair, the category the first
of the 19 harm categories flagged on the rejected (else the chosen) response."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from guard.adapters.fields import _need_str, _Renderer
from guard.adapters.pairs import MISSING_CATEGORY, Drop, RowError


# PKU-SafeRLHF's 19 harm categories, in the order of the dataset card (ids 0..18).
PKU_SAFERLHF_CATEGORIES = (
    "Endangering National Security",
    "Insulting Behavior",
    "Discriminatory Behavior",
    "Endangering Public Health",
    "Copyright Issues",
    "Violence",
    "Drugs",
    "Privacy Violation",
    "Economic Crime",
    "Mental Manipulation",
    "Human Trafficking",
    "Physical Harm",
    "Sexual Content",
    "Cybercrime",
    "Disrupting Public Order",
    "Environmental Damage",
    "Psychological Harm",
    "White-Collar Crime",
    "Animal Abuse",
)


PKU_SAFERLHF_DIMENSIONS = ("helpful", "harmless")


def _pku_flags(row: int, name: str, value: Any) -> list[str]:
    """Flagged harm categories of one response, in canonical order (None / absent keys = not flagged)."""
    if value is None:
        return []
    if not isinstance(value, Mapping):
        raise RowError(row, f"field {name} is not a dict of harm categories (got {type(value).__name__})")
    for key, flag in value.items():
        if key not in PKU_SAFERLHF_CATEGORIES:
            raise RowError(row, f"field {name} has unknown harm category {key!r}")
        if flag is not None and not isinstance(flag, bool):
            raise RowError(row, f"field {name}[{key!r}] is not a bool (got {type(flag).__name__})")
    return [cat for cat in PKU_SAFERLHF_CATEGORIES if value.get(cat)]


def _pku_rows(rows, render: _Renderer, category: str | None, dims):
    for i, row in rows:
        prompt = _need_str(i, "prompt", row.get("prompt"))
        responses = (_need_str(i, "response_0", row.get("response_0")),
                     _need_str(i, "response_1", row.get("response_1")))
        has_categories = "response_0_harm_category" in row or "response_1_harm_category" in row
        flags = (_pku_flags(i, "response_0_harm_category", row.get("response_0_harm_category")),
                 _pku_flags(i, "response_1_harm_category", row.get("response_1_harm_category")))
        ids = {}
        for dim, col in (("helpful", "better_response_id"), ("harmless", "safer_response_id")):
            v = row.get(col)
            if isinstance(v, bool) or v not in (0, 1):
                raise RowError(i, f"field {col} must be 0 or 1 (got {v!r})")
            ids[dim] = int(v)
        rendered = None
        for dim in dims:
            win = ids[dim]
            lose = 1 - win
            cat = None
            if has_categories:
                flagged = flags[lose] or flags[win]
                if not flagged:
                    yield Drop(i, MISSING_CATEGORY)
                    continue
                cat = flagged[0]
            if rendered is None:
                rendered = render.text(prompt)
            yield i, rendered, responses[win], responses[lose], cat, dim
