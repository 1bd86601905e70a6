"""JSON and JSON-lines files written through a temporary name (a kill never leaves half a file).

    write_jsonl("rewards.jsonl", [{"chosen": 1.0}, {"chosen": 0.5}]); read_jsonl("rewards.jsonl")
    write_json("summary.json", {"accuracy": 0.8}); read_json("summary.json")
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, path)


def write_jsonl(path: str | os.PathLike, rows: Sequence[dict]) -> Path:
    """One JSON object per line, through a temporary name; returns the path."""
    path = Path(path)
    _write_lines(path, [json.dumps(row) for row in rows])
    return path


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_json(path: Path, obj) -> None:
    """JSON through a temporary name, so a kill never leaves half a file."""
    _write_lines(path, [json.dumps(obj, indent=2)])
