"""PNG plots for run and evaluation reports: reward histograms and ECDFs by category, chosen vs rejected,
per-category bars, and training curves.

Figures are built with matplotlib's object-oriented API on an Agg canvas (``Figure`` +
``FigureCanvasAgg``), never through pyplot: no display is needed, no global backend or figure state is
touched, and nothing is left open after a call.

    from guard import plots

    plots.reward_histograms("run/rewards_by_category.png", {"helpful": r_h, "harmless": r_s}, "Rewards")
    plots.chosen_rejected_histogram("run/chosen_rejected.png", chosen, rejected, "Chosen vs rejected")
    plots.ecdf("out/ecdf.png", {"helpful": r_h, "harmless": r_s}, "Rewards, ECDF", "reward")
    plots.category_bars("out/bias.png", {"model": {"gender": 0.55}}, "Bias rate", "share", reference=0.5)
    plots.curves("run/loss.png", {"bt_loss": (steps, values)}, "Training loss", "loss")

Each function writes one PNG (parent directories are created) and returns its path.  Empty or
non-finite rewards raise ValueError naming the series.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["histograms", "reward_histograms", "chosen_rejected_histogram", "ecdf", "category_bars", "curves"]

DPI = 100
FIGSIZE = (6.4, 4.0)
MAX_BINS = 50


def _values(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{name} contains NaN or inf (first at index {int(bad[0])})")
    return arr


def _shared_edges(groups: list[np.ndarray]) -> np.ndarray:
    """Equal-width edges over the pooled range, so every group is counted in the same bins."""
    pooled = np.concatenate(groups)
    lo, hi = float(pooled.min()), float(pooled.max())
    if lo == hi:  # a constant reward still gets one visible bar
        lo, hi = lo - 0.5, hi + 0.5
    n_bins = int(min(MAX_BINS, max(10, np.sqrt(pooled.size))))
    return np.linspace(lo, hi, n_bins + 1)


def _figure() -> tuple[Figure, Any]:
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="tight")
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas
    return fig, fig.add_subplot()


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    fig.clear()  # drop the artists now rather than at garbage collection
    return path


def _colors(n: int) -> tuple:
    # tab10 repeats after 10 colours; tab20 keeps up to 20 categories distinct.
    return matplotlib.colormaps["tab10" if n <= 10 else "tab20"].colors


def _legend(ax, n: int) -> None:
    if n <= 8:
        ax.legend(fontsize="small")
    else:  # a long legend goes beside the axes rather than over the plot
        ax.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.01, 0.5))


def _count_label(name: str, n: int, pooled_pairs: bool) -> str:
    """A legend entry that counts what the tables count: pooled chosen and rejected rewards of n/2 pairs say both."""
    return f"{name} ({n // 2} pairs, {n} rewards)" if pooled_pairs else f"{name} (n={n})"


def histograms(path: str | os.PathLike, series: dict[str, Any], title: str, xlabel: str, *,
               pooled_pairs: bool = False) -> Path:
    """Overlaid density histograms of each series on shared equal-width bins. `pooled_pairs`: each series holds
    the chosen and the rejected rewards of its pairs, and the legend counts both."""
    groups = {str(name): _values(v, f"values of {name!r}") for name, v in series.items()}
    if not groups:
        raise ValueError("no reward series to plot")
    edges = _shared_edges(list(groups.values()))
    fig, ax = _figure()
    # Filled, translucent bars read well for a few groups; outlines keep 19 categories legible.
    histtype = "stepfilled" if len(groups) <= 4 else "step"
    colors = _colors(len(groups))
    for k, (name, values) in enumerate(groups.items()):
        # density: categories of different sizes stay comparable in shape.
        ax.hist(values, bins=edges, density=True, histtype=histtype, alpha=0.45 if histtype == "stepfilled" else 1.0,
                linewidth=1.2, color=colors[k % len(colors)], label=_count_label(name, values.size, pooled_pairs))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    _legend(ax, len(groups))
    return _save(fig, path)


def reward_histograms(path: str | os.PathLike, rewards: dict[str, Any], title: str, *,
                      pooled_pairs: bool = False) -> Path:
    """Overlaid density histograms of each category's rewards, on shared equal-width bins (`pooled_pairs`: each
    category's chosen and rejected rewards together, counted as pairs and rewards in the legend)."""
    groups = {str(name): _values(v, f"rewards of {name!r}") for name, v in rewards.items()}
    return histograms(path, groups, title, "reward", pooled_pairs=pooled_pairs)


