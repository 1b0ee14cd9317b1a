"""``eos-pangaea plot-scaling`` reads top_k per run and plots the test metric against it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from eos_pangaea.cli import main

RUNS = Path(__file__).parent / "data" / "runs" / "work_dir"
# A complete HLSBurnScars run (test mIoU 19.291).
TEMPLATE = RUNS / "20261204_192121_b71e02_eos_fm_seg_upernet_hlsburnscars"
HLS_BANDS = "  input_bands:\n    optical: [B2, B3, B4, B8A, B11, B12]\n  dataset_name: HLSBurnScars\n"


def _copy_run(tmp_path: Path, name: str, top_k: str) -> Path:
    run = tmp_path / name
    shutil.copytree(TEMPLATE, run)
    config = run / "configs" / "config.yaml"
    text = config.read_text().replace("  input_size: ${dataset.img_size}\n",
                                      f"  input_size: ${{dataset.img_size}}\n  top_k: {top_k}\n" + HLS_BANDS)
    config.write_text(text)
    return run


def test_plot_scaling_reads_k(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _copy_run(tmp_path, "20261204_100000_aaaaaa_eos_fm_seg_upernet_hlsburnscars", "2")
    _copy_run(tmp_path, "20261204_100100_bbbbbb_eos_fm_seg_upernet_hlsburnscars", "2")
    _copy_run(tmp_path, "20261204_100200_cccccc_eos_fm_seg_upernet_hlsburnscars", "null")
    figure = tmp_path / "fig" / "scaling.png"

    assert main(["plot-scaling", str(tmp_path), "--output", str(figure)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("HLSBurnScars")]
    assert [row[2:4] for row in rows] == [["2", "2"], ["18", "1"]]
    assert rows[0][4] == "19.29"
    assert figure.stat().st_size > 0


def test_plot_scaling_without_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["plot-scaling", str(tmp_path)]) == 1
    assert "No complete EoS-FM run" in capsys.readouterr().err


def test_plot_scaling_reports_non_utf8_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _copy_run(tmp_path, "20261204_100000_aaaaaa_eos_fm_seg_upernet_hlsburnscars", "2")
    broken = _copy_run(tmp_path, "20261204_100100_bbbbbb_eos_fm_seg_upernet_hlsburnscars", "2")
    (broken / "configs" / "config.yaml").write_bytes(b"\x00\xff{[: garbage\n")

    assert main(["plot-scaling", str(tmp_path), "--output", str(tmp_path / "scaling.png")]) == 0

    out = capsys.readouterr().out
    skipped = [line for line in out.splitlines() if line.startswith(f"skipped {broken}")]
    assert skipped, out
    assert "configs/config.yaml is not valid UTF-8" in skipped[0]
    rows = [line.split() for line in out.splitlines() if line.startswith("HLSBurnScars")]
    assert [row[2:4] for row in rows] == [["2", "1"]]


def _load_scaling_study():
    import importlib.util

    path = Path(__file__).parents[1] / "scripts" / "scaling_study.py"
    spec = importlib.util.spec_from_file_location("scaling_study", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_pangaea_root(tmp_path: Path) -> Path:
    root = tmp_path / "pangaea-bench"
    (root / "pangaea").mkdir(parents=True)
    (root / "pangaea" / "run.py").write_text("")
    return root


def test_scaling_study_prints_absolute_work_dir(tmp_path, monkeypatch, caplog) -> None:
    study = _load_scaling_study()
    root = _fake_pangaea_root(tmp_path)
    monkeypatch.chdir(tmp_path)

    with caplog.at_level("INFO", logger="scaling_study"):
        assert study.main(["--pangaea-root", str(root), "--ks", "2", "--dry-run"]) == 0

    assert f"Plot with: eos-pangaea plot-scaling {tmp_path / 'work_dir' / 'scaling'}" in caplog.text


@pytest.mark.parametrize(
    ("overrides", "count"),
    [([], None), (["encoder.specialists=[eurosat,etci2021]"], 2)],
)
def test_scaling_study_rejects_k_above_specialists(tmp_path, overrides, count) -> None:
    from eos_pangaea.specialists import load_specialist_specs

    # eos_fm.yaml sets specialists: null, which means every specialist of the manifest.
    count = len(load_specialist_specs()) if count is None else count
    study = _load_scaling_study()
    root = _fake_pangaea_root(tmp_path)

    with pytest.raises(SystemExit) as raised:
        study.main(["--pangaea-root", str(root), "--ks", "2,50", "--dry-run", "--", *overrides])

    message = str(raised.value)
    assert "--ks '2,50' is invalid: top_k [50]" in message
    assert f"pass values from 1 to {count}" in message
