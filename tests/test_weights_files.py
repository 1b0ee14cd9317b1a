"""Safe reading of weight files, key conversion, checks and local sources."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import pytest
import torch

from eos_pangaea.specialists import Specialist, SpecialistSpec
from eos_pangaea.weights import (
    ChecksumMismatchError,
    UnsafePickleError,
    WeightsError,
    export_directory,
    read_weights_file,
    to_features_only,
)
from eos_pangaea.weights.files import save_specialist_file
from eos_pangaea.weights.loader import apply_state_dict, load_specialist_weights
from eos_pangaea.weights.local import INDEX_NAME

RGB = ("B04", "B03", "B02")


def make_specialist(name: str = "eurosat", bands=RGB) -> Specialist:
    return Specialist(SpecialistSpec(name, tuple(bands)))


def full_model_state(specialist: Specialist) -> dict[str, torch.Tensor]:
    """Rename features_only keys to the timm full-model layout and add a classifier head."""
    state = {}
    for key, tensor in specialist.backbone.state_dict().items():
        head, _, rest = key.partition(".")
        state[head.replace("_", ".", 1) + "." + rest] = tensor.clone()
    state["head.norm.weight"] = torch.ones(320)
    state["head.fc.weight"] = torch.zeros(10, 320)
    return state


def original_code_state(specialist: Specialist) -> dict[str, torch.Tensor]:
    """Rename to the original ConvNeXt-V2 layout, with GRN stored as [1, 1, 1, C]."""
    state = {}
    for key, tensor in full_model_state(specialist).items():
        if key.startswith("head."):
            continue
        key = key.replace("stem.", "downsample_layers.0.")
        if ".downsample." in key:
            stage, _, rest = key.partition(".downsample.")
            key = "downsample_layers." + stage.split(".")[1] + "." + rest
        key = key.replace(".blocks.", ".").replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv")
        if key.endswith("mlp.grn.weight") or key.endswith("mlp.grn.bias"):
            key = key.replace("mlp.grn.weight", "grn.gamma").replace("mlp.grn.bias", "grn.beta")
            tensor = tensor.reshape(1, 1, 1, -1)
        state["model." + key] = tensor
    state["model.norm.weight"] = torch.ones(320)
    return state


def features(specialist: Specialist, x: torch.Tensor) -> list[torch.Tensor]:
    return specialist(x)


def test_safetensors_roundtrip_keeps_metadata(tmp_path):
    source = make_specialist()
    path = tmp_path / "eurosat.safetensors"
    save_specialist_file(path, source.backbone.state_dict(), name="eurosat", backbone="convnextv2_atto", bands=RGB)
    tensors, metadata = read_weights_file(path)
    assert json.loads(metadata["bands"]) == list(RGB)
    assert metadata["name"] == "eurosat"
    assert set(tensors) == set(source.backbone.state_dict())


def test_truncated_safetensors_names_file(tmp_path):
    path = tmp_path / "eurosat.safetensors"
    save_specialist_file(path, make_specialist().backbone.state_dict(), name="eurosat", backbone="convnextv2_atto", bands=RGB)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated"):
        read_weights_file(path)


def test_truncated_torch_file_is_reported(tmp_path):
    path = tmp_path / "eurosat.pth"
    torch.save(make_specialist().backbone.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        read_weights_file(path)


class _CreatesMarker:
    """Unpickling this object would create a marker file, i.e. run code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_malicious_pickle_refused_without_running(tmp_path, writer):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    payload = {"stem_0.weight": torch.zeros(1), "evil": _CreatesMarker(marker)}
    if writer == "pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path)
    with pytest.raises(UnsafePickleError, match="weights_only=True") as error:
        read_weights_file(path)
    assert not marker.exists()
    assert "arbitrary code" in str(error.value)


def test_malicious_pickle_refused_in_directory_load(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"evil": _CreatesMarker(marker)}, tmp_path / "eurosat.pth")
    with pytest.raises(UnsafePickleError):
        load_specialist_weights([make_specialist()], tmp_path)
    assert not marker.exists()


