"""Lay out one Sen1Floods11 chip in the folder structure PANGAEA's reader expects.

PANGAEA's ``Sen1Floods11`` dataset (``pangaea/datasets/sen1floods11.py``)
reads ``<root>/v1.1/data/flood_events/HandLabeled/{S1Hand,S2Hand,LabelHand}/``,
``<root>/v1.1/Sen1Floods11_Metadata.geojson`` and one CSV per split under
``<root>/v1.1/splits/flood_handlabeled/``. :func:`build_sen1floods11_layout`
cuts a chip into tiles and writes that structure:

- the bottom row of tiles is held out: its left half is the validation split,
  its right half the test split;
- training tiles are windows above that row, at a stride of a quarter tile,
  each written in the 8 orientations of the square (rotations and flips), so
  that even a 128 x 128 chip gives 40 training samples. PANGAEA's 10 %
  stratified subset and its batch of at least 2 need about 20.

The package ships a 128 x 128 crop of one real chip (``data/demo``, CC BY 4.0,
see the README there), used when no chip is given.
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

KINDS = ("S1Hand", "S2Hand", "LabelHand")
ORIENTATIONS = 8


@dataclass(frozen=True)
class Layout:
    """Dataset folder written by :func:`build_sen1floods11_layout`.

    Attributes:
        root: Folder to pass as ``dataset.root_path``.
        splits: Number of samples in each split.
    """

    root: Path
    splits: dict[str, int]


def demo_chip_dir() -> Path:
    """Return the folder of the shipped demo chip."""
    return Path(str(resources.files("eos_pangaea").joinpath("data", "demo", "sen1floods11")))


def build_sen1floods11_layout(
    out_root: str | Path,
    chip_dir: str | Path | None = None,
    *,
    tile: int = 64,
    max_train: int | None = None,
    overwrite: bool = False,
) -> Layout:
    """Write a Sen1Floods11 dataset folder made of tiles of one chip.

    Args:
        out_root: Folder to create; pass it as ``dataset.root_path``.
        chip_dir: Folder holding one chip's ``*_S1Hand.tif``, ``*_S2Hand.tif``
            and ``*_LabelHand.tif`` (searched recursively). Defaults to the
            shipped demo chip.
        tile: Tile size in pixels.
        max_train: Keep at most this many training samples, from windows
            spread evenly over the chip. ``None`` keeps all.
        overwrite: Replace ``out_root`` if it exists.

    Returns:
        The layout's root and the number of samples per split.

    Raises:
        FileNotFoundError: The chip's files are missing.
        FileExistsError: ``out_root`` exists and ``overwrite`` is false, or
            ``out_root`` is not a folder this function wrote (a file, or a
            non-empty folder without ``v1.1/splits``).
        ValueError: The chip is too small for one training window and one
            validation and one test tile.
    """
    rasterio = _import_rasterio()
    chip_dir = Path(chip_dir) if chip_dir is not None else demo_chip_dir()
    out_root = Path(out_root)
    if _check_out_root(out_root, overwrite):
        shutil.rmtree(out_root)

    sources = _find_chip_files(chip_dir)
    chip_id = sources["S1Hand"].name[: -len("_S1Hand.tif")]
    arrays, profiles = {}, {}
    for kind, path in sources.items():
        with rasterio.open(path) as src:
            arrays[kind] = src.read()
            profiles[kind] = src.profile
    height, width = arrays["LabelHand"].shape[-2:]

    val_cells, test_cells, train_windows = _plan_tiles(height, width, tile)
    if max_train is not None:
        train_windows = _spread(train_windows, math.ceil(max_train / ORIENTATIONS))

    base = out_root / "v1.1"
    data = base / "data" / "flood_events" / "HandLabeled"
    for kind in KINDS:
        (data / kind).mkdir(parents=True, exist_ok=True)
    _copy_metadata(chip_dir, base)

    splits = {
        "train": [(w, o) for w in train_windows for o in range(ORIENTATIONS)][:max_train],
        "valid": [(c, 0) for c in val_cells],
        "test": [(c, 0) for c in test_cells],
    }
    split_dir = base / "splits" / "flood_handlabeled"
    split_dir.mkdir(parents=True, exist_ok=True)
    for split, samples in splits.items():
        lines = []
        for (row, col), orientation in samples:
            name = f"{chip_id}-{split}-r{row}c{col}o{orientation}"
            for kind in KINDS:
                window = arrays[kind][:, row:row + tile, col:col + tile]
                _write_tile(rasterio, data / kind / f"{name}_{kind}.tif", _orient(window, orientation),
                            profiles[kind], row, col)
            lines.append(f"{name}_S1Hand.tif,{name}_LabelHand.tif\n")
        (split_dir / f"flood_{split}_data.csv").write_text("".join(lines), encoding="utf-8")

    counts = {"train": len(splits["train"]), "val": len(splits["valid"]), "test": len(splits["test"])}
    logger.info("Wrote a Sen1Floods11 layout of chip %s at %s: %s samples of %d px", chip_id, out_root, counts, tile)
    return Layout(out_root, counts)


def _check_out_root(out_root: Path, overwrite: bool) -> bool:
    """Return whether ``out_root`` is an earlier layout to replace; raise if it must not be touched."""
    if not out_root.exists() and not out_root.is_symlink():
        return False
    if not overwrite:
        raise FileExistsError(f"Output folder {out_root} already exists; remove it, choose another folder, "
                              "or pass overwrite=True (--overwrite) to replace it.")
    if out_root.is_symlink() or not out_root.is_dir():
        raise FileExistsError(f"{out_root} exists and is not a folder; overwrite=True (--overwrite) replaces "
                              "only a dataset folder. Choose another output folder.")
    # --overwrite deletes the folder, so it only accepts an earlier layout or an
    # empty folder, never a mistyped path such as the home folder.
    if any(out_root.iterdir()) and not (out_root / "v1.1" / "splits").is_dir():
        raise FileExistsError(f"{out_root} is not a Sen1Floods11 layout (it has no v1.1/splits folder), so "
                              "overwrite=True (--overwrite) does not delete it. Remove it yourself or choose "
                              "another output folder.")
    return True


def _plan_tiles(height: int, width: int, tile: int):
    """Return validation cells, test cells and training windows as ``(row, col)`` corners."""
    columns = width // tile
    if height < 2 * tile or columns < 2:
        raise ValueError(f"A {height} x {width} chip is too small for tile={tile}: it needs at least "
                         f"{2 * tile} x {2 * tile} pixels. Use a smaller --tile.")
    bottom = height - tile
    cells = [(bottom, c * tile) for c in range(columns)]
    val_cells, test_cells = cells[: columns // 2], cells[columns // 2:]
    stride = max(1, tile // 4)
    train_windows = [(r, c) for r in range(0, bottom - tile + 1, stride)
                     for c in range(0, width - tile + 1, stride)]
    return val_cells, test_cells, train_windows


def _spread(items: list, count: int) -> list:
    if count >= len(items):
        return items
    picks = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[i] for i in picks]


def _orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Return one of the 8 rotations and flips of a ``(C, H, W)`` array."""
    rotated = np.rot90(array, k=orientation % 4, axes=(1, 2))
    return np.ascontiguousarray(rotated[:, :, ::-1] if orientation >= 4 else rotated)


