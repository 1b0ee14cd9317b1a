"""Figure of a leaderboard: Avg DTB per model and a per-dataset distance heatmap.

matplotlib is imported inside :func:`plot_leaderboard` with the Agg backend,
so importing this module costs nothing and needs no display.
"""

from __future__ import annotations

import logging
from pathlib import Path

from eos_pangaea.results.leaderboard import RUNS_SOURCE, Leaderboard

logger = logging.getLogger(__name__)


def plot_leaderboard(leaderboard: Leaderboard, path: Path | str) -> Path:
    """Save a two-panel figure: Avg DTB bars and distance-to-best heatmap.

    Bars of models that lack a dataset are hatched, and their coverage is
    written next to the bar. Runs are drawn in a second colour. Missing cells
    of the heatmap are grey and marked with a dash.

    Args:
        leaderboard: Result of :func:`~eos_pangaea.results.leaderboard.build_leaderboard`.
        path: Output file; the suffix picks the format (``.png``, ``.pdf``, ``.svg``).

    Returns:
        The path written.

    Raises:
        ValueError: If no model has an Avg DTB.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [row for row in leaderboard.rows if row.avg_dtb is not None]
    if not rows:
        raise ValueError("no model has an Avg DTB, so there is nothing to plot")
    columns = leaderboard.columns
    labels = [row.model if row.rank is None else f"{row.rank}. {row.model}" for row in rows]

    height = max(3.0, 0.35 * len(rows) + 1.5)
    figure, (bar_axes, heat_axes) = plt.subplots(
        1, 2, figsize=(6 + 0.7 * len(columns), height), gridspec_kw={"width_ratios": [1, max(1.5, 0.35 * len(columns))]}
    )

    positions = np.arange(len(rows))
    values = [row.avg_dtb for row in rows]
    colours = ["tab:orange" if row.source == RUNS_SOURCE else "tab:blue" for row in rows]
    bars = bar_axes.barh(positions, values, color=colours)
    for bar, row in zip(bars, rows):
        if row.coverage < len(columns):
            bar.set_hatch("//")
            bar_axes.annotate(
                f"{row.coverage}/{len(columns)}",
                (max(bar.get_width(), row.ci[1] if row.ci else 0.0), bar.get_y() + bar.get_height() / 2),
                xytext=(5, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
            )
    intervals = [(index, row.ci) for index, row in enumerate(rows) if row.ci]
    if intervals:
        indices = [index for index, _ in intervals]
        centres = [rows[index].avg_dtb for index in indices]
        # A percentile interval need not contain the estimate; clip to draw it anyway.
        lower = [max(0.0, rows[index].avg_dtb - ci[0]) for index, ci in intervals]
        upper = [max(0.0, ci[1] - rows[index].avg_dtb) for index, ci in intervals]
        bar_axes.errorbar(centres, indices, xerr=[lower, upper], fmt="none", ecolor="black", capsize=2)
    bar_axes.set_yticks(positions, labels, fontsize=8)
    bar_axes.invert_yaxis()
    bar_axes.set_xlabel("Avg DTB (lower is better)")
    bar_axes.set_title("Average distance to best")

    distances = np.full((len(rows), len(columns)), np.nan)
    for row_index, row in enumerate(rows):
        for column_index, column in enumerate(columns):
            if column in row.distances:
                distances[row_index, column_index] = row.distances[column]
    colour_map = matplotlib.colormaps["viridis_r"].with_extremes(bad="lightgrey")
    image = heat_axes.imshow(np.ma.masked_invalid(distances), aspect="auto", cmap=colour_map)
    # viridis_r is dark for large distances, so those labels are white.
    dark_above = np.nanmax(distances) / 2
    for row_index in range(len(rows)):
        for column_index in range(len(columns)):
            value = distances[row_index, column_index]
            text = "-" if np.isnan(value) else f"{value:.1f}"
            colour = "white" if not np.isnan(value) and value > dark_above else "black"
            heat_axes.text(column_index, row_index, text, ha="center", va="center", fontsize=6, color=colour)
    heat_axes.set_xticks(np.arange(len(columns)), columns, rotation=45, ha="right", fontsize=8)
    heat_axes.set_yticks(positions, [])
    heat_axes.set_title("Distance to best per dataset")
    figure.colorbar(image, ax=heat_axes, label="|value - best| (mIoU points or RMSE)")

    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=150)
    plt.close(figure)
    logger.info("Wrote leaderboard figure %s", path)
    return path
