"""Tests for guard.plots (valid PNG files, no pyplot / display needed) and guard.report (markdown
builder, aligned plain-text tables)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from guard import plots
from guard.report import Report, format_table

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert len(data) > 1000
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_reward_histograms_write_png(tmp_path):
    rng = np.random.default_rng(0)
    rewards = {"helpful": rng.normal(size=300), "harmless": rng.normal(1.0, 0.5, size=120)}
    path = plots.reward_histograms(tmp_path / "plots" / "by_category.png", rewards, "Rewards by category")
    assert path == tmp_path / "plots" / "by_category.png"
    assert _png_size(path) == (640, 400)  # FIGSIZE at 100 dpi


def test_many_categories_and_constant_rewards(tmp_path):
    rng = np.random.default_rng(1)
    many = {f"harm {k}": rng.normal(k / 10, 1.0, size=30) for k in range(19)}
    assert _png_size(plots.reward_histograms(tmp_path / "many.png", many, "19 categories")) == (640, 400)
    const = {"a": np.zeros(5), "b": [0.0]}
    assert _png_size(plots.reward_histograms(tmp_path / "const.png", const, "constant")) == (640, 400)


def test_chosen_rejected_and_curves(tmp_path):
    rng = np.random.default_rng(2)
    p = plots.chosen_rejected_histogram(tmp_path / "cr.png", rng.normal(1, 1, 200), rng.normal(0, 1, 200), "c vs r")
    assert _png_size(p) == (640, 400)
    steps = np.arange(0, 100, 10)
    loss = np.exp(-steps / 50.0)
    loss[3] = np.nan  # a diverged step is a gap, not an error
    p = plots.curves(tmp_path / "loss.png", {"bt_loss": (steps, loss), "adv_loss": (steps, 1 - loss)}, "loss", "nats")
    assert _png_size(p) == (640, 400)


def test_ecdf_bars_and_generic_histograms(tmp_path):
    rng = np.random.default_rng(3)
    many = {f"c{k}": rng.normal(k / 10, 1.0, size=25) for k in range(12)}
    assert _png_size(plots.ecdf(tmp_path / "ecdf.png", many, "ECDF", "reward")) == (640, 400)
    assert _png_size(plots.ecdf(tmp_path / "one.png", {"a": [2.0]}, "one value", "x")) == (640, 400)
    rates = {"model": {"gender": 0.6, "age": 0.45}, "baseline": {"gender": 0.5, "race": 0.7}}  # a missing bar is a gap
    errors = {"model": {"gender": 0.05, "age": 0.04}}
    p = plots.category_bars(tmp_path / "bars.png", rates, "bias", "share", errors=errors, reference=0.5)
    assert _png_size(p) == (640, 400)
    assert _png_size(plots.histograms(tmp_path / "h.png", {"a": [0.1, 0.2]}, "t", "distance")) == (640, 400)


def test_plot_errors(tmp_path):
    with pytest.raises(ValueError, match="no series"):
        plots.ecdf(tmp_path / "x.png", {}, "t", "x")
    with pytest.raises(ValueError, match=r"values of 'a' contains NaN"):
        plots.ecdf(tmp_path / "x.png", {"a": [np.nan]}, "t", "x")
    with pytest.raises(ValueError, match="series 'm': value of 'g' is not finite"):
        plots.category_bars(tmp_path / "x.png", {"m": {"g": np.inf}}, "t", "y")
    with pytest.raises(ValueError, match="no series"):
        plots.category_bars(tmp_path / "x.png", {}, "t", "y")
    with pytest.raises(ValueError, match="rewards of 'b' is empty"):
        plots.reward_histograms(tmp_path / "x.png", {"a": [1.0], "b": []}, "t")
    with pytest.raises(ValueError, match=r"rewards of 'a' contains NaN or inf \(first at index 1\)"):
        plots.reward_histograms(tmp_path / "x.png", {"a": [1.0, np.inf]}, "t")
    with pytest.raises(ValueError, match="no reward series"):
        plots.reward_histograms(tmp_path / "x.png", {}, "t")
    with pytest.raises(ValueError, match="curve 'loss': 3 steps but 2 values"):
        plots.curves(tmp_path / "x.png", {"loss": ([0, 1, 2], [1.0, 0.5])}, "t", "loss")
    assert not (tmp_path / "x.png").exists()


def test_plots_need_no_pyplot_or_display(tmp_path):
    # An unusable interactive backend and no DISPLAY: the Agg canvas must still work, and pyplot (global
    # figure state) must never be imported.
    # plots.py is loaded from its file: importing the guard package (torch, triton) would only add seconds.
    code = (
        "import importlib.util, sys; "
        f"spec = importlib.util.spec_from_file_location('plots', {plots.__file__!r}); "
        "plots = importlib.util.module_from_spec(spec); spec.loader.exec_module(plots); "
        f"plots.curves({str(tmp_path / 'c.png')!r}, {{'x': ([0, 1], [1.0, 2.0])}}, 't', 'y'); "
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["MPLBACKEND"] = "qtagg"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG_SIGNATURE


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------

ROWS = [
    {"metric": "accuracy", "baseline": 0.71234567, "fair": 0.7, "pairs": 400},
    {"metric": "binned MI", "baseline": 0.1, "fair": 1.5e-05, "pairs": 400},
    {"metric": "audit AUC", "baseline": None, "fair": 0.5, "pairs": 12},
]


def test_format_table_aligns_columns():
    out = format_table(ROWS)
    assert out == (
        "metric     baseline     fair  pairs\n"
        "---------  --------  -------  -----\n"
        "accuracy     0.7123      0.7    400\n"
        "binned MI       0.1  1.5e-05    400\n"
        "audit AUC         -      0.5     12"
    )
    lines = out.splitlines()
    # Right-aligned numeric columns end where their header and rule end.
    for header in ("baseline", "fair", "pairs"):
        end = lines[0].index(header) + len(header)
        assert all(line[end - 1] != " " and (len(line) == end or line[end] == " ") for line in lines[1:])


def test_format_table_columns_and_missing_keys():
    out = format_table([{"a": "x", "b": 1}, {"a": "longer text", "c": True}], columns=["c", "a"], floatfmt=".2f")
    assert out.splitlines() == ["c     a", "----  -----------", "-     x", "True  longer text"]
    assert format_table([{"v": 1 / 3}], floatfmt=".2f").splitlines()[-1] == "0.33"


def test_report_markdown(tmp_path):
    rep = Report("Reward model run")
    assert rep.heading("Fairness") is rep
    rep.text("Rewards of the **evaluation** pairs.\n")
    rep.table(ROWS, columns=["metric", "baseline", "fair"])
    rep.table([{"name": "a|b", "note": "two\nlines"}])
    rep.table([])
    rep.image(Path("plots") / "rewards by category.png", "rewards by category")
    rep.heading("Details", level=3)
    md = rep.to_markdown()
    assert md == str(rep)
    assert md.startswith("# Reward model run\n\n## Fairness\n\nRewards of the **evaluation** pairs.\n\n")
    assert (
        "| metric    | baseline |    fair |\n"
        "| --------- | -------: | ------: |\n"
        "| accuracy  |   0.7123 |     0.7 |\n"
        "| binned MI |      0.1 | 1.5e-05 |\n"
        "| audit AUC |        - |     0.5 |\n"
    ) in md
    assert "| a\\|b | two lines |" in md
    assert "*(no rows)*" in md
    assert "![rewards by category](plots/rewards%20by%20category.png)" in md
    assert md.endswith("### Details\n")

    path = rep.write(tmp_path / "out" / "report.md")
    assert path.read_text(encoding="utf-8") == md
    assert not list(path.parent.glob("*.tmp"))
    with pytest.raises(ValueError, match="heading level must be 1..6"):
        rep.heading("x", level=7)