def _write_tile(rasterio, path: Path, array: np.ndarray, profile, row: int, col: int) -> None:
    from rasterio.windows import Window, transform

    profile = dict(profile)
    # NOTE: rotated and flipped tiles keep the window's georeference, which is then
    # wrong; PANGAEA's reader ignores it.
    profile.update(width=array.shape[2], height=array.shape[1], compress="deflate",
                   transform=transform(Window(col, row, array.shape[2], array.shape[1]), profile["transform"]))
    profile.pop("blockxsize", None)
    profile.pop("blockysize", None)
    profile["tiled"] = False
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)


def _find_chip_files(chip_dir: Path) -> dict[str, Path]:
    found = {}
    for kind in KINDS:
        matches = sorted(chip_dir.rglob(f"*_{kind}.tif"))
        if len(matches) != 1:
            raise FileNotFoundError(
                f"Expected exactly one *_{kind}.tif under {chip_dir}, found {len(matches)}; pass the folder "
                "of one Sen1Floods11 chip (S1Hand, S2Hand and LabelHand GeoTIFFs)."
            )
        found[kind] = matches[0]
    return found


def _copy_metadata(chip_dir: Path, base: Path) -> None:
    matches = sorted(chip_dir.rglob("Sen1Floods11_Metadata.geojson"))
    source = matches[0] if matches else demo_chip_dir() / "Sen1Floods11_Metadata.geojson"
    shutil.copyfile(source, base / "Sen1Floods11_Metadata.geojson")


def _import_rasterio():
    try:
        import rasterio
    except ModuleNotFoundError as error:
        raise RuntimeError("Building the Sen1Floods11 layout needs rasterio (a PANGAEA dependency); "
                           "install it with `pip install rasterio`.") from error
    return rasterio
