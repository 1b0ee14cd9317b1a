"""Pruning a trained top-k ensemble keeps its features, on the real Sen1Floods11 chip."""

from __future__ import annotations

import logging

import pytest
import torch

from eos_pangaea.ensemble import EoSFM
from eos_pangaea.pruning import (
    CONFIG_NAME,
    count_parameters,
    export_pruned,
    load_checkpoint_head,
    load_pruned_ensemble,
    prune_checkpoint,
    prune_ensemble,
    selection_report,
)
from eos_pangaea.specialists import build_specialists, load_specialist_specs

from tests.conftest import SEN1FLOODS11_BANDS

# One 13-band, two SAR and three RGB/IR specialists; most have several streams on S2 + S1.
NAMES = ["sen12ms-s2", "bigearthnet-s1", "etci2021", "cloud_cover", "eurosat", "imagenet"]
TOP_K = 3
# Selection weights after "training": keeps bigearthnet-s1, cloud_cover and imagenet.
TRAINED_WEIGHTS = [0.7, 1.6, 0.9, 1.4, 0.2, 1.2]
KEPT = ["bigearthnet-s1", "cloud_cover", "imagenet"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def chip_batch(sen1floods11_chip) -> dict[str, torch.Tensor]:
    """The real chip, cropped to 128 x 128, scaled, and flipped into a batch of 2."""
    optical = sen1floods11_chip["optical"][:, :128, :128] / 10000.0
    sar = torch.nan_to_num(sen1floods11_chip["sar"][:, :128, :128], nan=0.0) / -25.0
    return {
        "optical": torch.stack([optical, optical.flip(-1)]),
        "sar": torch.stack([sar, sar.flip(-1)]),
    }


@pytest.fixture(scope="module")
def trained(chip_batch) -> EoSFM:
    """An ensemble as after training: moved running statistics, distinct weights, random fusion."""
    torch.manual_seed(0)
    model = EoSFM(build_specialists(load_specialist_specs(NAMES)), SEN1FLOODS11_BANDS, dataset="Sen1Floods11",
                  top_k=TOP_K, warmup_steps=2, specialists_in_state_dict=False)
    model.train()
    with torch.no_grad():
        for _ in range(2):  # warm-up passes: every specialist runs and its statistics move
            model(chip_batch)
        model.selection.weight.copy_(torch.tensor(TRAINED_WEIGHTS))
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(trained, tmp_path_factory) -> str:
    """A checkpoint laid out as PANGAEA's trainer saves it."""
    state = {f"encoder.ensemble.{k}": v for k, v in trained.state_dict().items()}
    state["conv_seg.weight"] = torch.zeros(2, 512, 1, 1)
    path = tmp_path_factory.mktemp("run") / "checkpoint__best.pth"
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "epoch": 3}, path)
    return str(path)


@pytest.fixture(scope="module")
def pruned(trained, checkpoint) -> EoSFM:
    """The pruned ensemble, built like the CLI does: a fresh ensemble plus the checkpoint."""
    fresh = EoSFM(list(trained.specialists), SEN1FLOODS11_BANDS, dataset="Sen1Floods11", top_k=TOP_K,
                  warmup_steps=2, specialists_in_state_dict=False)
    return prune_checkpoint(fresh, checkpoint)


def _features(model: EoSFM, x: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        return model.eval()(x)


def test_pruned_keeps_top_k(pruned) -> None:
    assert [s.name for s in pruned.specialists] == KEPT
    assert pruned.selection.top_k is None
    expected = torch.tensor([TRAINED_WEIGHTS[NAMES.index(n)] for n in KEPT])
    torch.testing.assert_close(pruned.selection.weight.detach(), expected)


def test_pruned_features_equal_on_chip(trained, pruned, chip_batch) -> None:
    expected = _features(trained, chip_batch)
    actual = _features(pruned, chip_batch)
    for level, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape, f"level {level}"
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6, msg=lambda m: f"level {level}: {m}")


