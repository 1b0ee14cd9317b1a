"""Render a :class:`~eos_pangaea.results.leaderboard.Leaderboard` as text, Markdown, CSV, LaTeX or JSON.

Cells show the mean over seeds, with the standard deviation when there are
at least two seeds. The best value per dataset is bold in Markdown and LaTeX.
A reference value inferred from the printed Avg DTB, rather than printed in
the EoS-FM paper (arXiv 2511.21523), carries a ``*`` (a dagger in LaTeX). Missing values are left empty, never filled.
"""

from __future__ import annotations

import csv
import io
import json
import math

from eos_pangaea.results.leaderboard import Cell, Leaderboard, ModelRow

FORMATS = ("text", "markdown", "csv", "latex", "json")


def render(leaderboard: Leaderboard, fmt: str = "text") -> str:
    """Render the leaderboard in one of :data:`FORMATS`.

    Args:
        leaderboard: Result of :func:`~eos_pangaea.results.leaderboard.build_leaderboard`.
        fmt: ``text``, ``markdown``, ``csv``, ``latex`` or ``json``.

    Returns:
        The rendered table. Text, Markdown and JSON include the report lines;
        LaTeX has them as ``%`` comments; CSV has none (print them separately).

    Raises:
        ValueError: If ``fmt`` is not a known format.
    """
    renderers = {
        "text": to_text,
        "markdown": to_markdown,
        "csv": to_csv,
        "latex": to_latex,
        "json": to_json,
    }
    if fmt not in renderers:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    return renderers[fmt](leaderboard)


