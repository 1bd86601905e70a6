"""A small markdown report builder (``report.md`` of a run) and aligned plain-text tables (printed summaries).

    from guard.report import Report, format_table

    rep = Report("Reward model run")
    rep.heading("Fairness", 2).text("Rewards of the evaluation pairs.")
    rep.table([{"model": "baseline", "MI": 0.12}, {"model": "fair", "MI": 0.03}])
    rep.image("rewards_by_category.png", "rewards by category")
    rep.write("run/report.md")

    print(format_table(rows))   # the same rows as a plain-text table, columns aligned

Cells: floats use ``floatfmt`` (default ``".4g"``), None prints as ``-``, anything else ``str()``.
Numeric columns are right-aligned, text columns left-aligned.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any, Sequence

__all__ = ["Report", "format_table"]

MISSING = "-"


def _cell(value: Any, floatfmt: str) -> str:
    if value is None:
        return MISSING
    if isinstance(value, bool):  # before Integral: True is an int
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        v = float(value)
        return format(v, floatfmt) if math.isfinite(v) else str(v)
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _columns(rows: Sequence[dict], columns: Sequence[str] | None) -> list[str]:
    if columns is not None:
        return [str(c) for c in columns]
    seen: dict[str, None] = {}  # keys in order of first appearance over all rows
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def _grid(
    rows: Sequence[dict], columns: Sequence[str] | None, floatfmt: str
) -> tuple[list[str], list[list[str]], list[bool]]:
    """(column names, cell strings, right-align flag per column); a column is right-aligned when every
    non-missing value in it is a number."""
    cols = _columns(rows, columns)
    cells = [[_cell(row.get(c), floatfmt) for c in cols] for row in rows]
    right = []
    for c in cols:
        present = [row[c] for row in rows if row.get(c) is not None]
        right.append(bool(present) and all(_is_number(v) for v in present))
    return cols, cells, right


def format_table(rows: Sequence[dict], columns: Sequence[str] | None = None, floatfmt: str = ".4g") -> str:
    """Plain-text table of ``rows`` (dicts; missing keys print ``-``): a header, a dashed rule and one line
    per row, columns separated by two spaces and padded to a common width.  ``columns`` picks and
    orders the columns (default: every key, in order of first appearance)."""
    cols, cells, right = _grid(rows, columns, floatfmt)
    widths = [max([len(c)] + [len(r[k]) for r in cells]) for k, c in enumerate(cols)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if rj else v.ljust(w) for v, w, rj in zip(values, widths, right)]
        return "  ".join(parts).rstrip()

    out = [line(cols), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    return "\n".join(out)


def _md_escape(text: str) -> str:
    # A "|" would split the cell, a newline would end the row.
    return text.replace("|", "\\|").replace("\r\n", " ").replace("\n", " ")


class Report:
    """Markdown document built block by block; every method but :meth:`write` returns ``self``."""

    def __init__(self, title: str):
        self.title = title
        self._blocks: list[str] = [f"# {title}"]

    def heading(self, text: str, level: int = 2) -> Report:
        if not 1 <= level <= 6:
            raise ValueError(f"heading level must be 1..6, got {level}")
        self._blocks.append(f"{'#' * level} {text}")
        return self

    def text(self, md: str) -> Report:
        """A paragraph (or any markdown) inserted verbatim."""
        self._blocks.append(md.strip("\n"))
        return self

    def table(self, rows: Sequence[dict], columns: Sequence[str] | None = None, floatfmt: str = ".4g") -> Report:
        """A GitHub-flavoured markdown table, padded so the source reads aligned too; numeric columns are
        right-aligned (``---:``).  No rows: an italic "(no rows)" line."""
        if not rows:
            self._blocks.append("*(no rows)*")
            return self
        cols, cells, right = _grid(rows, columns, floatfmt)
        cols = [_md_escape(c) for c in cols]
        cells = [[_md_escape(v) for v in r] for r in cells]
        widths = [max([3, len(c)] + [len(r[k]) for r in cells]) for k, c in enumerate(cols)]

        def line(values: Sequence[str]) -> str:
            parts = [v.rjust(w) if rj else v.ljust(w) for v, w, rj in zip(values, widths, right)]
            return "| " + " | ".join(parts) + " |"

        rule = "| " + " | ".join("-" * (w - 1) + ":" if rj else "-" * w for w, rj in zip(widths, right)) + " |"
        self._blocks.append("\n".join([line(cols), rule] + [line(r) for r in cells]))
        return self

    def image(self, relpath: str | os.PathLike, alt: str) -> Report:
        """An image, by a path relative to the report's directory (forward slashes in the markdown)."""
        link = Path(relpath).as_posix().replace(" ", "%20")
        self._blocks.append(f"![{alt}]({link})")
        return self

    def to_markdown(self) -> str:
        return "\n\n".join(self._blocks) + "\n"

    def __str__(self) -> str:
        return self.to_markdown()

    def write(self, path: str | os.PathLike) -> Path:
        """Write the markdown (UTF-8) under a temporary name and rename it; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_markdown(), encoding="utf-8")
        os.replace(tmp, path)
        return path
