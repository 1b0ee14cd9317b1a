"""Shipped data for the leaderboard: dataset mapping and the paper's tables.

The reference tables are Tables 2 (all labels) and 3 (10 % labels) of the
EoS-FM paper (arXiv 2511.21523), stored as CSV under ``eos_pangaea/data/reference``
with their source in ``tables.yaml``. ``eos_pangaea/data/pangaea_results.yaml``
maps PANGAEA's ``dataset_name`` values to the tables' columns and gives the
metric direction of each dataset.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
REFERENCE_DIR = DATA_DIR / "reference"
RESULTS_MAPPING_PATH = DATA_DIR / "pangaea_results.yaml"
TABLES_PATH = REFERENCE_DIR / "tables.yaml"

DIRECTIONS = ("max", "min")

# Columns of the reference CSV files that are not datasets.
MODEL_COLUMN = "model"
SETTING_COLUMN = "setting"
PRINTED_AVG_DTB_COLUMN = "avg_dtb_printed"


@dataclass(frozen=True)
class DatasetSpec:
    """One PANGAEA dataset with its table column, metric and direction.

    Attributes:
        dataset_name: PANGAEA's ``dataset_name`` (for example ``SN7CD``).
        column: Column header in the reference tables (for example ``SpaceNet7``).
        config_names: Hydra choice names of the dataset configs that load it.
        task: ``segmentation``, ``change_detection`` or ``regression``.
        metric: Test metric read from the logs, ``mIoU`` (percent) or ``RMSE``.
        direction: ``max`` when higher is better, ``min`` when lower is better.
    """

    dataset_name: str
    column: str
    config_names: tuple[str, ...]
    task: str
    metric: str
    direction: str


@dataclass(frozen=True)
class DecoderSpec:
    """A PANGAEA decoder config: its choice name and what it sets in config.yaml."""

    name: str
    target: str
    multi_temporal_strategy: str | None = None


@dataclass(frozen=True)
class ReferenceCell:
    """One value of a reference table; ``inferred`` marks a value the paper does not print."""

    value: float
    inferred: bool = False


@dataclass
class ReferenceRow:
    """One model of a reference table."""

    model: str
    setting: str
    cells: dict[str, ReferenceCell]
    printed_avg_dtb: float | None


@dataclass
class ReferenceTable:
    """A reference table with its provenance.

    Attributes:
        name: ``table2`` or ``table3``.
        paper_table: Table number in the paper.
        description: What the table measures.
        label_fraction: PANGAEA's ``limited_label_train`` for the table.
        columns: Dataset columns in the order of the CSV file.
        rows: One row per model, in the order of the CSV file.
        source: Citation of the paper.
        missing_cells: ``(model, column)`` pairs that are empty in the table
            and not filled by an inferred value.
    """

    name: str
    paper_table: int
    description: str
    label_fraction: float
    columns: list[str]
    rows: list[ReferenceRow]
    source: str
    missing_cells: list[tuple[str, str]] = field(default_factory=list)


def load_dataset_specs(path: Path = RESULTS_MAPPING_PATH) -> dict[str, DatasetSpec]:
    """Load the mapping from PANGAEA ``dataset_name`` to table column.

    Args:
        path: YAML file with a ``datasets`` mapping.

    Returns:
        Dataset specs keyed by PANGAEA ``dataset_name``, in file order.

    Raises:
        ValueError: If an entry lacks a key or names an unknown direction.
    """
    document = _load_yaml(path)
    specs: dict[str, DatasetSpec] = {}
    for dataset_name, entry in document.get("datasets", {}).items():
        missing = {"column", "config_names", "task", "metric", "direction"} - set(entry)
        if missing:
            raise ValueError(f"{path}: dataset {dataset_name!r} lacks the keys {sorted(missing)}")
        if entry["direction"] not in DIRECTIONS:
            raise ValueError(
                f"{path}: dataset {dataset_name!r} has direction {entry['direction']!r}; "
                f"use one of {DIRECTIONS}"
            )
        specs[dataset_name] = DatasetSpec(
            dataset_name=dataset_name,
            column=entry["column"],
            config_names=tuple(entry["config_names"]),
            task=entry["task"],
            metric=entry["metric"],
            direction=entry["direction"],
        )
    return specs


def load_decoder_specs(path: Path = RESULTS_MAPPING_PATH) -> dict[str, DecoderSpec]:
    """Load PANGAEA's decoder choice names with the class each one instantiates.

    Args:
        path: YAML file with a ``decoders`` mapping.

    Returns:
        Decoder specs keyed by Hydra choice name.
    """
    document = _load_yaml(path)
    return {
        name: DecoderSpec(
            name=name,
            target=entry["target"],
            multi_temporal_strategy=entry.get("multi_temporal_strategy"),
        )
        for name, entry in document.get("decoders", {}).items()
    }


def reference_table_names() -> list[str]:
    """Return the names of the shipped reference tables (``table2``, ``table3``)."""
    return list(_load_yaml(TABLES_PATH)["tables"])


def load_reference_table(name: str, use_inferred: bool = False) -> ReferenceTable:
    """Load a shipped reference table.

    Args:
        name: ``table2`` (all labels) or ``table3`` (10 % labels).
        use_inferred: Fill the cells that the paper leaves empty with the
            values inferred from its printed Avg DTB, marked as inferred.

    Returns:
        The table. Empty cells that stay empty are listed in ``missing_cells``.

    Raises:
        ValueError: If ``name`` is not a shipped table, or the CSV has a
            column that is not a known dataset or a value that is not a number.
    """
    metadata = _load_yaml(TABLES_PATH)
    tables = metadata["tables"]
    if name not in tables:
        raise ValueError(f"unknown reference table {name!r}; use one of {sorted(tables)} or 'none'")
    entry = tables[name]
    source = metadata["source"]
    citation = f"{source['authors']}, \"{source['title']}\", arXiv {source['arxiv']}, Table {entry['paper_table']}"

    csv_path = REFERENCE_DIR / entry["file"]
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = list(reader.fieldnames or [])
        records = list(reader)

    columns = [c for c in header if c not in (MODEL_COLUMN, SETTING_COLUMN, PRINTED_AVG_DTB_COLUMN)]
    known_columns = {spec.column for spec in load_dataset_specs().values()}
    unknown = [c for c in columns if c not in known_columns]
    if unknown:
        raise ValueError(f"{csv_path}: columns {unknown} are not datasets listed in {RESULTS_MAPPING_PATH.name}")

    inferred = {(cell["model"], cell["column"]): float(cell["value"]) for cell in entry.get("inferred_cells", [])}
    rows: list[ReferenceRow] = []
    missing_cells: list[tuple[str, str]] = []
    for record in records:
        model = record[MODEL_COLUMN]
        cells: dict[str, ReferenceCell] = {}
        for column in columns:
            text = (record.get(column) or "").strip()
            if text:
                cells[column] = ReferenceCell(_parse_number(text, csv_path, model, column))
            elif use_inferred and (model, column) in inferred:
                cells[column] = ReferenceCell(inferred[(model, column)], inferred=True)
            else:
                missing_cells.append((model, column))
        printed = (record.get(PRINTED_AVG_DTB_COLUMN) or "").strip()
        rows.append(
            ReferenceRow(
                model=model,
                setting=record.get(SETTING_COLUMN, ""),
                cells=cells,
                printed_avg_dtb=_parse_number(printed, csv_path, model, PRINTED_AVG_DTB_COLUMN) if printed else None,
            )
        )

    return ReferenceTable(
        name=name,
        paper_table=int(entry["paper_table"]),
        description=entry["description"],
        label_fraction=float(entry["label_fraction"]),
        columns=columns,
        rows=rows,
        source=citation,
        missing_cells=missing_cells,
    )


def _parse_number(text: str, path: Path, model: str, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{path}: {model!r}, column {column!r}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{path}: {model!r}, column {column!r}: {text!r} is not a finite number")
    return value


def _load_yaml(path: Path) -> dict:
    with path.open(encoding="utf-8") as handle:
        document = yaml.safe_load(handle)
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a YAML mapping, found {type(document).__name__}")
    return document
