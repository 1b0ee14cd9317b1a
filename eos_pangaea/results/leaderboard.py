"""Aggregate runs over seeds and compute Avg DTB, ranks and bootstrap intervals.

Avg DTB (average distance to best) is defined in the EoS-FM paper
(arXiv 2511.21523). For each dataset, the best value is taken over all
compared models (max for mIoU, min for RMSE). Each model's Avg DTB is then
the mean of ``|value - best|`` over the datasets it has. A model that lacks a dataset is never
given a value for it: its Avg DTB is over the datasets it has, its coverage
gives how many that is, and it gets no overall rank.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from eos_pangaea.results.reference import DatasetSpec, ReferenceTable, load_dataset_specs
from eos_pangaea.results.runs import COMPLETE, RunRecord

logger = logging.getLogger(__name__)

REFERENCE_SOURCE = "reference"
RUNS_SOURCE = "runs"

# A run value below the reference column's minimum divided by this, or above its maximum times
# this, gets a report line.
REFERENCE_RANGE_FACTOR = 2.0
# Label fractions closer than this are the same setting (0.1 written as 0.10000001).
LABEL_FRACTION_TOLERANCE = 1e-6


@dataclass
class Cell:
    """One model's result on one dataset.

    Attributes:
        mean: Mean over seeds (the printed value for reference rows).
        std: Sample standard deviation over seeds; None with fewer than two seeds.
        values: Per-seed values, ordered by seed.
        seeds: Seeds of ``values``; empty for reference rows.
        inferred: True for a reference value inferred rather than printed.
    """

    mean: float
    std: float | None = None
    values: tuple[float, ...] = ()
    seeds: tuple[int, ...] = ()
    inferred: bool = False


@dataclass
class ModelRow:
    """One model on the leaderboard.

    Attributes:
        model: Reference row name, or the encoder's Hydra choice name for runs
            (with `` (finetune)`` appended for ``finetune=true`` runs).
        source: ``reference`` or ``runs``.
        setting: ``frozen``, ``fully-trained`` or ``finetune``.
        cells: Results keyed by dataset column.
        distances: ``|mean - best|`` keyed by dataset column.
        ranks: Rank per dataset column, 1 for the best (ties share the lower rank).
        avg_dtb: Mean of ``distances``; None when the model has no dataset.
        coverage: Number of dataset columns the model has.
        rank: Overall rank by Avg DTB among models with every dataset; None otherwise.
        ci: Bootstrap confidence interval of ``avg_dtb`` over seeds, if computed.
        printed_avg_dtb: The Avg DTB printed in the paper, for reference rows.
    """

    model: str
    source: str
    setting: str
    cells: dict[str, Cell]
    distances: dict[str, float] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)
    avg_dtb: float | None = None
    coverage: int = 0
    rank: int | None = None
    ci: tuple[float, float] | None = None
    printed_avg_dtb: float | None = None


@dataclass
class Leaderboard:
    """The ranked table with everything needed to render it.

    Attributes:
        columns: Dataset columns, in table order.
        directions: ``max`` or ``min`` per column.
        best: Best mean per column over all rows.
        rows: Rows sorted by overall rank, then partial rows by coverage and Avg DTB.
        notes: Report lines: incomplete, invalid, skipped and duplicate runs,
            partial coverage and missing reference cells.
        label_fraction: PANGAEA ``limited_label_train`` of the compared results.
        reference: Citation of the reference table, or None when runs are ranked alone.
        reference_name: ``table2``, ``table3`` or None.
        confidence: Level of the bootstrap intervals, or None without bootstrap.
        bootstrap_samples: Number of bootstrap resamples (0 without bootstrap).
        runs: Every run that was read, ranked or not.
    """

    columns: list[str]
    directions: dict[str, str]
    best: dict[str, float]
    rows: list[ModelRow]
    notes: list[str]
    label_fraction: float | None
    reference: str | None = None
    reference_name: str | None = None
    confidence: float | None = None
    bootstrap_samples: int = 0
    runs: list[RunRecord] = field(default_factory=list)


def build_leaderboard(
    runs: list[RunRecord] | None = None,
    reference: ReferenceTable | None = None,
    label_fraction: float | None = None,
    bootstrap: int = 0,
    confidence: float = 0.95,
    random_seed: int = 0,
    notes: list[str] | None = None,
) -> Leaderboard:
    """Rank runs, alone or against a reference table, by Avg DTB.

    Args:
        runs: Records from :func:`eos_pangaea.results.runs.read_runs`.
        reference: A reference table, or None to rank the runs alone.
        label_fraction: Keep runs with this ``limited_label_train``. Defaults
            to the reference table's, or to the runs' single value.
        bootstrap: Number of bootstrap resamples over seeds for confidence
            intervals of Avg DTB; 0 computes none.
        confidence: Level of the bootstrap intervals, in (0, 1).
        random_seed: Seed of the bootstrap's random generator.
        notes: Report lines gathered before this call, kept at the top.

    Returns:
        The leaderboard. Every run that is not ranked has a line in ``notes``.

    Raises:
        ValueError: If there is nothing to rank, the label fraction conflicts
            with the reference table, the runs mix label fractions and none
            was chosen, or ``confidence`` is outside (0, 1).
    """
    runs = list(runs or [])
    notes = list(notes or [])
    if reference is None and not runs:
        raise ValueError("nothing to rank: pass experiment folders, a reference table, or both")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence} is not in (0, 1); use for example 0.95")
    specs_by_column = {spec.column: spec for spec in load_dataset_specs().values()}

    label_fraction = _choose_label_fraction(runs, reference, label_fraction)
    rows: list[ModelRow] = []
    if reference is not None:
        rows.extend(_reference_rows(reference, notes))
    rows.extend(_run_rows(runs, label_fraction, reference, specs_by_column, notes))

    if reference is not None:
        columns = list(reference.columns)
    else:
        present = {column for row in rows for column in row.cells}
        columns = [spec.column for spec in specs_by_column.values() if spec.column in present]
    directions = {column: specs_by_column[column].direction for column in columns}
    _check_percent_scale(rows, columns, specs_by_column, notes)

    best = _score_rows(rows, columns, directions)
    _note_partial_coverage(rows, columns, notes)
    if bootstrap > 0:
        _bootstrap_intervals(rows, columns, directions, bootstrap, confidence, random_seed)
    rows = _sort_and_rank(rows, len(columns))

    return Leaderboard(
        columns=columns,
        directions=directions,
        best=best,
        rows=rows,
        notes=notes,
        label_fraction=label_fraction,
        reference=reference.source if reference is not None else None,
        reference_name=reference.name if reference is not None else None,
        confidence=confidence if bootstrap > 0 else None,
        bootstrap_samples=bootstrap,
        runs=runs,
    )


def avg_dtb(
    values: dict[str, dict[str, float]], directions: dict[str, str]
) -> tuple[dict[str, float], dict[str, dict[str, float]], dict[str, float | None]]:
    """Compute the best value per dataset, distances to it and Avg DTB per model.

    Args:
        values: Mean result per model, then per dataset column. A missing
            dataset is left out of the inner mapping, never filled.
        directions: ``max`` or ``min`` per dataset column.

    Returns:
        ``(best, distances, averages)``: the best value per column, each
        model's ``|value - best|`` per column it has, and each model's mean
        distance (None for a model with no column).
    """
    best: dict[str, float] = {}
    for column, direction in directions.items():
        present = [cells[column] for cells in values.values() if column in cells]
        if present:
            best[column] = max(present) if direction == "max" else min(present)

    distances = {
        model: {column: abs(value - best[column]) for column, value in cells.items() if column in best}
        for model, cells in values.items()
    }
    averages = {
        model: (sum(model_distances.values()) / len(model_distances) if model_distances else None)
        for model, model_distances in distances.items()
    }
    return best, distances, averages


def _choose_label_fraction(
    runs: list[RunRecord], reference: ReferenceTable | None, requested: float | None
) -> float | None:
    if requested is not None and not 0 < requested <= 1:
        raise ValueError(f"label fraction {requested} is not in (0, 1]; use for example 1.0 or 0.1")
    if reference is not None:
        if requested is not None and not _same_fraction(requested, reference.label_fraction):
            raise ValueError(
                f"--labels {requested} conflicts with {reference.name} (Table {reference.paper_table}), "
                f"which uses label fraction {reference.label_fraction}; drop --labels or pick the other table"
            )
        return reference.label_fraction
    if requested is not None:
        return requested
    fractions = sorted({run.label_fraction for run in runs if run.status == COMPLETE and run.label_fraction is not None})
    if len(fractions) > 1:
        raise ValueError(
            f"the runs mix label fractions {fractions}; pass --labels with one of them to rank them separately"
        )
    return fractions[0] if fractions else None


def _same_fraction(first: float, second: float) -> bool:
    return abs(first - second) <= LABEL_FRACTION_TOLERANCE


def _reference_rows(reference: ReferenceTable, notes: list[str]) -> list[ModelRow]:
    rows = [
        ModelRow(
            model=row.model,
            source=REFERENCE_SOURCE,
            setting=row.setting,
            cells={column: Cell(mean=cell.value, inferred=cell.inferred) for column, cell in row.cells.items()},
            printed_avg_dtb=row.printed_avg_dtb,
        )
        for row in reference.rows
    ]
    for model, column in reference.missing_cells:
        notes.append(
            f"reference {reference.name}: {model} has no {column} value in the paper's source text; "
            "left empty, not imputed (--use-inferred fills it with the value implied by the printed Avg DTB)"
        )
    for row in rows:
        for column, cell in row.cells.items():
            if cell.inferred:
                notes.append(
                    f"reference {reference.name}: {row.model} {column} = {cell.mean:.2f} is inferred from the "
                    "printed Avg DTB, not printed in the paper"
                )
    return rows


def _run_rows(
    runs: list[RunRecord],
    label_fraction: float | None,
    reference: ReferenceTable | None,
    specs_by_column: dict[str, DatasetSpec],
    notes: list[str],
) -> list[ModelRow]:
    usable: list[RunRecord] = []
    for run in runs:
        if run.status != COMPLETE:
            for problem in run.problems:
                notes.append(f"{run.path.name}: {run.status}, not ranked: {problem}")
            continue
        if label_fraction is not None and not _same_fraction(run.label_fraction, label_fraction):
            table_hint = " --reference table2" if _same_fraction(run.label_fraction, 1.0) else ""
            notes.append(
                f"{run.path.name}: skipped: limited_label_train {run.label_fraction} differs from this "
                f"leaderboard's {label_fraction}; pass --labels {run.label_fraction}{table_hint} to rank it"
            )
            continue
        if reference is not None and run.column not in reference.columns:
            notes.append(f"{run.path.name}: skipped: {run.column} is not a column of {reference.name}")
            continue
        if run.metric == "mIoU" and not 0 <= run.value <= 100:
            notes.append(
                f"{run.path.name}: invalid, not ranked: test mIoU {run.value} is outside 0-100 percent"
            )
            continue
        usable.append(run)

    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for run in _drop_duplicates(usable, notes):
        if reference is not None:
            _check_reference_range(run, reference, notes)
        groups.setdefault((_model_name(run), run.column), []).append(run)

    rows: dict[str, ModelRow] = {}
    for (model, column), group in groups.items():
        group.sort(key=lambda run: run.seed)
        decoders = sorted({run.decoder for run in group if run.decoder})
        if len(decoders) > 1:
            notes.append(f"{model} on {column}: seeds with different decoders {decoders} are averaged together")
        values = tuple(run.value for run in group)
        row = rows.setdefault(
            model,
            ModelRow(model=model, source=RUNS_SOURCE, setting="finetune" if group[0].finetune else "frozen", cells={}),
        )
        row.cells[column] = Cell(
            mean=float(np.mean(values)),
            std=float(np.std(values, ddof=1)) if len(values) > 1 else None,
            values=values,
            seeds=tuple(run.seed for run in group),
        )
    return list(rows.values())


def _model_name(run: RunRecord) -> str:
    return f"{run.encoder} (finetune)" if run.finetune else str(run.encoder)


def _drop_duplicates(runs: list[RunRecord], notes: list[str]) -> list[RunRecord]:
    """Keep the newest run per (encoder, dataset, label fraction, seed).

    PANGAEA's folder hash covers Hydra's output directory, so identical
    settings get different hashes and duplicates must be found from the settings.
    """
    groups: dict[tuple, list[RunRecord]] = {}
    for run in runs:
        key = (_model_name(run), run.column, round(run.label_fraction, 6), run.seed)
        groups.setdefault(key, []).append(run)

    kept: list[RunRecord] = []
    for (model, column, fraction, seed), group in groups.items():
        group.sort(key=lambda run: (run.timestamp or "", run.path.name))
        newest = group[-1]
        kept.append(newest)
        for older in group[:-1]:
            notes.append(
                f"{older.path.name}: duplicate, not ranked: same encoder {model}, dataset {column}, label fraction "
                f"{fraction} and seed {seed} as {newest.path.name}, the newer run, which is used; "
                "delete one folder or give the runs different seeds"
            )
    return kept


def _check_reference_range(run: RunRecord, reference: ReferenceTable, notes: list[str]) -> None:
    """Flag a run whose value is far outside the reference column, which suggests other units or a broken run.

    The run stays ranked, but such a value can become the column's best and
    move every row's distance to it. Far means below half of the reference
    minimum or above twice the maximum.
    """
    values = [row.cells[run.column].value for row in reference.rows if run.column in row.cells]
    if not values:
        return
    low, high = min(values), max(values)
    if low / REFERENCE_RANGE_FACTOR <= run.value <= high * REFERENCE_RANGE_FACTOR:
        return
    notes.append(
        f"{run.path.name}: test {run.metric} {run.value:g} is far outside the {reference.name} values "
        f"{low:g}-{high:g} for {run.column} (below half the minimum or above twice the maximum); it is "
        "still ranked and can move every row's distance to the best, so check the run's units, dataset "
        "and training"
    )


def _check_percent_scale(
    rows: list[ModelRow], columns: list[str], specs_by_column: dict[str, DatasetSpec], notes: list[str]
) -> None:
    """Warn where an mIoU looks like a fraction: PANGAEA logs and the paper's tables use percent."""
    for row in rows:
        for column in columns:
            cell = row.cells.get(column)
            if cell is None or specs_by_column[column].metric != "mIoU":
                continue
            largest = max(cell.values) if cell.values else cell.mean
            if largest <= 1.0:
                notes.append(
                    f"{row.model} on {column}: mIoU {cell.mean:.4f} looks like a fraction, but the table is in "
                    "percent; check the log or multiply by 100"
                )


