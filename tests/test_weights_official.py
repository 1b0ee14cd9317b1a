"""Official ensemble import/export, head checkpoints, the manifest and the CLI."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
import yaml

from eos_pangaea.cli import main
from eos_pangaea.ensemble import EoSFM
from eos_pangaea.specialists import Specialist, SpecialistSpec, load_specialist_specs
from eos_pangaea.weights import (
    ManifestError,
    WeightsError,
    export_directory,
    export_official,
    load_ensemble_weights,
    load_manifest,
    official_specialists,
)
from eos_pangaea.weights.manifest import default_manifest_path, parse_manifest

INPUT_BANDS = {
    "optical": ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"],
    "sar": ["VV", "VH"],
}


def write_official(path: Path, specialists, names: bool = True) -> None:
    """Write a synthetic official ensemble file: a pickled list of (in_chans, state_dict, config)."""
    content = []
    for specialist in specialists:
        config = {"backbone": "timm_convnextv2_atto"}
        if names:
            config["encoder_name"] = specialist.name
        content.append((specialist.spec.in_chans, dict(specialist.backbone.state_dict()), config))
    torch.save(content, path)


def test_shipped_manifest_is_complete():
    manifest = load_manifest()
    assert len(manifest.specialists) == 21
    for entry in manifest.specialists:
        assert entry.source.repo == "pierreadorni/eos-fm"
        assert entry.license and entry.citation
        assert entry.input_scaling["method"] in ("divide", "zscore", "unknown")


def test_manifest_parameter_counts_match_timm():
    counts = {}
    for entry in load_manifest().specialists:
        key = (entry.backbone, len(entry.bands))
        if key not in counts:
            counts[key] = sum(p.numel() for p in Specialist(SpecialistSpec(entry.name, entry.bands)).parameters())
        assert entry.parameters == counts[key], entry.name


def test_root_manifest_is_the_shipped_one():
    root = Path(__file__).resolve().parents[1] / "weights_manifest.yaml"
    assert root.resolve() == default_manifest_path().resolve()


@pytest.mark.parametrize(("field", "value", "message"), [
    ("sha256", "abc", "expected 64 lowercase hexadecimal digits"),
    ("bands", [], "non-empty list of band names"),
    ("parameters", -1, "positive integer"),
    ("license", None, "non-empty string"),
])
def test_manifest_errors_name_entry_and_field(field, value, message):
    document = yaml.safe_load(default_manifest_path().read_text())
    document["specialists"][3][field] = value
    with pytest.raises(ManifestError, match=message) as error:
        parse_manifest(document)
    assert "specialist 'bigearthnet-s1' (entry 3)" in str(error.value)
    assert f"field {field!r}" in str(error.value)


def test_manifest_rejects_unknown_filename_without_note():
    document = yaml.safe_load(default_manifest_path().read_text())
    del document["specialists"][0]["source"]["note"]
    with pytest.raises(ManifestError, match="eurosat-s2.*field 'note'"):
        parse_manifest(document)


def test_official_roundtrip_bit_identical(tmp_path):
    specs = load_specialist_specs(["eurosat-s2", "sen12ms-s1", "cloud_cover"])
    original = [Specialist(spec) for spec in specs]
    write_official(tmp_path / "official.pth", original)

    assert main(["weights", "import-official", str(tmp_path / "official.pth"), str(tmp_path / "ours")]) == 0
    imported = EoSFM(load_specialist_specs([s.name for s in specs]), INPUT_BANDS)
    load_ensemble_weights(imported, tmp_path / "ours", strict_checksums=True)
    export_official(list(imported.specialists), tmp_path / "back.pth")
    back = official_specialists(tmp_path / "back.pth")

    x = torch.randn(2, 13, 64, 64)
    for source, mid, (final, _) in zip(original, imported.specialists, back):
        sample = x[:, : source.spec.in_chans]
        for a, b, c in zip(source(sample), mid(sample), final(sample)):
            assert torch.equal(a, b)
            assert torch.equal(a, c)
    exported = torch.load(tmp_path / "back.pth", weights_only=True)
    assert [entry[0] for entry in exported] == [13, 3, 3]
    assert exported[0][2]["backbone"] == "timm_convnextv2_atto"


def test_official_import_needs_names_or_bands(tmp_path):
    specialist = Specialist(SpecialistSpec("my-aerial", ("R", "G", "B")))
    write_official(tmp_path / "official.pth", [specialist], names=False)
    with pytest.raises(ValueError, match="encoder_name"):
        official_specialists(tmp_path / "official.pth")
    with pytest.raises(ValueError, match="never guessed from the channel count"):
        official_specialists(tmp_path / "official.pth", names=["my-aerial"])
    built = official_specialists(tmp_path / "official.pth", names=["my-aerial"], bands={"my-aerial": ["R", "G", "B"]})
    assert built[0][0].spec.bands == ("R", "G", "B")


def test_official_import_checks_channel_count(tmp_path):
    specialist = Specialist(SpecialistSpec("eurosat", ("B04", "B03", "B02")))
    write_official(tmp_path / "official.pth", [specialist], names=False)
    with pytest.raises(ValueError, match="in_chans 3 but its bands"):
        official_specialists(tmp_path / "official.pth", names=["eurosat-s2"])


def test_official_file_loads_directly_by_encoder_name(tmp_path):
    specs = load_specialist_specs(["eurosat", "loveda"])
    original = [Specialist(spec) for spec in specs]
    write_official(tmp_path / "official.pth", original)
    ensemble = EoSFM(specs, INPUT_BANDS)
    loaded = load_ensemble_weights(ensemble, tmp_path / "official.pth")
    assert [item.source.endswith(f"entry {i}") for i, item in enumerate(loaded)] == [True, True]


def test_cli_import_with_bands_flag(tmp_path, capsys):
    specialist = Specialist(SpecialistSpec("my-aerial", ("R", "G", "B")))
    write_official(tmp_path / "official.pth", [specialist], names=False)
    status = main(["weights", "import-official", str(tmp_path / "official.pth"), str(tmp_path / "out"),
                   "--names", "my-aerial", "--bands", "my-aerial=R,G,B"])
    assert status == 0
    index = json.loads((tmp_path / "out" / "eos-pangaea-weights.json").read_text())
    assert index["specialists"][0]["bands"] == ["R", "G", "B"]


def test_cli_list_verify_and_export(tmp_path, capsys):
    assert main(["weights", "list"]) == 0
    assert "sen12ms-s1" in capsys.readouterr().out

    specs = load_specialist_specs(["eurosat", "loveda", "caffe"])
    export_directory([Specialist(s) for s in specs], tmp_path / "full")
    assert main(["weights", "verify", str(tmp_path / "full"), "--strict-checksums"]) == 0
    assert capsys.readouterr().out.count("OK ") == 3

    assert main(["weights", "export", str(tmp_path / "full"), str(tmp_path / "pruned"), "--names", "loveda"]) == 0
    index = json.loads((tmp_path / "pruned" / "eos-pangaea-weights.json").read_text())
    assert [e["name"] for e in index["specialists"]] == ["loveda"]

    (tmp_path / "full" / "caffe.safetensors").write_bytes(b"not the exported file")
    assert main(["weights", "verify", str(tmp_path / "full")]) == 1
    assert "Checksum mismatch" in capsys.readouterr().err


def test_cli_fetch_without_filename_explains(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("EOS_PANGAEA_CACHE", str(tmp_path))
    assert main(["weights", "fetch", "--offline"]) == 1
    assert "--filename" in capsys.readouterr().err


HLS_BURN_SCARS_BANDS = {"optical": ["B2", "B3", "B4", "B8A", "B11", "B12"]}


def head_checkpoint(ensemble: EoSFM) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(ensemble.state_dict(), buffer)
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize("input_bands", [HLS_BURN_SCARS_BANDS, INPUT_BANDS], ids=["hlsburnscars", "sen1floods11"])
def test_head_checkpoint_holds_only_the_head(input_bands):
    ensemble = EoSFM(load_specialist_specs(), input_bands, specialists_in_state_dict=False)
    assert len(ensemble.specialists) == 21
    size = len(head_checkpoint(ensemble).getvalue())
    head_bytes = sum(t.numel() * t.element_size() for k, t in ensemble.state_dict().items() if k != "_extra_state")
    specialist_bytes = sum(p.numel() * p.element_size() for p in ensemble.specialists.parameters())
    # The fusion grows with the streams: 58 x (40^2 + 80^2 + 160^2 + 320^2)
    # float32 weights for Sen1Floods11 (about 32 MB), 18 streams for HLS Burn Scars.
    assert size < head_bytes + 1_000_000
    assert size < specialist_bytes / 8
    if len(ensemble.streams) <= 18:
        assert size < 20_000_000, f"head of {len(ensemble.streams)} streams is {size / 1e6:.1f} MB"


def test_head_checkpoint_reloads_strictly(tmp_path):
    specs = load_specialist_specs()
    trained = EoSFM(specs, HLS_BURN_SCARS_BANDS, specialists_in_state_dict=False)
    export_directory(list(trained.specialists), tmp_path / "weights")
    with torch.no_grad():
        for parameter in trained.fusion.parameters():
            parameter.add_(1.0)
    head = torch.load(head_checkpoint(trained), weights_only=True)
    assert not any(".specialists." in f".{key}" for key in head)

    fresh = EoSFM(specs, HLS_BURN_SCARS_BANDS, specialists_in_state_dict=False)
    load_ensemble_weights(fresh, tmp_path / "weights", strict_checksums=True)
    fresh.load_state_dict(head, strict=True)
    for a, b in zip(trained.fusion.parameters(), fresh.fusion.parameters()):
        assert torch.equal(a, b)

    untouched = EoSFM(specs, HLS_BURN_SCARS_BANDS, specialists_in_state_dict=False)
    with pytest.raises(ValueError, match="other weights than those this checkpoint was trained with"):
        untouched.load_state_dict(head, strict=True)