def test_pruned_holds_only_kept_streams(trained, pruned) -> None:
    kept_streams = [s for i, n in enumerate(NAMES) if n in KEPT for s in trained._streams_of[i]]
    assert len(pruned.streams) == len(kept_streams)
    assert len(pruned.norms.norms) == len(kept_streams)
    widths = [len(kept_streams) * channels for channels in trained.specialists[0].channels]
    assert [conv.in_channels for conv in pruned.fusion.convs] == widths


def test_pruned_parameter_count(trained, pruned) -> None:
    counts = count_parameters(pruned)
    kept = [trained.specialists[NAMES.index(n)] for n in KEPT]
    assert counts["specialists"] == sum(p.numel() for s in kept for p in s.parameters())
    fusion = sum(p.numel() for p in pruned.fusion.parameters())
    assert counts["head"] == TOP_K + fusion
    assert counts["total"] < count_parameters(trained)["total"]


def test_export_round_trip_on_chip(pruned, chip_batch, tmp_path) -> None:
    config = export_pruned(pruned, tmp_path / "pruned", source={"checkpoint": "checkpoint__best.pth"})
    assert config.name == CONFIG_NAME
    loaded = load_pruned_ensemble(tmp_path / "pruned", specialists_in_state_dict=False)
    assert [s.name for s in loaded.specialists] == KEPT
    for a, e in zip(_features(loaded, chip_batch), _features(pruned, chip_batch)):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)


def test_export_detects_changed_weights(pruned, tmp_path) -> None:
    export_pruned(pruned, tmp_path / "pruned")
    head = tmp_path / "pruned" / "head.safetensors"
    from safetensors.torch import load_file, save_file

    state = load_file(str(head))
    state["fusion.convs.0.weight"] = state["fusion.convs.0.weight"][:, :-1].contiguous()
    save_file(state, str(head))
    with pytest.raises(ValueError, match="does not fit this ensemble"):
        load_pruned_ensemble(tmp_path / "pruned")


def test_checkpoint_head_keys(checkpoint) -> None:
    head = load_checkpoint_head(checkpoint)
    assert "selection.weight" in head
    assert "_extra_state" in head
    assert not any(k.startswith("specialists.") for k in head)
    assert "conv_seg.weight" not in head


def test_checkpoint_without_ensemble(tmp_path) -> None:
    path = tmp_path / "checkpoint__best.pth"
    torch.save({"model": {"encoder.blocks.0.weight": torch.zeros(1)}, "epoch": 1}, path)
    with pytest.raises(ValueError, match="0 EoS-FM selection weights"):
        load_checkpoint_head(path)


def test_prune_without_top_k(trained, checkpoint) -> None:
    fresh = EoSFM(list(trained.specialists), SEN1FLOODS11_BANDS, dataset="Sen1Floods11",
                  specialists_in_state_dict=False)
    with pytest.raises(ValueError, match="top_k=None"):
        prune_checkpoint(fresh, checkpoint)


def test_prune_rejects_unusable_specialist() -> None:
    model = EoSFM(build_specialists(load_specialist_specs(["sen12ms-s2", "imagenet"])), {"optical": ["B4", "B3", "B2"]})
    with pytest.raises(ValueError, match="sen12ms-s2"):
        prune_ensemble(model, keep=[0, 1])


def test_selection_report_ranks(trained) -> None:
    report = selection_report(trained.selection)
    rows = report.splitlines()[2:]
    assert [row.split()[1] for row in rows] == ["bigearthnet-s1", "cloud_cover", "imagenet", "etci2021",
                                                "sen12ms-s2", "eurosat"]
    assert [row.split()[-1] for row in rows] == ["kept"] * 3 + ["dropped"] * 3


def test_selection_logged_after_training(chip_batch, caplog: pytest.LogCaptureFixture) -> None:
    model = EoSFM(build_specialists(load_specialist_specs(NAMES[:2])), SEN1FLOODS11_BANDS, dataset="Sen1Floods11")
    small = {k: v[..., :32, :32] for k, v in chip_batch.items()}
    model.train()
    with torch.no_grad():
        model(small)
    with caplog.at_level("INFO", logger="eos_pangaea.pruning"):
        model.eval()
        model.train()
        model.eval()  # no training pass since the last report: nothing new
    reports = [r.getMessage() for r in caplog.records if "selection after" in r.getMessage()]
    assert len(reports) == 1
    assert "after 1 training passes" in reports[0]
    assert "sen12ms-s2" in reports[0]