def test_full_model_keys_convert_and_load(tmp_path):
    source, target = make_specialist(), make_specialist()
    apply_state_dict(target, full_model_state(source), where="test")
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(features(source, x), features(target, x)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("shape", [(1, 1, 1, -1), (1, -1), (-1,)])
def test_grn_shapes_accepted(shape):
    source = make_specialist()
    state = {k: (v.reshape(*shape) if ".grn." in k else v) for k, v in source.backbone.state_dict().items()}
    converted = to_features_only(state)
    grn = [k for k in converted if ".grn." in k]
    assert grn
    assert all(converted[k].ndim == 1 for k in grn)


def test_original_convnextv2_keys_load():
    source, target = make_specialist(), make_specialist()
    apply_state_dict(target, original_code_state(source), where="test")
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(features(source, x), features(target, x)):
        assert torch.equal(a, b)


def test_bad_grn_shape_is_rejected():
    state = dict(make_specialist().backbone.state_dict())
    key = next(k for k in state if k.endswith("grn.weight"))
    state[key] = state[key].reshape(2, -1)
    with pytest.raises(WeightsError, match=r"GRN parameter .* \[1, 1, 1, C\]"):
        to_features_only(state)


def test_missing_and_unexpected_keys_are_listed():
    state = dict(make_specialist().backbone.state_dict())
    removed = next(iter(state))
    del state[removed]
    state["stages_9.extra.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match="1 missing keys") as error:
        apply_state_dict(make_specialist(), state, where="test")
    assert removed in str(error.value)
    assert "stages_9.extra.weight" in str(error.value)


def test_stem_channels_must_match_bands():
    thirteen = make_specialist("eurosat-s2", [f"B{i:02d}" for i in range(1, 14)])
    with pytest.raises(WeightsError, match=r"declares 3 bands .* takes 13 input channels"):
        apply_state_dict(make_specialist(), thirteen.backbone.state_dict(), where="test")


def test_directory_roundtrip_is_bit_identical(tmp_path, caplog):
    source = [make_specialist("eurosat"), make_specialist("sen12ms-s1", ("VV", "VH", "VH"))]
    export_directory(source, tmp_path)
    target = [make_specialist("eurosat"), make_specialist("sen12ms-s1", ("VV", "VH", "VH"))]
    with caplog.at_level(logging.INFO):
        loaded = load_specialist_weights(target, tmp_path, strict_checksums=True)
    assert [item.name for item in loaded] == ["eurosat", "sen12ms-s1"]
    assert "loaded specialist sen12ms-s1" in caplog.text
    x = torch.randn(2, 3, 64, 64)
    for s, t in zip(source, target):
        for a, b in zip(s(x), t(x)):
            assert torch.equal(a, b)


def test_index_checksum_mismatch_rejected(tmp_path):
    export_directory([make_specialist()], tmp_path)
    path = tmp_path / "eurosat.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError, match="Checksum mismatch"):
        load_specialist_weights([make_specialist()], tmp_path)


def test_strict_rejects_directory_without_index(tmp_path):
    export_directory([make_specialist()], tmp_path)
    (tmp_path / INDEX_NAME).unlink()
    load_specialist_weights([make_specialist()], tmp_path)
    with pytest.raises(ValueError, match="No checksum is known"):
        load_specialist_weights([make_specialist()], tmp_path, strict_checksums=True)


def test_saved_bands_must_match_declared(tmp_path):
    export_directory([make_specialist("eurosat", RGB)], tmp_path)
    with pytest.raises(WeightsError, match="saved for bands"):
        load_specialist_weights([make_specialist("eurosat", ("R", "G", "B"))], tmp_path)


def test_missing_specialist_file_named(tmp_path):
    export_directory([make_specialist("eurosat")], tmp_path)
    with pytest.raises(FileNotFoundError, match="loveda"):
        load_specialist_weights([make_specialist("loveda", ("R", "G", "B"))], tmp_path)


def test_random_source_warns(caplog):
    with caplog.at_level(logging.WARNING):
        assert load_specialist_weights([make_specialist()], "random") == []
    assert "randomly initialised" in caplog.text


def test_verify_sha256_rejects_malformed_digest(tmp_path):
    from eos_pangaea.weights.files import WeightsError, verify_sha256

    path = tmp_path / "file.bin"
    path.write_bytes(b"weights")
    with pytest.raises(WeightsError, match="'00' is not a SHA-256 digest"):
        verify_sha256(path, "00", "--sha256")