def chosen_rejected_histogram(path: str | os.PathLike, chosen: Any, rejected: Any, title: str) -> Path:
    """Overlaid density histograms of the chosen and the rejected rewards (one each per pair), on shared bins."""
    groups = {f"chosen, {np.size(chosen)} pairs": _values(chosen, "chosen"),
              f"rejected, {np.size(rejected)} pairs": _values(rejected, "rejected")}
    return histograms(path, groups, title, "reward")


def ecdf(path: str | os.PathLike, series: dict[str, Any], title: str, xlabel: str, *,
         pooled_pairs: bool = False) -> Path:
    """Empirical CDFs of each series as steps (F(x) = share of values <= x): where two categories' curves
    part is what the KS distance measures (their largest vertical gap) and the area between them is W1."""
    groups = {str(name): np.sort(_values(v, f"values of {name!r}")) for name, v in series.items()}
    if not groups:
        raise ValueError("no series to plot")
    fig, ax = _figure()
    colors = _colors(len(groups))
    for k, (name, values) in enumerate(groups.items()):
        heights = np.arange(1, values.size + 1) / values.size
        ax.step(np.concatenate([values[:1], values]), np.concatenate([[0.0], heights]), where="post",
                color=colors[k % len(colors)], linewidth=1.2, label=_count_label(name, values.size, pooled_pairs))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("share <= x")
    ax.set_ylim(0.0, 1.02)
    ax.grid(alpha=0.3)
    _legend(ax, len(groups))
    return _save(fig, path)


def category_bars(path: str | os.PathLike, series: dict[str, dict[str, float]], title: str, ylabel: str, *,
                  errors: dict[str, dict[str, float]] | None = None, reference: float | None = None) -> Path:
    """Grouped bars: ``series[model][category] = value`` (one group per category, one bar per model), with
    optional error bars ``errors[model][category]`` and a dashed horizontal line at ``reference`` (e.g. 0.5,
    the neutral bias rate)."""
    if not series:
        raise ValueError("no series to plot")
    categories = list(dict.fromkeys(c for values in series.values() for c in values))
    for name, values in series.items():
        bad = [c for c, v in values.items() if not np.isfinite(v)]
        if bad:
            raise ValueError(f"series {name!r}: value of {bad[0]!r} is not finite")
    fig, ax = _figure()
    colors = _colors(len(series))
    width = 0.8 / len(series)
    x = np.arange(len(categories))
    for k, (name, values) in enumerate(series.items()):
        heights = [values.get(c, np.nan) for c in categories]
        err = None if errors is None or name not in errors else [errors[name].get(c, 0.0) for c in categories]
        ax.bar(x + (k - (len(series) - 1) / 2) * width, heights, width, yerr=err, capsize=2,
               color=colors[k % len(colors)], label=name)
    if reference is not None:
        ax.axhline(reference, color="black", linestyle="--", linewidth=1)
    ax.set_xticks(x, categories, rotation=45 if len(categories) > 4 else 0, ha="right" if len(categories) > 4 else "center",
                  fontsize="small")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    if len(series) > 1:
        ax.legend(fontsize="small")
    return _save(fig, path)


def curves(path: str | os.PathLike, series: dict[str, tuple[Any, Any]], title: str, ylabel: str) -> Path:
    """Line plot of training curves: ``series[name] = (steps, values)``, equal lengths.  Non-finite
    values (a diverged loss) are left as gaps in the line rather than refused."""
    if not series:
        raise ValueError("no curves to plot")
    fig, ax = _figure()
    for name, (steps, values) in series.items():
        x = np.asarray(steps, dtype=np.float64).reshape(-1)
        y = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float64).reshape(-1)
        if x.shape != y.shape:
            raise ValueError(f"curve {name!r}: {x.size} steps but {y.size} values")
        ax.plot(x, y, label=str(name), marker="." if x.size < 20 else None)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize="small")
    return _save(fig, path)
