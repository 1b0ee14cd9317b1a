"""Reading PANGAEA experiment folders: config, folder name and final test metric."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from eos_pangaea.results.runs import (
    COMPLETE,
    INCOMPLETE,
    INVALID,
    find_run_dirs,
    parse_test_block,
    read_run,
    read_runs,
)

WORK_DIR = Path(__file__).parent / "data" / "runs" / "work_dir"
SHARED_LOGS = Path(__file__).parents[2] / "shared" / "data" / "pangaea_logs"

HLS_SEED1 = "20261204_192121_b71e02_eos_fm_seg_upernet_hlsburnscars"
HLS_SEED2 = "20261204_200501_4c9d10_eos_fm_seg_upernet_hlsburnscars"
BIOMASSTERS = "20261204_192126_3f9a1c_eos_fm_reg_upernet_biomassters"
PASTIS_SMALL = "20261204_220000_ee33ff_eos_fm_small_seg_upernet_mt_ltae_pastis"
CROMA_MADOS = "20261204_210000_aa11bb_croma_joint_seg_upernet_mados"
TRUNCATED = "20261204_230000_123abc_eos_fm_seg_upernet_mados"
NO_CONFIG = "20261204_231500_456def_eos_fm_seg_upernet_sen1floods11"
UNKNOWN_DATASET = "20261204_232000_789abc_eos_fm_cls_linear_meurosat"
NAN_METRIC = "20261204_233000_abcdef_eos_fm_seg_upernet_sen1floods11"


def test_segmentation_run_reads_config_and_test_miou():
    record = read_run(WORK_DIR / HLS_SEED1)

    assert record.status == COMPLETE
    assert record.problems == []
    assert record.encoder == "eos_fm"
    assert record.decoder == "seg_upernet"
    assert record.dataset_name == "HLSBurnScars"
    assert record.column == "HLS Burns"
    assert record.task == "segmentation"
    assert record.seed == 1
    assert record.label_fraction == 0.1
    assert record.finetune is False
    assert record.timestamp == "20261204_192121"
    assert record.metric == "mIoU"
    # The last [test] block of the real log, not the [val] blocks before it.
    assert record.value == pytest.approx(19.291)
    assert record.per_class == pytest.approx({"a": 5.221, "b": 33.125, "c": 19.528})
    assert record.log_file == "train.log-0"


def test_regression_run_reads_test_rmse():
    record = read_run(WORK_DIR / BIOMASSTERS)

    assert record.status == COMPLETE
    assert record.metric == "RMSE"
    assert record.value == pytest.approx(0.741)
    assert record.per_class == {}
    assert record.task == "regression"
    assert record.decoder == "reg_upernet"
    assert record.column == "BioMassters"


@pytest.mark.parametrize(
    ("folder", "encoder", "decoder"),
    [
        (PASTIS_SMALL, "eos_fm_small", "seg_upernet_mt_ltae"),
        (CROMA_MADOS, "croma_joint", "seg_upernet"),
        (UNKNOWN_DATASET, "eos_fm", "cls_linear"),
    ],
)
def test_folder_name_splits_encoder_with_underscores(folder, encoder, decoder):
    record = read_run(WORK_DIR / folder)

    assert record.encoder == encoder
    assert record.decoder == decoder


def test_test_log_wins_over_train_log():
    record = read_run(WORK_DIR / HLS_SEED2)

    assert record.status == COMPLETE
    assert record.log_file == "test.log-0"
    assert record.value == pytest.approx(23.291)


def test_test_log_wins_when_both_complete(tmp_path):
    run_dir = tmp_path / HLS_SEED1
    shutil.copytree(WORK_DIR / HLS_SEED1, run_dir)
    test_log = (WORK_DIR / HLS_SEED2 / "test.log-0").read_text()
    (run_dir / "test.log-0").write_text(test_log)

    record = read_run(run_dir)

    assert record.log_file == "test.log-0"
    assert record.value == pytest.approx(23.291)


def test_truncated_log_is_incomplete():
    record = read_run(WORK_DIR / TRUNCATED)

    assert record.status == INCOMPLETE
    assert record.value is None
    assert len(record.problems) == 1
    assert "ends before its [test] Mean line" in record.problems[0]
    assert "ckpt_dir=" in record.problems[0]


def test_missing_config_is_invalid():
    record = read_run(WORK_DIR / NO_CONFIG)

    assert record.status == INVALID
    assert any("configs/config.yaml is missing" in problem for problem in record.problems)
    # The folder name and the log are still read, for the report.
    assert record.encoder == "eos_fm"
    assert record.value == pytest.approx(80.0)


def test_non_utf8_config_is_invalid(tmp_path):
    run_dir = tmp_path / HLS_SEED1
    shutil.copytree(WORK_DIR / HLS_SEED1, run_dir)
    (run_dir / "configs" / "config.yaml").write_bytes(b"\x00\xff{[: garbage\n")

    record = read_run(run_dir)

    assert record.status == INVALID
    assert any("configs/config.yaml is not valid UTF-8" in problem for problem in record.problems)
    assert record.value == pytest.approx(19.291)


def test_non_utf8_log_bytes_are_replaced(tmp_path):
    run_dir = tmp_path / HLS_SEED1
    shutil.copytree(WORK_DIR / HLS_SEED1, run_dir)
    log = run_dir / "train.log-0"
    log.write_bytes(b"\xff\xfe stray bytes \x80\n" + log.read_bytes())

    record = read_run(run_dir)

    assert record.status == COMPLETE
    assert record.value == pytest.approx(19.291)


def test_unknown_dataset_is_invalid():
    record = read_run(WORK_DIR / UNKNOWN_DATASET)

    assert record.status == INVALID
    assert record.column is None
    assert any("'mEuroSat' is not a dataset of the reference tables" in problem for problem in record.problems)


def test_nan_metric_is_invalid():
    record = read_run(WORK_DIR / NAN_METRIC)

    assert record.status == INVALID
    assert math.isnan(record.value)
    assert any("is nan" in problem for problem in record.problems)


def test_config_interpolations_stay_unresolved(tmp_path):
    run_dir = tmp_path / HLS_SEED1
    shutil.copytree(WORK_DIR / HLS_SEED1, run_dir)
    config = run_dir / "configs" / "config.yaml"
    # An interpolation that OmegaConf could not resolve must not matter.
    config.write_text(config.read_text() + "num_classes_copy: ${dataset.no_such_key}\n")

    record = read_run(run_dir)

    assert record.status == COMPLETE
    assert record.seed == 1


def test_missing_logs_are_incomplete(tmp_path):
    run_dir = tmp_path / HLS_SEED1
    shutil.copytree(WORK_DIR / HLS_SEED1, run_dir)
    (run_dir / "train.log-0").unlink()

    record = read_run(run_dir)

    assert record.status == INCOMPLETE
    assert "neither train.log-0 nor test.log-0 exists" in record.problems[0]


def test_bad_folder_name_is_invalid(tmp_path):
    run_dir = tmp_path / "my_run"
    shutil.copytree(WORK_DIR / HLS_SEED1, run_dir)

    record = read_run(run_dir)

    assert record.status == INVALID
    assert record.encoder is None
    assert "not PANGAEA's <YYYYmmdd_HHMMSS>_<6 hex>" in record.problems[0]


def test_work_dir_finds_every_run():
    records, notes = read_runs([WORK_DIR])

    assert notes == []
    assert len(records) == 12
    statuses = {record.path.name: record.status for record in records}
    assert statuses[HLS_SEED1] == COMPLETE
    assert statuses[TRUNCATED] == INCOMPLETE
    assert statuses[NO_CONFIG] == INVALID


def test_folder_without_runs_gets_note(tmp_path):
    (tmp_path / "empty").mkdir()

    run_dirs, notes = find_run_dirs([tmp_path])

    assert run_dirs == []
    assert len(notes) == 1
    assert "no PANGAEA experiment folder found" in notes[0]


def test_missing_path_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        find_run_dirs([tmp_path / "does_not_exist"])


def test_log_cut_mid_line_drops_partial_value():
    text = (
        "INFO - 12/04/26 19:21:23 - 0:00:00 - [test] ------- IoU --------\n"
        "                                     a\t  5.221\n"
        "                                     [test]-------------------\n"
        "                                     [test] Mean\t 19."
    )

    result = parse_test_block(text)

    assert result is not None
    assert result.value is None
    assert result.problem is not None


def test_log_without_test_block_returns_none():
    assert parse_test_block("INFO - 12/04/26 19:21:23 - 0:00:00 - Epoch 0 done\n") is None


@pytest.mark.skipif(not SHARED_LOGS.is_dir(), reason=f"{SHARED_LOGS} is absent (only in the development workspace)")
@pytest.mark.parametrize(
    ("file_name", "metric", "value"),
    [("segmentation_train.log-0", "mIoU", 19.291), ("regression_train.log-0", "RMSE", 0.741)],
)
def test_shared_real_logs_parse(file_name, metric, value):
    result = parse_test_block((SHARED_LOGS / file_name).read_text())

    assert result.metric == metric
    assert result.value == pytest.approx(value)


def test_results_package_does_not_import_torch():
    code = (
        "import sys\n"
        "import eos_pangaea.results.runs, eos_pangaea.results.leaderboard, eos_pangaea.results.render\n"
        "import eos_pangaea.results.plot, eos_pangaea.commands.leaderboard\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib was imported'\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)

    assert completed.returncode == 0, completed.stderr