# ---------------------------------------------------------------- command line

RUN_CONFIG = """\
seed: 0
dataset:
  dataset_name: Sen1Floods11
  bands:
    optical: [B1, B2, B3, B4, B5, B6, B7, B8, B8A, B9, B10, B11, B12]
    sar: [VV, VH]
encoder:
  _target_: eos_pangaea.pangaea_encoder.EoSFMEncoder
  input_bands: ${dataset.bands}
  dataset_name: ${dataset.dataset_name}
  specialists: [sen12ms-s2, bigearthnet-s1, etci2021, cloud_cover, eurosat, imagenet]
  top_k: 3
  selection_warmup_steps: 2
  norm: batch
  width_multiplier: 1.0
  band_labels: {}
  missing_bands: skip
  encoder_weights: WEIGHTS
"""


@pytest.fixture(scope="module")
def run_dir(trained, checkpoint, tmp_path_factory):
    """A PANGAEA experiment folder: the checkpoint, its config, and the specialists' weights."""
    from pathlib import Path

    from eos_pangaea.weights import export_directory

    folder = Path(checkpoint).parent
    weights = tmp_path_factory.mktemp("weights")
    export_directory(list(trained.specialists), weights)
    (folder / "configs").mkdir(exist_ok=True)
    (folder / "configs" / "config.yaml").write_text(RUN_CONFIG.replace("WEIGHTS", str(weights)))
    return folder


def test_cli_prune_matches_on_chip(run_dir, trained, chip_batch, tmp_path, capsys) -> None:
    from eos_pangaea.cli import main

    status = main(["prune", str(run_dir / "checkpoint__best.pth"), "--output", str(tmp_path / "small")])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "Kept 3 of 6 specialists: bigearthnet-s1, cloud_cover, imagenet" in printed
    count = count_parameters(load_pruned_ensemble(tmp_path / "small"))["total"]
    assert f"Parameters: {count:,}" in printed
    loaded = load_pruned_ensemble(tmp_path / "small")
    for a, e in zip(_features(loaded, chip_batch), _features(trained, chip_batch)):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)


