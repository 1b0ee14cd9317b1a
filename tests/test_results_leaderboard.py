"""Leaderboard from experiment folders: seeds, duplicates, Avg DTB against Table 3, outputs."""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import shutil
from pathlib import Path

import pytest

from eos_pangaea.cli import main
from eos_pangaea.commands import leaderboard as leaderboard_command
from eos_pangaea.results.leaderboard import avg_dtb, build_leaderboard
from eos_pangaea.results.reference import load_reference_table
from eos_pangaea.results.render import render
from eos_pangaea.results.runs import read_runs

WORK_DIR = Path(__file__).parent / "data" / "runs" / "work_dir"
# A copy of an HLS Burn Scars run whose config the tests overwrite with bytes that are not UTF-8.
BAD_CONFIG_RUN = "20261204_192200_c0ffee_eos_fm_seg_upernet_hlsburnscars"

# Table 3 values the fixture runs are compared with.
TABLE3_BEST_HLS = 79.46  # UNet
TABLE3_BEST_MADOS = 47.05  # EoS-FM
TABLE3_BEST_PASTIS = 38.44  # ViT-B
TABLE3_CROMA_AVG_DTB = 7.1055  # over all 11 datasets, BioMassters best 39.44
TABLE3_CROMA_BIOMASSTERS = 40.25

# Fixture runs: eos_fm on HLS Burn Scars, seeds 1 and 2, and BioMassters RMSE 0.741.
EOS_FM_HLS_SEEDS = (19.291, 23.291)
EOS_FM_BIOMASSTERS = 0.741


@pytest.fixture(scope="module")
def table3_leaderboard():
    runs, notes = read_runs([WORK_DIR])
    return build_leaderboard(runs, reference=load_reference_table("table3"), notes=notes)


def rows_by_model(leaderboard):
    return {row.model: row for row in leaderboard.rows}


def test_seeds_are_averaged(table3_leaderboard):
    cell = rows_by_model(table3_leaderboard)["eos_fm"].cells["HLS Burns"]

    assert cell.values == pytest.approx(EOS_FM_HLS_SEEDS)
    assert cell.seeds == (1, 2)
    assert cell.mean == pytest.approx(21.291)
    assert cell.std == pytest.approx(math.sqrt(8.0))


def test_runs_ranked_against_table3(table3_leaderboard):
    rows = rows_by_model(table3_leaderboard)
    eos_fm = rows["eos_fm"]

    assert eos_fm.source == "runs"
    assert eos_fm.coverage == 2
    assert eos_fm.rank is None
    assert eos_fm.distances["HLS Burns"] == pytest.approx(TABLE3_BEST_HLS - 21.291)
    # RMSE: lower is better, so the tiny CPU run is the best BioMassters value.
    assert eos_fm.distances["BioMassters"] == pytest.approx(0.0)
    assert eos_fm.ranks["BioMassters"] == 1
    assert eos_fm.ranks["HLS Burns"] == 17
    assert eos_fm.avg_dtb == pytest.approx((TABLE3_BEST_HLS - 21.291) / 2)

    assert rows["croma_joint"].cells["MADOS"].mean == pytest.approx(33.0)
    assert rows["croma_joint"].avg_dtb == pytest.approx(TABLE3_BEST_MADOS - 33.0)
    assert rows["eos_fm_small"].avg_dtb == pytest.approx(TABLE3_BEST_PASTIS - 25.0)

    # The new BioMassters best moves every reference row's distance.
    croma_sum = TABLE3_CROMA_AVG_DTB * 11 - (TABLE3_CROMA_BIOMASSTERS - 39.44)
    expected = (croma_sum + TABLE3_CROMA_BIOMASSTERS - EOS_FM_BIOMASSTERS) / 11
    assert rows["CROMA (303M)"].avg_dtb == pytest.approx(expected, abs=1e-3)
    assert table3_leaderboard.best["BioMassters"] == pytest.approx(EOS_FM_BIOMASSTERS)


def test_only_complete_rows_get_overall_rank(table3_leaderboard):
    ranked = [row for row in table3_leaderboard.rows if row.rank is not None]

    assert len(ranked) == 16
    assert [row.rank for row in ranked] == list(range(1, 17))
    assert all(row.source == "reference" for row in ranked)
    assert table3_leaderboard.rows[-3].model == "eos_fm"


