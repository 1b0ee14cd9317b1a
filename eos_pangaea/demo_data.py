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
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

KINDS = ("S1Hand", "S2Hand", "LabelHand")
ORIENTATIONS = 8
# PANGAEA's UperNet takes features at strides 4 to 32, so a tile below 32 px
# leaves the last level without a pixel.
MIN_TILE = 32
# PANGAEA's 10 % stratified subset takes at least one image per class-share bin
# and its train loader drops the last incomplete batch: about 20 training
# samples are needed for a 10 % run to take an optimiser step.
MIN_TRAIN = 20
# Enough for a CPU smoke run: the full 512 x 512 chip at tile 64 gives 5,800
# training samples (about 377 MB) without a limit.
DEFAULT_MAX_TRAIN = 200
# max_train=None keeps every window only up to this many samples.
MAX_TRAIN_WITHOUT_LIMIT = 1000


@dataclass(frozen=True)
class Layout:
    """Dataset folder written by :func:`build_sen1floods11_layout`.

    Attributes:
        root: Folder to pass as ``dataset.root_path``.
        splits: Number of samples in each split.
        available_train: Training samples the chip gives before ``max_train``
            is applied.
    """

    root: Path
    splits: dict[str, int]
    available_train: int = 0


def demo_chip_dir() -> Path:
    """Return the folder of the shipped demo chip."""
    return Path(str(resources.files("eos_pangaea").joinpath("data", "demo", "sen1floods11")))


def build_sen1floods11_layout(
    out_root: str | Path,
    chip_dir: str | Path | None = None,
    *,
    tile: int = 64,
    max_train: int | None = DEFAULT_MAX_TRAIN,
    overwrite: bool = False,
) -> Layout:
    """Write a Sen1Floods11 dataset folder made of tiles of one chip.

    The layout is written into a temporary sibling folder and renamed to
    ``out_root`` at the end, so a failed or interrupted run leaves no partial
    dataset at ``out_root`` (a killed process can leave the hidden
    ``.<name>.partial-*`` sibling behind).

    Args:
        out_root: Folder to create; pass it as ``dataset.root_path``.
        chip_dir: Folder holding one chip's ``*_S1Hand.tif``, ``*_S2Hand.tif``
            and ``*_LabelHand.tif`` (searched recursively). Defaults to the
            shipped demo chip.
        tile: Tile size in pixels, at least ``MIN_TILE``.
        max_train: Keep at most this many training samples (at least
            ``MIN_TRAIN``), from windows spread evenly over the chip. ``None``
            keeps all of them, up to ``MAX_TRAIN_WITHOUT_LIMIT``.
        overwrite: Replace ``out_root`` if it is an earlier layout.

    Returns:
        The layout's root and the number of samples per split.

    Raises:
        FileNotFoundError: The chip's files are missing.
        FileExistsError: ``out_root`` exists and ``overwrite`` is false, or
            ``out_root`` is not a folder this function wrote (a file, or a
            non-empty folder without ``v1.1/splits``).
        ValueError: ``tile`` or ``max_train`` is out of range, the chip is too
            small for one training window and one validation and one test
            tile, or ``max_train=None`` would write more than
            ``MAX_TRAIN_WITHOUT_LIMIT`` training samples.
    """
    _check_options(tile, max_train)
    out_root = Path(out_root)
    replace = _check_out_root(out_root, overwrite)
    rasterio = _import_rasterio()
    chip_dir = Path(chip_dir) if chip_dir is not None else demo_chip_dir()

    sources = _find_chip_files(chip_dir)
    chip_id = sources["S1Hand"].name[: -len("_S1Hand.tif")]
    arrays, profiles = {}, {}
    for kind, path in sources.items():
        with rasterio.open(path) as src:
            arrays[kind] = src.read()
            profiles[kind] = src.profile
    height, width = arrays["LabelHand"].shape[-2:]

    # Count the samples before writing anything: a small tile on a full chip
    # gives thousands of windows, each written in 8 orientations.
    val_cells, test_cells, train_windows = _plan_tiles(height, width, tile)
    available = len(train_windows) * ORIENTATIONS
    if max_train is None and available > MAX_TRAIN_WITHOUT_LIMIT:
        raise ValueError(
            f"A {height} x {width} chip at tile={tile} gives {available} training samples, more than "
            f"{MAX_TRAIN_WITHOUT_LIMIT} without a limit. Pass max_train (--max-train N, for example "
            f"{DEFAULT_MAX_TRAIN}) or a larger tile."
        )
    if max_train is not None:
        train_windows = _spread(train_windows, math.ceil(max_train / ORIENTATIONS))
    splits = {
        "train": [(w, o) for w in train_windows for o in range(ORIENTATIONS)][:max_train],
        "valid": [(c, 0) for c in val_cells],
        "test": [(c, 0) for c in test_cells],
    }
    if len(splits["train"]) < available:
        logger.info("Keeping %d of the chip's %d training samples (max_train=%d)",
                    len(splits["train"]), available, max_train)

    out_root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_root.name}.partial-", dir=out_root.parent))
    try:
        _write_layout(staging, chip_dir, chip_id, arrays, profiles, splits, tile, rasterio)
        if replace:
            _swap_in(staging, out_root)
        else:
            staging.rename(out_root)
    except BaseException:
        # BaseException too: Ctrl-C while writing must not leave the staging folder behind.
        shutil.rmtree(staging, ignore_errors=True)
        raise

    counts = {"train": len(splits["train"]), "val": len(splits["valid"]), "test": len(splits["test"])}
    logger.info("Wrote a Sen1Floods11 layout of chip %s at %s: %s samples of %d px", chip_id, out_root, counts, tile)
    return Layout(out_root, counts, available)


def _check_options(tile: int, max_train: int | None) -> None:
    if tile < MIN_TILE:
        raise ValueError(f"tile={tile} is too small: PANGAEA's UperNet decoder downsamples by 32, so a tile "
                         f"needs at least {MIN_TILE} pixels. Pass --tile {MIN_TILE} or more (default 64).")
    if max_train is not None and max_train < MIN_TRAIN:
        raise ValueError(
            f"max_train={max_train} is too small: PANGAEA's 10 % stratified subset and its train batches "
            f"need at least {MIN_TRAIN} training samples. Pass --max-train {MIN_TRAIN} or more "
            f"(default {DEFAULT_MAX_TRAIN})."
        )


def _write_layout(base_root: Path, chip_dir: Path, chip_id: str, arrays: dict, profiles: dict,
                  splits: dict[str, list], tile: int, rasterio) -> None:
    """Write the tiles, metadata and split CSVs of ``splits`` under ``base_root``."""
    base = base_root / "v1.1"
    data = base / "data" / "flood_events" / "HandLabeled"
    for kind in KINDS:
        (data / kind).mkdir(parents=True, exist_ok=True)
    _copy_metadata(chip_dir, base)

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


def _swap_in(staging: Path, out_root: Path) -> None:
    """Replace the earlier layout at ``out_root`` by ``staging``, deleting the old one last."""
    old = Path(tempfile.mkdtemp(prefix=f".{out_root.name}.old-", dir=out_root.parent))
    old.rmdir()
    out_root.rename(old)
    try:
        staging.rename(out_root)
    except BaseException:
        old.rename(out_root)
        raise
    shutil.rmtree(old)


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