def to_text(leaderboard: Leaderboard) -> str:
    """Render a fixed-width table for the terminal, followed by the report lines."""
    header, body = _table_cells(leaderboard, missing="-", mark_best=lambda text: text)
    widths = [max(len(line[index]) for line in [header, *body]) for index in range(len(header))]
    lines = [_caption(leaderboard), ""]
    lines.append("  ".join(text.ljust(width) for text, width in zip(header, widths)).rstrip())
    lines.append("  ".join("-" * width for width in widths))
    lines.extend("  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip() for line in body)
    lines.extend(_report_lines(leaderboard))
    return "\n".join(lines) + "\n"


def to_markdown(leaderboard: Leaderboard) -> str:
    """Render a Markdown table, best values in bold, followed by the report lines."""
    header, body = _table_cells(leaderboard, missing="", mark_best=lambda text: f"**{text}**")
    lines = [_caption(leaderboard), ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" if index < 3 else "---:" for index in range(len(header))) + "|")
    lines.extend("| " + " | ".join(line) + " |" for line in body)
    report = _report_lines(leaderboard)
    if report:
        lines.extend(["", "Report:", ""])
        lines.extend(f"- {note}" for note in report[2:])
    return "\n".join(lines) + "\n"


def to_csv(leaderboard: Leaderboard) -> str:
    """Render one CSV row per model: Avg DTB, coverage, then mean, std, seeds, rank and distance per dataset."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["rank", "model", "source", "setting", "coverage", "avg_dtb", "ci_low", "ci_high", "avg_dtb_printed"]
    for column in leaderboard.columns:
        header += [column, f"{column} std", f"{column} seeds", f"{column} rank", f"{column} dtb", f"{column} inferred"]
    writer.writerow(header)
    for row in leaderboard.rows:
        line = [
            _blank(row.rank),
            row.model,
            row.source,
            row.setting,
            row.coverage,
            _blank(row.avg_dtb),
            _blank(row.ci[0] if row.ci else None),
            _blank(row.ci[1] if row.ci else None),
            _blank(row.printed_avg_dtb),
        ]
        for column in leaderboard.columns:
            cell = row.cells.get(column)
            if cell is None:
                line += ["", "", "", "", "", ""]
                continue
            line += [
                _blank(cell.mean),
                _blank(cell.std),
                len(cell.values) if cell.values else "",
                _blank(row.ranks.get(column)),
                _blank(row.distances.get(column)),
                "yes" if cell.inferred else "no",
            ]
        writer.writerow(line)
    return buffer.getvalue()


def to_latex(leaderboard: Leaderboard) -> str:
    """Render a booktabs ``tabular``, best values in bold, report lines as comments."""
    header, body = _table_cells(
        leaderboard,
        missing="--",
        mark_best=lambda text: f"\\textbf{{{text}}}",
        plus_minus=" $\\pm$ ",
        inferred_mark="$^\\dagger$",
    )
    escaped_header = [_latex_escape(text) for text in header]
    escaped_body = [[_latex_escape(text, keep_markup=True) for text in line] for line in body]
    lines = [f"% {_caption(leaderboard)}"]
    lines.extend(f"% {note}" for note in _report_lines(leaderboard)[2:])
    lines.append("\\begin{tabular}{lll" + "r" * (len(header) - 3) + "}")
    lines.append("\\toprule")
    lines.append(" & ".join(escaped_header) + " \\\\")
    lines.append("\\midrule")
    lines.extend(" & ".join(line) + " \\\\" for line in escaped_body)
    lines.append("\\bottomrule")
    lines.append("\\end{tabular}")
    return "\n".join(lines) + "\n"


def to_json(leaderboard: Leaderboard) -> str:
    """Render every number, report line and run status as JSON (NaN written as null)."""
    document = {
        "label_fraction": leaderboard.label_fraction,
        "reference": leaderboard.reference_name,
        "reference_source": leaderboard.reference,
        "columns": leaderboard.columns,
        "directions": leaderboard.directions,
        "best": leaderboard.best,
        "bootstrap_samples": leaderboard.bootstrap_samples,
        "confidence": leaderboard.confidence,
        "rows": [_row_document(row, leaderboard.columns) for row in leaderboard.rows],
        "notes": leaderboard.notes,
        "runs": [
            {
                "path": str(run.path),
                "status": run.status,
                "encoder": run.encoder,
                "decoder": run.decoder,
                "dataset_name": run.dataset_name,
                "column": run.column,
                "task": run.task,
                "seed": run.seed,
                "label_fraction": run.label_fraction,
                "finetune": run.finetune,
                "metric": run.metric,
                "value": _finite_or_none(run.value),
                "per_class": {name: _finite_or_none(value) for name, value in run.per_class.items()},
                "log_file": run.log_file,
                "problems": run.problems,
            }
            for run in leaderboard.runs
        ],
    }
    return json.dumps(document, indent=2, allow_nan=False) + "\n"


def _row_document(row: ModelRow, columns: list[str]) -> dict:
    return {
        "rank": row.rank,
        "model": row.model,
        "source": row.source,
        "setting": row.setting,
        "coverage": row.coverage,
        "avg_dtb": row.avg_dtb,
        "ci": list(row.ci) if row.ci else None,
        "avg_dtb_printed": row.printed_avg_dtb,
        "cells": {
            column: {
                "mean": cell.mean,
                "std": cell.std,
                "values": list(cell.values),
                "seeds": list(cell.seeds),
                "inferred": cell.inferred,
                "distance": row.distances.get(column),
                "rank": row.ranks.get(column),
            }
            for column in columns
            if (cell := row.cells.get(column)) is not None
        },
    }


def _caption(leaderboard: Leaderboard) -> str:
    labels = "unknown" if leaderboard.label_fraction is None else f"{leaderboard.label_fraction:g}"
    against = f"against {leaderboard.reference}" if leaderboard.reference else "runs ranked alone"
    directions = ", ".join(
        f"{column} lower is better" for column, direction in leaderboard.directions.items() if direction == "min"
    )
    caption = f"Avg DTB leaderboard, label fraction {labels}, {against}. mIoU in percent, higher is better"
    return caption + (f"; {directions}." if directions else ".")


def _table_cells(
    leaderboard: Leaderboard,
    missing: str,
    mark_best,
    plus_minus: str = " ± ",
    inferred_mark: str = "*",
) -> tuple[list[str], list[list[str]]]:
    with_ci = any(row.ci for row in leaderboard.rows)
    with_printed = any(row.printed_avg_dtb is not None for row in leaderboard.rows)
    header = ["Rank", "Model", "Source", *leaderboard.columns, "Avg DTB"]
    if with_ci:
        header.append(f"{leaderboard.confidence:.0%} CI")
    header.append("Coverage")
    if with_printed:
        header.append("Printed")

    body: list[list[str]] = []
    for row in leaderboard.rows:
        line = ["" if row.rank is None else str(row.rank), row.model, f"{row.source} ({row.setting})"]
        for column in leaderboard.columns:
            cell = row.cells.get(column)
            if cell is None:
                line.append(missing)
                continue
            text = _format_cell(cell, plus_minus, inferred_mark)
            line.append(mark_best(text) if row.ranks.get(column) == 1 else text)
        line.append(missing if row.avg_dtb is None else f"{row.avg_dtb:.2f}")
        if with_ci:
            line.append(f"{row.ci[0]:.2f}-{row.ci[1]:.2f}" if row.ci else missing)
        line.append(f"{row.coverage}/{len(leaderboard.columns)}")
        if with_printed:
            line.append(missing if row.printed_avg_dtb is None else f"{row.printed_avg_dtb:.2f}")
        body.append(line)
    return header, body


def _format_cell(cell: Cell, plus_minus: str, inferred_mark: str) -> str:
    text = f"{cell.mean:.2f}"
    if cell.std is not None:
        text += f"{plus_minus}{cell.std:.2f}"
    if len(cell.values) > 1:
        text += f" (n={len(cell.values)})"
    if cell.inferred:
        text += inferred_mark
    return text


def _report_lines(leaderboard: Leaderboard) -> list[str]:
    lines: list[str] = []
    if any(cell.inferred for row in leaderboard.rows for cell in row.cells.values()):
        lines.append("* inferred from the printed Avg DTB, not printed in the paper")
    lines.extend(leaderboard.notes)
    return ["", "Report:", *lines] if lines else []


def _latex_escape(text: str, keep_markup: bool = False) -> str:
    if keep_markup and (text.startswith("\\textbf{") or "$" in text):
        return text.replace("%", "\\%").replace("&", "\\&").replace("_", "\\_")
    for char, replacement in (("\\", "\\textbackslash{}"), ("%", "\\%"), ("&", "\\&"), ("_", "\\_"), ("#", "\\#")):
        text = text.replace(char, replacement)
    return text


def _blank(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