@pytest.mark.parametrize(
    ("folder", "phrase"),
    [
        ("20261204_230000_123abc_eos_fm_seg_upernet_mados", "incomplete, not ranked: test IoU block ends"),
        ("20261204_231500_456def_eos_fm_seg_upernet_sen1floods11", "configs/config.yaml is missing"),
        ("20261204_232000_789abc_eos_fm_cls_linear_meurosat", "'mEuroSat' is not a dataset"),
        ("20261203_101010_0f0f0f_eos_fm_seg_upernet_hlsburnscars", "duplicate, not ranked"),
        ("20261204_233000_abcdef_eos_fm_seg_upernet_sen1floods11", "test mIoU in train.log-0 is nan"),
        ("20261205_080000_fedcba_eos_fm_seg_upernet_hlsburnscars", "limited_label_train 1.0 differs"),
    ],
)
def test_unranked_runs_get_report_line(table3_leaderboard, folder, phrase):
    lines = [note for note in table3_leaderboard.notes if note.startswith(folder)]

    assert lines, f"no report line for {folder}"
    assert any(phrase in line for line in lines), lines


def test_duplicate_keeps_newer_run(table3_leaderboard):
    note = next(note for note in table3_leaderboard.notes if "duplicate" in note)

    assert "20261204_192121_b71e02" in note
    # The older duplicate's 50.0 would have raised the mean above 21.291.
    cell = rows_by_model(table3_leaderboard)["eos_fm"].cells["HLS Burns"]
    assert 50.0 not in cell.values


def test_runs_ranked_alone():
    runs, notes = read_runs([WORK_DIR])
    leaderboard = build_leaderboard(runs, label_fraction=0.1, notes=notes)

    assert leaderboard.columns == ["HLS Burns", "MADOS", "PASTIS", "BioMassters"]
    assert leaderboard.reference is None
    rows = rows_by_model(leaderboard)
    assert set(rows) == {"eos_fm", "croma_joint", "eos_fm_small"}
    assert rows["eos_fm"].distances == pytest.approx({"HLS Burns": 0.0, "BioMassters": 0.0})
    assert rows["croma_joint"].distances == pytest.approx({"MADOS": 0.0})


def test_mixed_label_fractions_need_choice():
    runs, _ = read_runs([WORK_DIR])

    with pytest.raises(ValueError, match=r"mix label fractions \[0.1, 1.0\]"):
        build_leaderboard(runs)


def test_labels_conflicting_with_table_rejected():
    with pytest.raises(ValueError, match="conflicts with table3"):
        build_leaderboard([], reference=load_reference_table("table3"), label_fraction=1.0)


def test_label_fraction_out_of_range_rejected():
    runs, _ = read_runs([WORK_DIR])

    with pytest.raises(ValueError, match="label fraction 10.0 is not in"):
        build_leaderboard(runs, label_fraction=10.0)


def test_bootstrap_interval_brackets_estimate():
    runs, _ = read_runs([WORK_DIR])
    leaderboard = build_leaderboard(runs, reference=load_reference_table("table3"), bootstrap=400, random_seed=3)
    rows = rows_by_model(leaderboard)
    low, high = rows["eos_fm"].ci

    # Two seeds 4 points apart: resampled HLS means are 19.291, 21.291 or 23.291.
    assert low == pytest.approx((TABLE3_BEST_HLS - 23.291) / 2)
    assert high == pytest.approx((TABLE3_BEST_HLS - 19.291) / 2)
    assert leaderboard.confidence == 0.95
    again = build_leaderboard(runs, reference=load_reference_table("table3"), bootstrap=400, random_seed=3)
    assert rows_by_model(again)["eos_fm"].ci == rows["eos_fm"].ci


def test_fraction_scale_warning(tmp_path):
    runs, _ = read_runs([WORK_DIR / "20261204_210000_aa11bb_croma_joint_seg_upernet_mados"])
    runs[0].value = 0.32

    leaderboard = build_leaderboard(runs, reference=load_reference_table("table3"))

    assert any("looks like a fraction" in note for note in leaderboard.notes)


def test_value_outside_reference_range_flagged(table3_leaderboard):
    biomassters = "20261204_192126_3f9a1c_eos_fm_reg_upernet_biomassters"
    lines = [note for note in table3_leaderboard.notes if note.startswith(biomassters)]

    assert len(lines) == 1, table3_leaderboard.notes
    assert f"test RMSE {EOS_FM_BIOMASSTERS}" in lines[0]
    assert "far outside the table3 values" in lines[0]
    assert "still ranked" in lines[0]
    # Flagged, not dropped: the run is still the BioMassters cell of eos_fm.
    assert rows_by_model(table3_leaderboard)["eos_fm"].cells["BioMassters"].mean == pytest.approx(EOS_FM_BIOMASSTERS)


def test_value_inside_reference_range_not_flagged():
    runs, _ = read_runs([WORK_DIR / "20261204_192126_3f9a1c_eos_fm_reg_upernet_biomassters"])
    runs[0].value = 42.0

    leaderboard = build_leaderboard(runs, reference=load_reference_table("table3"))

    assert not any("far outside" in note for note in leaderboard.notes)