def test_cli_selection_report(run_dir, capsys) -> None:
    from eos_pangaea.cli import main

    assert main(["selection", str(run_dir / "checkpoint__best.pth")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "top_k=3" in lines[0]
    assert lines[2].split()[1:] == ["bigearthnet-s1", "1.6000", "kept"]
    assert lines[5].split()[1:] == ["etci2021", "0.9000", "dropped"]


def test_cli_prune_missing_config(checkpoint, tmp_path, capsys) -> None:
    from eos_pangaea.cli import main

    status = main(["prune", checkpoint, "-o", str(tmp_path / "x"), "--run-config", str(tmp_path / "none.yaml")])
    assert status == 1
    assert "none.yaml not found" in capsys.readouterr().err


def test_cli_prune_ranks_trained_weights(run_dir, tmp_path, capsys) -> None:
    from eos_pangaea.cli import main

    assert main(["prune", str(run_dir / "checkpoint__best.pth"), "--output", str(tmp_path / "small")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Specialists ranked by selection weight (top_k=3):"
    assert lines[2].split()[1:] == ["bigearthnet-s1", "1.6000", "kept"]
    assert lines[7].split()[1:] == ["eurosat", "0.2000", "dropped"]


def test_cli_prune_missing_checkpoint(tmp_path, capsys) -> None:
    from eos_pangaea.cli import main

    missing = tmp_path / "nonexist.pth"
    assert main(["prune", str(missing), "-o", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert f"Checkpoint {missing} not found" in err
    assert "Run config" not in err


def _random_weights_config(run_dir, tmp_path, seed: int):
    """Write the run's config with encoder_weights=random and the given seed."""
    text = (run_dir / "configs" / "config.yaml").read_text()
    lines = [line for line in text.splitlines() if not line.startswith(("seed:", "  encoder_weights:"))]
    path = tmp_path / f"config_seed{seed}.yaml"
    path.write_text("\n".join([f"seed: {seed}", *lines, "  encoder_weights: random"]) + "\n")
    return path


def test_cli_prune_random_from_seed(run_dir, trained, chip_batch, tmp_path, capsys) -> None:
    from eos_pangaea.cli import main

    # The trained fixture drew its specialists right after torch.manual_seed(0), as PANGAEA's run.py does.
    config = _random_weights_config(run_dir, tmp_path, seed=0)
    argv = ["prune", str(run_dir / "checkpoint__best.pth"), "-o", str(tmp_path / "small"), "--run-config", str(config)]

    torch.manual_seed(7)  # prune must reseed, not rely on the state the test starts with
    assert main(argv) == 0, capsys.readouterr().err
    loaded = load_pruned_ensemble(tmp_path / "small")
    for actual, expected in zip(_features(loaded, chip_batch), _features(trained, chip_batch)):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_cli_prune_random_wrong_seed(run_dir, tmp_path, capsys) -> None:
    from eos_pangaea.cli import main

    config = _random_weights_config(run_dir, tmp_path, seed=1)
    argv = ["prune", str(run_dir / "checkpoint__best.pth"), "-o", str(tmp_path / "small"), "--run-config", str(config)]

    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "random specialists drawn from the run's seed 1" in captured.err
    assert "pass --encoder-weights SOURCE" in captured.err
    assert "Specialists ranked" not in captured.out
    assert not (tmp_path / "small").exists()


def test_cli_prune_other_weights_source(run_dir, tmp_path, capsys) -> None:
    from eos_pangaea.cli import main
    from eos_pangaea.weights import export_directory

    other = tmp_path / "other_weights"
    torch.manual_seed(5)  # the trained fixture's specialists come from seed 0
    export_directory(build_specialists(load_specialist_specs(NAMES)), other)
    argv = ["prune", str(run_dir / "checkpoint__best.pth"), "-o", str(tmp_path / "small"),
            "--encoder-weights", str(other)]

    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"than the weights --encoder-weights {other} loads" in err
    assert "pass --encoder-weights SOURCE" in err


@pytest.mark.pangaea
@pytest.mark.slow
def test_cli_prune_random_demo_run(tmp_path, monkeypatch, capsys) -> None:
    """Prune a real `run-cpu --demo` run, trained with random specialists, without --encoder-weights."""
    from eos_pangaea.cli import main
    from eos_pangaea.demo_data import build_sen1floods11_layout

    demo_root = build_sen1floods11_layout(tmp_path / "data", max_train=24).root
    monkeypatch.chdir(tmp_path)
    overrides = ["encoder.specialists=[eurosat,sen12ms-s1,etci2021]", "encoder.top_k=2",
                 "encoder.selection_warmup_steps=2", "decoder.channels=32", f"work_dir={tmp_path / 'work'}"]
    root_logger = logging.getLogger()
    handlers, level = list(root_logger.handlers), root_logger.level
    try:
        assert main(["run-cpu", "--demo", "--demo-root", str(demo_root), *overrides]) == 0
    finally:
        # PANGAEA's init_logger adds root handlers on streams that pytest closes after this test.
        root_logger.handlers[:] = handlers
        root_logger.setLevel(level)
    (run,) = (tmp_path / "work").iterdir()
    capsys.readouterr()

    torch.manual_seed(7)
    status = main(["prune", str(run / "checkpoint__best.pth"), "-o", str(tmp_path / "small")])

    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "Kept 2 of 3 specialists" in captured.out
    assert load_pruned_ensemble(tmp_path / "small").selection.weight.shape == (2,)


@pytest.mark.parametrize("command", ["selection", "prune"])
def test_cli_rejects_top_k_above_specialists(run_dir, tmp_path, capsys, command) -> None:
    from eos_pangaea.cli import main

    argv = [command, str(run_dir / "checkpoint__best.pth"), "--top-k", "99"]
    if command == "prune":
        argv += ["--output", str(tmp_path / "small")]

    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "--top-k 99 is invalid" in err
    assert "has 6 specialists, so pass a k from 1 to 6" in err
    assert not (tmp_path / "small").exists()


class _RunsShellCommand:
    """A pickle whose loading would run a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def _unreadable_checkpoints(folder):
    """Write a text file and a malicious pickle, both named like checkpoints."""
    import pickle

    text = folder / "text_checkpoint.pth"
    text.write_text("epoch 3, mIoU 41.2\n")
    malicious = folder / "malicious_checkpoint.pth"
    malicious.write_bytes(pickle.dumps({"model": _RunsShellCommand(folder / "marker")}, protocol=2))
    return {"text": text, "malicious": malicious}


@pytest.mark.parametrize("command", ["selection", "prune"])
@pytest.mark.parametrize(
    ("kind", "message"),
    [("text", "neither a safetensors file nor a torch pickle"), ("malicious", "Refused to load")],
)
def test_cli_rejects_unreadable_checkpoint(run_dir, tmp_path, capsys, command, kind, message) -> None:
    from eos_pangaea.cli import main

    checkpoint = _unreadable_checkpoints(tmp_path)[kind]
    argv = [command, str(checkpoint), "--run-config", str(run_dir / "configs" / "config.yaml")]
    if command == "prune":
        argv += ["--output", str(tmp_path / "small")]

    assert main(argv) == 1
    captured = capsys.readouterr()
    assert message in captured.err
    assert str(checkpoint) in captured.err
    assert "Traceback" not in captured.err
    assert not (tmp_path / "marker").exists()
    assert not (tmp_path / "small").exists()


def test_checkpoint_head_rejects_corrupt_pickle(tmp_path) -> None:
    from eos_pangaea.weights.files import WeightsError

    # A protocol-2 pickle cut short: torch's weights-only unpickler raises IndexError on it.
    path = tmp_path / "checkpoint__best.pth"
    path.write_bytes(b"\x80\x02}q\x00X\x01\x00\x00\x00ae.")

    with pytest.raises(WeightsError, match="could not be read as a torch file"):
        load_checkpoint_head(path)


def test_encoder_style_load_on_chip(trained, pruned, chip_batch, tmp_path) -> None:
    """Build as the encoder config does (kept names, no top_k, the directory as weights), then load the head."""
    from eos_pangaea.pruning import is_pruned_export, load_pruned_head
    from eos_pangaea.weights import load_ensemble_weights

    export_pruned(pruned, tmp_path / "small")
    assert is_pruned_export(tmp_path / "small")
    model = EoSFM(build_specialists(load_specialist_specs(KEPT)), SEN1FLOODS11_BANDS, dataset="Sen1Floods11",
                  specialists_in_state_dict=False)
    load_ensemble_weights(model, tmp_path / "small")
    load_pruned_head(model, tmp_path / "small")
    for a, e in zip(_features(model, chip_batch), _features(trained, chip_batch)):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)


def test_pangaea_encoder_loads_pruned_export(trained, pruned, chip_batch, tmp_path) -> None:
    """The overrides that `prune` prints give the pruned model's features in PANGAEA's encoder."""
    pytest.importorskip("pangaea", reason="PANGAEA is not installed; the encoder adapter needs it")
    import logging

    from eos_pangaea.pangaea_encoder import EoSFMEncoder

    export_pruned(pruned, tmp_path / "small")
    encoder = EoSFMEncoder(input_bands=SEN1FLOODS11_BANDS, input_size=128, dataset_name="Sen1Floods11",
                           specialists=KEPT, top_k=None, encoder_weights=str(tmp_path / "small"))
    encoder.load_encoder_weights(logging.getLogger("test"))
    encoder.eval()
    with torch.no_grad():
        features = encoder(chip_batch)
    for a, e in zip(features, _features(trained, chip_batch)):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)
