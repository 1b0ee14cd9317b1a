"""Input checks and output handling of ``eos-pangaea demo-data``."""

from __future__ import annotations

import pytest

from eos_pangaea.cli import main
from eos_pangaea.demo_data import build_sen1floods11_layout

pytest.importorskip("rasterio", reason="rasterio is needed to write the GeoTIFF tiles")


def test_demo_data_twice_prints_error(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo-data", str(out)]) == 0
    capsys.readouterr()

    assert main(["demo-data", str(out)]) == 1
    error = capsys.readouterr().err
    assert f"Output folder {out} already exists" in error
    assert "--overwrite" in error
    assert "Traceback" not in error


def test_overwrite_replaces_earlier_layout(tmp_path):
    out = tmp_path / "demo"
    build_sen1floods11_layout(out)
    (out / "stale.txt").write_text("from an earlier run")

    layout = build_sen1floods11_layout(out, overwrite=True)

    assert layout.splits["train"] == 40
    assert not (out / "stale.txt").exists()


def test_overwrite_keeps_other_folder(tmp_path):
    out = tmp_path / "home"
    out.mkdir()
    (out / "notes.txt").write_text("not a dataset")

    with pytest.raises(FileExistsError, match="no v1.1/splits"):
        build_sen1floods11_layout(out, overwrite=True)
    assert (out / "notes.txt").read_text() == "not a dataset"


def test_overwrite_rejects_file(tmp_path):
    out = tmp_path / "demo"
    out.write_text("a file")

    with pytest.raises(FileExistsError, match="not a folder"):
        build_sen1floods11_layout(out, overwrite=True)
    assert out.read_text() == "a file"


@pytest.mark.parametrize("tile", [0, 7, 31])
def test_tile_below_minimum_rejected(tmp_path, tile):
    with pytest.raises(ValueError, match=f"tile={tile} is too small.*--tile 32"):
        build_sen1floods11_layout(tmp_path / "demo", tile=tile)
    assert list(tmp_path.iterdir()) == []


def test_tile_above_chip_rejected(tmp_path):
    with pytest.raises(ValueError, match="128 x 128 chip is too small for tile=65"):
        build_sen1floods11_layout(tmp_path / "demo", tile=65)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("max_train", [-5, 0, 19])
def test_max_train_below_minimum_rejected(tmp_path, max_train):
    with pytest.raises(ValueError, match=f"max_train={max_train} is too small.*--max-train 20"):
        build_sen1floods11_layout(tmp_path / "demo", max_train=max_train)
    assert list(tmp_path.iterdir()) == []


def test_full_chip_capped_by_default(tmp_path):
    from conftest import SHARED_DATA

    chip = SHARED_DATA / "sen1floods11_sample"
    if not chip.is_dir():
        pytest.skip(f"real Sen1Floods11 chip not found at {chip}")

    with pytest.raises(ValueError, match="gives 5800 training samples.*--max-train"):
        build_sen1floods11_layout(tmp_path / "all", chip, max_train=None)
    layout = build_sen1floods11_layout(tmp_path / "demo", chip)

    assert layout.splits == {"train": 200, "val": 4, "test": 4}
    assert layout.available_train == 5800


def test_failed_write_leaves_no_folder(tmp_path, monkeypatch):
    import eos_pangaea.demo_data as demo_data

    original = demo_data._write_tile
    calls = []

    def failing_write(*args):
        calls.append(args)
        if len(calls) == 5:
            raise OSError("disk full")
        original(*args)

    monkeypatch.setattr(demo_data, "_write_tile", failing_write)
    with pytest.raises(OSError, match="disk full"):
        build_sen1floods11_layout(tmp_path / "demo")

    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_old_layout(tmp_path, monkeypatch):
    import eos_pangaea.demo_data as demo_data

    out = tmp_path / "demo"
    build_sen1floods11_layout(out)

    def failing_write(*args):
        raise OSError("disk full")

    monkeypatch.setattr(demo_data, "_write_tile", failing_write)

    with pytest.raises(OSError, match="disk full"):
        build_sen1floods11_layout(out, overwrite=True)

    assert [p.name for p in tmp_path.iterdir()] == ["demo"]
    train_csv = out / "v1.1" / "splits" / "flood_handlabeled" / "flood_train_data.csv"
    assert len(train_csv.read_text().splitlines()) == 40