def test_cli_reports_non_utf8_config(tmp_path, capsys):
    for folder in ("20261204_192121_b71e02_eos_fm_seg_upernet_hlsburnscars", BAD_CONFIG_RUN):
        shutil.copytree(WORK_DIR / "20261204_192121_b71e02_eos_fm_seg_upernet_hlsburnscars", tmp_path / folder)
    (tmp_path / BAD_CONFIG_RUN / "configs" / "config.yaml").write_bytes(b"\x00\xff{[: garbage\n")

    assert main(["leaderboard", str(tmp_path), "--reference", "table3"]) == 0

    out = capsys.readouterr().out
    assert "eos_fm" in out
    report = [line for line in out.splitlines() if BAD_CONFIG_RUN in line]
    assert report, out
    assert "configs/config.yaml is not valid UTF-8" in report[0]


def test_avg_dtb_never_fills_missing():
    best, distances, averages = avg_dtb(
        {"a": {"x": 10.0, "y": 5.0}, "b": {"x": 8.0}}, {"x": "max", "y": "min"}
    )

    assert best == {"x": 10.0, "y": 5.0}
    assert distances["b"] == {"x": 2.0}
    assert averages == {"a": 0.0, "b": 2.0}


def test_text_output_lists_report(table3_leaderboard):
    text = render(table3_leaderboard, "text")

    assert "Avg DTB" in text
    assert "Report:" in text
    assert "21.29 ± 2.83 (n=2)" in text
    assert "20261204_230000_123abc_eos_fm_seg_upernet_mados: incomplete" in text


def test_markdown_output_bolds_best(table3_leaderboard):
    text = render(table3_leaderboard, "markdown")

    assert "| 1 | EoS-FM (72 M) |" in text
    assert "**0.74**" in text
    assert "- 20261204_231500_456def" in text


def test_csv_output_has_one_row_per_model(table3_leaderboard):
    records = list(csv.DictReader(io.StringIO(render(table3_leaderboard, "csv"))))

    assert len(records) == 19
    eos_fm = next(record for record in records if record["model"] == "eos_fm")
    assert float(eos_fm["HLS Burns"]) == pytest.approx(21.291)
    assert eos_fm["HLS Burns seeds"] == "2"
    assert eos_fm["MADOS"] == ""
    assert eos_fm["coverage"] == "2"
    assert eos_fm["rank"] == ""


def test_latex_output_escapes_names(table3_leaderboard):
    text = render(table3_leaderboard, "latex")

    assert "\\begin{tabular}" in text
    assert "eos\\_fm\\_small" in text
    assert "\\textbf{0.74}" in text
    assert "% 20261203_101010" in text


def test_json_output_round_trips(table3_leaderboard):
    document = json.loads(render(table3_leaderboard, "json"))

    assert document["reference"] == "table3"
    assert document["label_fraction"] == 0.1
    rows = {row["model"]: row for row in document["rows"]}
    assert rows["eos_fm"]["cells"]["HLS Burns"]["values"] == pytest.approx(list(EOS_FM_HLS_SEEDS))
    statuses = {Path(run["path"]).name: run["status"] for run in document["runs"]}
    assert statuses["20261204_233000_abcdef_eos_fm_seg_upernet_sen1floods11"] == "invalid"
    nan_run = next(run for run in document["runs"] if run["path"].endswith("abcdef_eos_fm_seg_upernet_sen1floods11"))
    assert nan_run["value"] is None


def test_unknown_format_rejected(table3_leaderboard):
    with pytest.raises(ValueError, match="unknown format 'html'"):
        render(table3_leaderboard, "html")


def test_plot_writes_png(table3_leaderboard, tmp_path):
    pytest.importorskip("matplotlib")
    from eos_pangaea.results.plot import plot_leaderboard

    path = plot_leaderboard(table3_leaderboard, tmp_path / "leaderboard.png")

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def run_command(argv):
    parser = argparse.ArgumentParser()
    leaderboard_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["leaderboard", *argv])
    return args.func(args)


def test_command_picks_table3_for_ten_percent(tmp_path, capsys):
    output = tmp_path / "board.json"
    figure = tmp_path / "board.png"

    status = run_command([str(WORK_DIR), "--labels", "0.1", "--format", "json", "--output", str(output), "--plot", str(figure)])

    assert status == 0
    document = json.loads(output.read_text())
    assert document["reference"] == "table3"
    assert figure.stat().st_size > 0


def test_command_reference_only_markdown(capsys):
    status = run_command(["--reference", "table2", "--use-inferred", "--format", "markdown"])

    text = capsys.readouterr().out
    assert status == 0
    assert "| 1 | EoS-FM (72 M) |" in text
    assert "45.10*" in text
    assert "inferred from the printed Avg DTB" in text


def test_command_rejects_nothing_to_rank():
    with pytest.raises(ValueError, match="nothing to rank"):
        run_command(["--reference", "none"])