def _score_rows(rows: list[ModelRow], columns: list[str], directions: dict[str, str]) -> dict[str, float]:
    values = {row.model: {c: row.cells[c].mean for c in columns if c in row.cells} for row in rows}
    best, distances, averages = avg_dtb(values, directions)
    for row in rows:
        row.distances = distances[row.model]
        row.avg_dtb = averages[row.model]
        row.coverage = len(row.distances)
        row.ranks = _ranks_per_dataset(row.model, values, columns, directions)
    return best


def _ranks_per_dataset(
    model: str, values: dict[str, dict[str, float]], columns: list[str], directions: dict[str, str]
) -> dict[str, int]:
    ranks: dict[str, int] = {}
    for column in columns:
        if column not in values[model]:
            continue
        own = values[model][column]
        others = [cells[column] for cells in values.values() if column in cells]
        better = [v for v in others if (v > own if directions[column] == "max" else v < own)]
        ranks[column] = len(better) + 1
    return ranks


def _note_partial_coverage(rows: list[ModelRow], columns: list[str], notes: list[str]) -> None:
    for row in rows:
        missing = [column for column in columns if column not in row.cells]
        if missing and row.coverage:
            notes.append(
                f"{row.model}: covers {row.coverage} of {len(columns)} datasets (missing: {', '.join(missing)}); "
                "its Avg DTB is over those it has and it gets no overall rank"
            )
        elif not row.coverage:
            notes.append(f"{row.model}: has no dataset of this leaderboard and no Avg DTB")


