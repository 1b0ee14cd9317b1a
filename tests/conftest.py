"""Shared fixtures: small ensembles and the real Sen1Floods11 chip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
CHIP_DIR = SHARED_DATA / "sen1floods11_sample" / "sample"

SEN1FLOODS11_BANDS = {
    "optical": ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"],
    "sar": ["VV", "VH"],
}


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Run torch on one thread: on tiny inputs, OpenMP synchronisation costs more than the work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def sen1floods11_chip():
    """Return the real chip as float tensors: optical (13, H, W), sar (2, H, W), label (H, W)."""
    rasterio = pytest.importorskip("rasterio", reason="rasterio is needed to read the GeoTIFF chip")
    paths = {
        "optical": CHIP_DIR / "S2" / "Spain_7370579_S2Hand.tif",
        "sar": CHIP_DIR / "S1" / "Spain_7370579_S1Hand.tif",
        "label": CHIP_DIR / "Labels" / "Spain_7370579_LabelHand.tif",
    }
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        pytest.skip(f"real Sen1Floods11 chip not found: {missing}")
    arrays = {}
    for key, path in paths.items():
        with rasterio.open(path) as dataset:
            arrays[key] = torch.from_numpy(dataset.read().astype("float32"))
    arrays["label"] = arrays["label"][0]
    return arrays


def _pangaea_config_dir() -> tuple[Path | None, str]:
    """Return PANGAEA's configs folder, or None and the reason it is unavailable."""
    try:
        import pangaea
    except ImportError as error:
        return None, (f"PANGAEA is not installed ({error}); clone github.com/VMarsocci/pangaea-bench "
                      "and run `pip install -e .` in it to run these tests")
    configs = Path(pangaea.__file__).resolve().parents[1] / "configs"
    if not (configs / "train.yaml").is_file():
        return None, f"PANGAEA is installed but {configs}/train.yaml is missing; install a checkout with pip install -e"
    return configs, ""


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``pangaea`` when no PANGAEA checkout is installed."""
    configs, reason = _pangaea_config_dir()
    if configs is None:
        skip = pytest.mark.skip(reason=reason)
        for item in items:
            if "pangaea" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def pangaea_config_dir() -> Path:
    """Return the configs folder of the installed PANGAEA checkout; skip the test without one."""
    configs, reason = _pangaea_config_dir()
    if configs is None:
        pytest.skip(reason)
    return configs
