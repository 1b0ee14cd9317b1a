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
