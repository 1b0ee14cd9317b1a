"""The real Sen1Floods11 chip through an optical + SAR ensemble."""

from __future__ import annotations

import torch

from eos_pangaea import EoSFM
from eos_pangaea.specialists import load_specialist_specs
from tests.conftest import SEN1FLOODS11_BANDS


def standardise(image: torch.Tensor) -> torch.Tensor:
    """Scale each band to zero mean and unit variance, with no-data pixels set to 0."""
    valid = torch.isfinite(image)
    filled = torch.where(valid, image, torch.zeros_like(image))
    count = valid.sum(dim=(1, 2), keepdim=True).clamp(min=1)
    mean = filled.sum(dim=(1, 2), keepdim=True) / count
    var = (torch.where(valid, image - mean, torch.zeros_like(image)) ** 2).sum(dim=(1, 2), keepdim=True) / count
    return torch.where(valid, (image - mean) / var.sqrt().clamp(min=1e-6), torch.zeros_like(image))


def test_chip_runs_through_optical_and_sar_specialists(sen1floods11_chip):
    crop = (slice(None), slice(100, 228), slice(300, 428))
    x = {
        "optical": standardise(sen1floods11_chip["optical"])[crop].unsqueeze(0),
        "sar": standardise(sen1floods11_chip["sar"])[crop].unsqueeze(0),
    }
    assert x["optical"].shape == (1, 13, 128, 128)
    assert x["sar"].shape == (1, 2, 128, 128)

    specs = load_specialist_specs(["sen12ms-s2", "bigearthnet", "sen12ms-s1", "eurosat"])
    model = EoSFM(specs, SEN1FLOODS11_BANDS, dataset="Sen1Floods11").eval()
    routes = {(name, route) for name, route, _ in model.describe_streams()}
    assert ("sen12ms-s2", "exact") in routes
    assert ("bigearthnet", "exact") in routes
    assert ("sen12ms-s1", "exact+sar_pseudo_rgb") in routes
    assert ("eurosat", "exact+rgb") in routes

    with torch.no_grad():
        out = model(x)
    assert [tuple(o.shape) for o in out] == [(1, 40, 32, 32), (1, 80, 16, 16), (1, 160, 8, 8), (1, 320, 4, 4)]
    assert all(torch.isfinite(o).all() for o in out)
    # The features depend on the imagery: another crop gives other features.
    other = {k: v.flip(-1) for k, v in x.items()}
    with torch.no_grad():
        assert not torch.allclose(model(other)[3], out[3])


def test_chip_label_has_water_and_no_data(sen1floods11_chip):
    values = set(sen1floods11_chip["label"].unique().tolist())
    assert values <= {-1.0, 0.0, 1.0}
    assert 1.0 in values