def _bootstrap_intervals(
    rows: list[ModelRow],
    columns: list[str],
    directions: dict[str, str],
    samples: int,
    confidence: float,
    random_seed: int,
) -> None:
    """Resample each run cell's seeds with replacement and recompute Avg DTB.

    Reference cells and cells with one seed stay fixed. The best value per
    dataset is recomputed in every resample, so every row gets an interval.
    """
    rng = np.random.default_rng(random_seed)
    matrix = np.full((samples, len(rows), len(columns)), np.nan)
    for row_index, row in enumerate(rows):
        for column_index, column in enumerate(columns):
            cell = row.cells.get(column)
            if cell is None:
                continue
            if len(cell.values) > 1:
                draws = rng.choice(np.asarray(cell.values), size=(samples, len(cell.values)), replace=True)
                matrix[:, row_index, column_index] = draws.mean(axis=1)
            else:
                matrix[:, row_index, column_index] = cell.mean

    maximize = np.array([directions[column] == "max" for column in columns])
    with np.errstate(all="ignore"):
        best = np.where(maximize, np.nanmax(matrix, axis=1), np.nanmin(matrix, axis=1))
        distances = np.abs(matrix - best[:, None, :])
    tail = (1 - confidence) / 2 * 100
    for row_index, row in enumerate(rows):
        if row.coverage == 0:
            continue
        averages = np.nanmean(distances[:, row_index, :], axis=1)
        low, high = np.percentile(averages, [tail, 100 - tail])
        row.ci = (float(low), float(high))


def _sort_and_rank(rows: list[ModelRow], column_count: int) -> list[ModelRow]:
    def sort_key(row: ModelRow) -> tuple:
        full = row.coverage == column_count and row.avg_dtb is not None
        return (not full, -row.coverage, math.inf if row.avg_dtb is None else row.avg_dtb, row.model)

    ordered = sorted(rows, key=sort_key)
    rank = 0
    for row in ordered:
        if row.coverage == column_count and row.avg_dtb is not None:
            rank += 1
            row.rank = rank
    return ordered
