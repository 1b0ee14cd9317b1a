"""Read PANGAEA experiment folders: settings from the config, test metric from the logs.

PANGAEA (``pangaea/run.py``, commit f20f3d3) names each experiment folder
``<YYYYmmdd_HHMMSS>_<6 hex>_<encoder>_<decoder>_<dataset>`` with the Hydra
choice names, saves the unresolved config to ``configs/config.yaml`` and logs
rank 0 to ``train.log-0``. A training run ends with the test evaluation, so
the final ``[test]`` block is in ``train.log-0``; a test-only run
(``--config-name=test ckpt_dir=...``) writes ``test.log-0``.

:func:`read_run` does not raise on bad run data (a missing or unreadable
config, a cut-off log, a NaN metric). It stores each problem on the returned
:class:`RunRecord`, so that the leaderboard can report it.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import yaml

from eos_pangaea.results.reference import DatasetSpec, DecoderSpec, load_dataset_specs, load_decoder_specs

logger = logging.getLogger(__name__)

COMPLETE = "complete"
INCOMPLETE = "incomplete"
INVALID = "invalid"

CONFIG_PATH = Path("configs") / "config.yaml"
TRAIN_LOG = "train.log-0"
TEST_LOG = "test.log-0"

FOLDER_PATTERN = re.compile(r"^(?P<timestamp>\d{8}_\d{6})_(?P<hash>[0-9a-f]{6})_(?P<rest>.+)$")
RECORD_START = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) - [^-]+ - [^-]+ - ?(?P<message>.*)$")
TEST_HEADER = re.compile(r"^\[test\] ------- (?P<name>.+?) --------$")
TEST_SEPARATOR = "[test]-------------------"

# PANGAEA's trainer classes and the task each one runs.
TRAINER_TASKS = {"SegTrainer": "segmentation", "RegTrainer": "regression"}

RERUN_HINT = (
    "rerun the test with `torchrun --nproc_per_node=1 pangaea/run.py --config-name=test ckpt_dir={path}`"
)


@dataclass
class RunRecord:
    """One PANGAEA experiment folder as read from disk.

    Attributes:
        path: The experiment folder.
        status: ``complete`` (has a final test metric), ``incomplete`` (no
            final test block) or ``invalid`` (cannot be ranked, see ``problems``).
        encoder: Hydra choice name of the encoder, from the folder name.
        decoder: Hydra choice name of the decoder.
        dataset_name: PANGAEA ``dataset_name`` from the config.
        column: Reference-table column of the dataset, if known.
        task: ``segmentation`` or ``regression``, from the trainer class.
        seed: ``seed`` from the config.
        label_fraction: ``limited_label_train`` from the config.
        finetune: ``finetune`` from the config.
        timestamp: ``YYYYmmdd_HHMMSS`` from the folder name.
        metric: ``mIoU`` (percent) or ``RMSE``.
        value: Final test value of ``metric``.
        per_class: Per-class test IoU in percent (empty for regression).
        log_file: Name of the log the value was read from.
        problems: Report lines, each naming what is wrong and the fix.
    """

    path: Path
    status: str = INCOMPLETE
    encoder: str | None = None
    decoder: str | None = None
    dataset_name: str | None = None
    column: str | None = None
    task: str | None = None
    seed: int | None = None
    label_fraction: float | None = None
    finetune: bool | None = None
    timestamp: str | None = None
    metric: str | None = None
    value: float | None = None
    per_class: dict[str, float] = field(default_factory=dict)
    log_file: str | None = None
    problems: list[str] = field(default_factory=list)


@dataclass
class TestResult:
    """The last ``[test]`` block of a log."""

    metric: str | None
    value: float | None
    per_class: dict[str, float]
    problem: str | None = None


def find_run_dirs(paths: Iterable[Path | str], max_depth: int = 2) -> tuple[list[Path], list[str]]:
    """Find PANGAEA experiment folders at or below the given paths.

    A folder is an experiment folder when it has ``configs/config.yaml``, a
    ``train.log-*`` or ``test.log-*`` file, or a name in PANGAEA's
    ``<timestamp>_<hash>_...`` pattern. Other folders are searched
    ``max_depth`` levels down, so a PANGAEA ``work_dir`` can be passed whole.

    Args:
        paths: Experiment folders or folders that contain them.
        max_depth: How many folder levels below each path to search.

    Returns:
        The experiment folders, sorted and without repeats, and one report
        line for each path under which none was found.

    Raises:
        FileNotFoundError: If a path does not exist or is not a folder.
    """
    found: list[Path] = []
    notes: list[str] = []
    for raw_path in paths:
        path = Path(raw_path)
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is not a folder; pass PANGAEA experiment folders or a work_dir")
        before = len(found)
        _collect_run_dirs(path, max_depth, found)
        if len(found) == before:
            notes.append(
                f"{path}: no PANGAEA experiment folder found (no configs/config.yaml, "
                f"{TRAIN_LOG} or <timestamp>_<hash>_ folder name within {max_depth} levels)"
            )
    unique = sorted({p.resolve(): p for p in found}.values(), key=lambda p: str(p))
    return unique, notes


def read_runs(paths: Iterable[Path | str]) -> tuple[list[RunRecord], list[str]]:
    """Read every experiment folder at or below ``paths``.

    Args:
        paths: Experiment folders or folders that contain them.

    Returns:
        One record per experiment folder, and report lines for paths that
        held no experiment folder.
    """
    run_dirs, notes = find_run_dirs(paths)
    dataset_specs = load_dataset_specs()
    decoder_specs = load_decoder_specs()
    records = [read_run(run_dir, dataset_specs, decoder_specs) for run_dir in run_dirs]
    return records, notes


def read_run(
    path: Path | str,
    dataset_specs: dict[str, DatasetSpec] | None = None,
    decoder_specs: dict[str, DecoderSpec] | None = None,
) -> RunRecord:
    """Read one PANGAEA experiment folder.

    Args:
        path: The experiment folder.
        dataset_specs: Known datasets keyed by ``dataset_name``; loaded from
            the package data when omitted.
        decoder_specs: Known decoders keyed by choice name; loaded from the
            package data when omitted.

    Returns:
        The record. Problems are stored in ``record.problems`` and set
        ``record.status``; nothing is raised for bad run data.
    """
    dataset_specs = load_dataset_specs() if dataset_specs is None else dataset_specs
    decoder_specs = load_decoder_specs() if decoder_specs is None else decoder_specs
    record = RunRecord(path=Path(path))

    config = _read_config(record)
    if config is not None:
        _apply_config(record, config, dataset_specs)
    _apply_folder_name(record, config, dataset_specs, decoder_specs)
    _apply_test_result(record, dataset_specs)

    for problem in record.problems:
        logger.debug("%s: %s", record.path, problem)
    return record


def parse_test_block(text: str) -> TestResult | None:
    """Extract the last ``[test]`` block of a PANGAEA log.

    Args:
        text: Contents of ``train.log-0`` or ``test.log-0``.

    Returns:
        The metric of the last test block (IoU for segmentation, RMSE for
        regression), or None when the log has no test block. A block cut off
        before its mean or RMSE line is returned with ``problem`` set.
    """
    lines = text.splitlines()
    if text and not text.endswith("\n"):
        # A log cut off mid-line could turn "19.291" into "19."; drop the partial line.
        lines = lines[:-1]

    result: TestResult | None = None
    for message_lines in _split_records(lines):
        header = TEST_HEADER.match(message_lines[0])
        if header is None:
            continue
        name = header.group("name")
        if name == "IoU":
            result = _parse_iou_block(message_lines[1:])
        elif name == "MSE and RMSE":
            result = _parse_rmse_block(message_lines[1:])
    return result


def _collect_run_dirs(path: Path, depth: int, found: list[Path]) -> None:
    if _is_run_dir(path):
        found.append(path)
        return
    if depth <= 0:
        return
    for child in sorted(path.iterdir()):
        if child.is_dir() and not child.name.startswith("."):
            _collect_run_dirs(child, depth - 1, found)


def _is_run_dir(path: Path) -> bool:
    if (path / CONFIG_PATH).is_file() or FOLDER_PATTERN.match(path.name):
        return True
    return any(path.glob("train.log-*")) or any(path.glob("test.log-*"))


def _read_config(record: RunRecord) -> dict | None:
    config_path = record.path / CONFIG_PATH
    if not config_path.is_file():
        _reject(
            record,
            f"{CONFIG_PATH} is missing, so seed, label fraction and dataset are unknown; "
            "copy the config.yaml PANGAEA saved for this run back into the folder"
        )
        return None
    try:
        # safe_load keeps Hydra interpolations such as ${dataset.img_size} as plain strings.
        with config_path.open(encoding="utf-8") as handle:
            config = yaml.safe_load(handle)
    except OSError as error:
        _reject(record, f"{CONFIG_PATH} cannot be read ({error}); check its permissions")
        return None
    except UnicodeDecodeError as error:
        _reject(
            record,
            f"{CONFIG_PATH} is not valid UTF-8 (byte {error.object[error.start:error.start + 1]!r} at offset "
            f"{error.start}), so it is not the YAML PANGAEA saved; restore the file PANGAEA saved"
        )
        return None
    except yaml.YAMLError as error:
        _reject(record, f"{CONFIG_PATH} is not valid YAML ({error}); restore the file PANGAEA saved")
        return None
    if not isinstance(config, dict):
        _reject(record, f"{CONFIG_PATH} is not a YAML mapping; restore the file PANGAEA saved")
        return None
    return config


def _apply_config(record: RunRecord, config: dict, dataset_specs: dict[str, DatasetSpec]) -> None:
    dataset = config.get("dataset") if isinstance(config.get("dataset"), dict) else {}
    record.dataset_name = dataset.get("dataset_name")
    if record.dataset_name is None:
        _reject(record, f"{CONFIG_PATH} has no dataset.dataset_name; the dataset of this run is unknown")
    elif record.dataset_name in dataset_specs:
        record.column = dataset_specs[record.dataset_name].column
    else:
        known = ", ".join(dataset_specs)
        _reject(
            record,
            f"dataset {record.dataset_name!r} is not a dataset of the reference tables ({known}); "
            "add it to eos_pangaea/data/pangaea_results.yaml to rank it"
        )

    task = config.get("task") if isinstance(config.get("task"), dict) else {}
    trainer = task.get("trainer") if isinstance(task.get("trainer"), dict) else {}
    trainer_class = str(trainer.get("_target_", "")).rpartition(".")[2]
    record.task = TRAINER_TASKS.get(trainer_class, trainer_class or None)

    seed = config.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        record.seed = seed
    else:
        _reject(record, f"seed {seed!r} in {CONFIG_PATH} is not an integer; seeds cannot be told apart")

    fraction = config.get("limited_label_train", 1)
    if isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0 < fraction <= 1:
        record.label_fraction = float(fraction)
    else:
        _reject(
            record,
            f"limited_label_train {fraction!r} in {CONFIG_PATH} is not a number in (0, 1]; "
            "the label fraction of this run is unknown"
        )

    finetune = config.get("finetune", False)
    if isinstance(finetune, bool):
        record.finetune = finetune
    else:
        _reject(record, f"finetune {finetune!r} in {CONFIG_PATH} is not true or false")


def _apply_folder_name(
    record: RunRecord,
    config: dict | None,
    dataset_specs: dict[str, DatasetSpec],
    decoder_specs: dict[str, DecoderSpec],
) -> None:
    match = FOLDER_PATTERN.match(record.path.name)
    if match is None:
        _reject(
            record,
            f"folder name {record.path.name!r} is not PANGAEA's <YYYYmmdd_HHMMSS>_<6 hex>_<encoder>_<decoder>_<dataset>; "
            "the encoder name is unknown, so rename the folder to that pattern"
        )
        return
    record.timestamp = match.group("timestamp")

    if record.dataset_name in dataset_specs:
        dataset_names = list(dataset_specs[record.dataset_name].config_names)
    else:
        dataset_names = [name for spec in dataset_specs.values() for name in spec.config_names]
    decoder_names = _decoder_candidates(config, decoder_specs)

    split = _split_folder_name(match.group("rest"), decoder_names, dataset_names)
    if split is None:
        _reject(
            record,
            f"cannot find the decoder and dataset names (candidates {decoder_names}) at the end of "
            f"folder name {record.path.name!r}; the encoder name is unknown"
        )
        return
    record.encoder, record.decoder, _ = split


def _decoder_candidates(config: dict | None, decoder_specs: dict[str, DecoderSpec]) -> list[str]:
    decoder = config.get("decoder") if config and isinstance(config.get("decoder"), dict) else {}
    target = decoder.get("_target_")
    strategy = decoder.get("multi_temporal_strategy")
    matching = [
        spec.name
        for spec in decoder_specs.values()
        if spec.target == target and spec.multi_temporal_strategy == strategy
    ]
    return matching or list(decoder_specs)


def _split_folder_name(
    rest: str, decoder_names: list[str], dataset_names: list[str]
) -> tuple[str, str, str] | None:
    """Split ``<encoder>_<decoder>_<dataset>``, where every part may contain underscores."""
    by_length = sorted(decoder_names, key=len, reverse=True)
    for decoder in by_length:
        for dataset in sorted(dataset_names, key=len, reverse=True):
            suffix = f"_{decoder}_{dataset}"
            if rest.endswith(suffix) and len(rest) > len(suffix):
                return rest[: -len(suffix)], decoder, dataset
    # Dataset choice name unknown (a dataset outside the tables): split at the decoder.
    for decoder in by_length:
        marker = f"_{decoder}_"
        index = rest.rfind(marker)
        if index > 0 and index + len(marker) < len(rest):
            return rest[:index], decoder, rest[index + len(marker):]
    return None


def _apply_test_result(record: RunRecord, dataset_specs: dict[str, DatasetSpec]) -> None:
    logs = [name for name in (TEST_LOG, TRAIN_LOG) if (record.path / name).is_file()]
    if not logs:
        record.problems.append(f"neither {TRAIN_LOG} nor {TEST_LOG} exists; {RERUN_HINT.format(path=record.path)}")
        _mark_incomplete(record)
        return

    # test.log-0 is a later re-evaluation of the saved checkpoint, so it wins over train.log-0.
    result: TestResult | None = None
    for name in logs:
        try:
            text = (record.path / name).read_text(encoding="utf-8", errors="replace")
        except OSError as error:
            record.problems.append(f"{name} cannot be read ({error}); check its permissions")
            continue
        result = parse_test_block(text)
        if result is not None and result.problem is None:
            record.log_file = name
            break
    if result is None or result.problem is not None:
        reason = result.problem if result is not None else "no final [test] block"
        record.problems.append(
            f"{reason} in {' or '.join(logs)} (training did not finish or the log was cut off); "
            + RERUN_HINT.format(path=record.path)
        )
        _mark_incomplete(record)
        return

    record.metric, record.value, record.per_class = result.metric, result.value, result.per_class
    if record.status != INVALID:
        record.status = COMPLETE
    if not math.isfinite(record.value):
        _reject(record, f"test {record.metric} in {record.log_file} is {record.value}; the run diverged or its test set is empty")
    spec = dataset_specs.get(record.dataset_name or "")
    if spec is not None and spec.metric != record.metric:
        _reject(
            record,
            f"{record.log_file} reports {record.metric}, but {spec.dataset_name} is ranked by {spec.metric}; "
            "check that the run used the dataset's usual task config"
        )


def _reject(record: RunRecord, problem: str) -> None:
    record.status = INVALID
    record.problems.append(problem)


def _mark_incomplete(record: RunRecord) -> None:
    if record.status != INVALID:
        record.status = INCOMPLETE


def _split_records(lines: list[str]) -> list[list[str]]:
    """Group log lines into records: a record starts with ``LEVEL - date - elapsed - ``."""
    records: list[list[str]] = []
    for line in lines:
        start = RECORD_START.match(line)
        if start is not None:
            records.append([start.group("message").strip()])
        elif records:
            records[-1].append(line.strip())
    return [record for record in records if record[0]]


def _parse_iou_block(lines: list[str]) -> TestResult:
    per_class: dict[str, float] = {}
    for index, line in enumerate(lines):
        if line == TEST_SEPARATOR:
            mean_line = lines[index + 1] if index + 1 < len(lines) else ""
            label, value = _split_value(mean_line)
            if label != "[test] Mean" or value is None:
                break
            return TestResult("mIoU", value, per_class)
        label, value = _split_value(line)
        if value is None:
            break
        per_class[label] = value
    return TestResult("mIoU", None, per_class, problem="test IoU block ends before its [test] Mean line")


def _parse_rmse_block(lines: list[str]) -> TestResult:
    for line in lines:
        label, value = _split_value(line)
        if label == "RMSE" and value is not None:
            return TestResult("RMSE", value, {})
    return TestResult("RMSE", None, {}, problem="test MSE and RMSE block ends before its RMSE line")


def _split_value(line: str) -> tuple[str, float | None]:
    """Split ``<name>\\t<value>`` as PANGAEA's evaluators write it."""
    label, tab, number = line.rpartition("\t")
    if not tab:
        return line, None
    try:
        return label.strip(), float(number)
    except ValueError:
        return label.strip(), None
