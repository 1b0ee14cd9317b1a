"""PANGAEA's own pipeline on the CPU with EoS-FM, on tiles of the real Sen1Floods11 chip."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from eos_pangaea.cpu_run import merge_overrides, sync_batchnorm_to_batchnorm2d

SPECIALISTS = "encoder.specialists=[sen12ms-s2,sen12ms-s1,eurosat]"


def test_merge_overrides_replaces_defaults():
    merged = merge_overrides(["dataset=a", "batch_size=4", "encoder=x"], ["dataset=b", "+extra=1"])
    assert merged == ["batch_size=4", "encoder=x", "dataset=b", "+extra=1"]


@pytest.mark.pangaea
def test_config_dir_prefers_current_checkout(tmp_path, monkeypatch, pangaea_config_dir):
    from eos_pangaea.cpu_run import find_config_dir

    checkout = tmp_path / "pangaea-bench"
    (checkout / "configs").mkdir(parents=True)
    (checkout / "configs" / "train.yaml").write_text("train: true\n")
    monkeypatch.chdir(checkout)
    assert find_config_dir() == (checkout / "configs").resolve()

    monkeypatch.chdir(tmp_path)  # not a checkout: the installed one's configs
    assert find_config_dir() == pangaea_config_dir.resolve()

    assert find_config_dir(checkout) == (checkout / "configs").resolve()


def test_run_cpu_help_names_outputs(capsys):
    from eos_pangaea.cli import main

    with pytest.raises(SystemExit):
        main(["run-cpu", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "work_dir=DIR" in text
    assert "hydra.run.dir=DIR" in text
    assert "./outputs/<date>/<time>/" in text
    assert "current directory if it contains configs/train.yaml" in text


DOCS = Path(__file__).resolve().parents[1] / "docs" / "pangaea.md"


def test_docs_list_demo_overrides():
    from eos_pangaea.cpu_run import DEMO_OVERRIDES

    block = DOCS.read_text().split("it runs the demo job:\n\n```\n", 1)[1].split("```", 1)[0]
    documented = block.split()
    assert documented[:-1] == list(DEMO_OVERRIDES)
    assert documented[-1] == "dataset.root_path=./data/eos_pangaea_demo_sen1floods11"


def test_run_commands_pass_weights_source(capsys):
    from eos_pangaea.cli import main

    # Until the manifest records the hub's file names, the default source fails.
    commands = re.findall(r"eos-pangaea run-cpu encoder=[^`]*?dataset\.root_path=DIR",
                          DOCS.read_text().replace("\\\n", " "))
    assert commands
    for command in commands:
        assert "encoder.encoder_weights=SOURCE" in command, command

    with pytest.raises(SystemExit):
        main(["run-cpu", "--help"])
    epilog = " ".join(capsys.readouterr().out.split()).split("example:", 1)[1]
    assert "encoder.encoder_weights=SOURCE" in epilog


def test_sync_batchnorm_swap_shares_tensors():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.SyncBatchNorm(4), nn.Sequential(nn.SyncBatchNorm(4)))
    keys = list(model.state_dict())
    weight = model[1].weight
    converted = sync_batchnorm_to_batchnorm2d(model)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in converted.modules())
    assert type(converted[1]) is nn.BatchNorm2d
    assert list(converted.state_dict()) == keys
    assert converted[1].weight is weight
    converted.train()
    converted(torch.randn(2, 3, 5, 5))  # SyncBatchNorm would reject CPU input in training here.
    assert int(converted[1].num_batches_tracked) == 1


def test_demo_layout_counts(tmp_path):
    from eos_pangaea.demo_data import build_sen1floods11_layout

    layout = build_sen1floods11_layout(tmp_path / "demo")  # the shipped 128 x 128 chip
    assert layout.splits == {"train": 40, "val": 1, "test": 1}
    splits = tmp_path / "demo" / "v1.1" / "splits" / "flood_handlabeled"
    lines = (splits / "flood_train_data.csv").read_text().splitlines()
    assert len(lines) == 40
    assert all(re.fullmatch(r"\S+_S1Hand\.tif,\S+_LabelHand\.tif", line) for line in lines)
    with pytest.raises(FileExistsError, match="overwrite"):
        build_sen1floods11_layout(tmp_path / "demo")


@pytest.mark.pangaea
def test_demo_layout_reads_with_pangaea_reader(pangaea_config_dir, tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from eos_pangaea.demo_data import build_sen1floods11_layout

    layout = build_sen1floods11_layout(tmp_path / "demo", tile=64, max_train=20)
    config = OmegaConf.load(pangaea_config_dir / "dataset" / "sen1floods11.yaml")
    config.root_path = str(layout.root)
    for split, count in (("train", 20), ("val", 1), ("test", 1)):
        dataset = instantiate(config, split=split)
        assert len(dataset) == count
    sample = dataset[0]
    assert sample["image"]["optical"].shape == (13, 1, 64, 64)
    assert sample["image"]["sar"].shape == (2, 1, 64, 64)
    assert {0, 1} <= set(sample["target"].unique().tolist()) <= {-1, 0, 1}


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    from eos_pangaea.demo_data import build_sen1floods11_layout

    return build_sen1floods11_layout(tmp_path_factory.mktemp("sen1floods11") / "data", max_train=24).root


def run_pipeline(tmp_path, monkeypatch, demo_root, *extra):
    """Run ``eos-pangaea run-cpu --demo`` and return the experiment folder and the encoder it built."""
    from eos_pangaea.cli import main
    from eos_pangaea.pangaea_encoder import EoSFMEncoder

    built = {}
    original = EoSFMEncoder.load_encoder_weights

    def spy(self, logger):
        # Record the encoder and its weights as PANGAEA's run.py hands it to the decoder.
        original(self, logger)
        built["encoder"] = self
        built["specialists"] = {k: v.clone() for k, v in self.ensemble.specialists.state_dict().items()}
        built["head"] = {n: p.detach().clone() for n, p in self.named_parameters()
                         if not n.startswith("ensemble.specialists.")}

    monkeypatch.setattr(EoSFMEncoder, "load_encoder_weights", spy)
    monkeypatch.chdir(tmp_path)
    # The demo job on the prepared folder, made faster with fewer specialists and decoder channels.
    overrides = ["encoder.encoder_weights=random", SPECIALISTS, "decoder.channels=64", "batch_size=2",
                 f"work_dir={tmp_path / 'work'}", *extra]
    assert main(["run-cpu", "--demo", "--demo-root", str(demo_root), *overrides]) == 0
    (exp_dir,) = (tmp_path / "work").iterdir()
    return exp_dir, built


def final_test_iou(log: str) -> dict[str, float]:
    block = log.rsplit("[test] ------- IoU --------", 1)[1].split("INFO", 1)[0]
    values = dict(re.findall(r"^\s*(?:\[test\] )?([A-Za-z][\w ]*?)\s*\t\s*([\d.]+)", block, flags=re.M))
    return {k: float(v) for k, v in values.items()}


def check_trained_head_only(exp_dir: Path, built: dict) -> None:
    """Check that training changed the selection weights and fusion and nothing of the specialists."""
    encoder = built["encoder"]
    for name, tensor in encoder.ensemble.specialists.state_dict().items():
        assert torch.equal(tensor, built["specialists"][name]), name

    (final,) = exp_dir.glob("checkpoint_*_final.pth")
    state = torch.load(final, map_location="cpu", weights_only=False)["model"]
    assert not any(".specialists." in key for key in state)
    assert not torch.equal(state["encoder.ensemble.selection.weight"], built["head"]["ensemble.selection.weight"])
    fusion = [n for n in built["head"] if n.startswith("ensemble.fusion.")]
    assert fusion
    for name in fusion:
        assert not torch.equal(state[f"encoder.{name}"], built["head"][name]), name

    # Without the frozen specialists, a checkpoint contains the head, the small decoder and their optimiser state.
    for checkpoint in exp_dir.glob("checkpoint_*.pth"):
        assert checkpoint.stat().st_size < 20_000_000, checkpoint

    # The test evaluation reloaded the best checkpoint strictly into the same encoder.
    best = torch.load(exp_dir / "checkpoint__best.pth", map_location="cpu", weights_only=False)["model"]
    assert torch.equal(best["encoder.ensemble.selection.weight"], encoder.ensemble.selection.weight.detach())


@pytest.mark.pangaea
@pytest.mark.slow
def test_cpu_run_all_labels(tmp_path, monkeypatch, demo_root, pangaea_config_dir):
    exp_dir, built = run_pipeline(tmp_path, monkeypatch, demo_root)

    assert exp_dir.name.endswith("_eos_fm_seg_upernet_sen1floods11")
    assert (exp_dir / "configs" / "config.yaml").is_file()
    log = (exp_dir / "train.log-0").read_text()
    assert "Total number of train patches: 24" in log
    assert "Loaded checkpoint__best for evaluation" in log  # strict reload of a head-only checkpoint
    iou = final_test_iou(log)
    assert set(iou) == {"Not Water", "Water", "Mean"}, iou
    check_trained_head_only(exp_dir, built)


@pytest.mark.pangaea
@pytest.mark.slow
def test_cpu_run_limited_labels(tmp_path, monkeypatch, demo_root, pangaea_config_dir):
    exp_dir, built = run_pipeline(tmp_path, monkeypatch, demo_root, "limited_label_train=0.1")

    log = (exp_dir / "train.log-0").read_text()
    assert "using stratified strategy, with 10.0% of labels" in log
    patches = int(re.search(r"Total number of train patches: (\d+)", log).group(1))
    assert 2 <= patches < 24
    iou = final_test_iou(log)
    assert set(iou) == {"Not Water", "Water", "Mean"}, iou
    check_trained_head_only(exp_dir, built)
    check_ranked_against_table3(exp_dir, iou["Mean"])


def check_ranked_against_table3(exp_dir: Path, mean_iou: float) -> None:
    """Rank the CPU run's experiment folder against Table 3 of the EoS-FM paper (10 % of labels)."""
    import json

    from eos_pangaea.cli import main

    output = exp_dir.parent / "leaderboard.json"
    status = main(["leaderboard", str(exp_dir.parent), "--reference", "table3", "--labels", "0.1",
                   "--format", "json", "--output", str(output)])
    assert status == 0
    board = json.loads(output.read_text())
    assert board["reference"] == "table3"
    ours = [row for row in board["rows"] if row["source"] == "runs"]
    assert [row["model"] for row in ours] == ["eos_fm"]
    cell = ours[0]["cells"]["Sen1Floods11"]
    assert cell["mean"] == pytest.approx(mean_iou, abs=1e-3)
    assert cell["distance"] == pytest.approx(board["best"]["Sen1Floods11"] - mean_iou, abs=1e-3)
    assert ours[0]["coverage"] == 1
    references = [row["model"] for row in board["rows"] if row["source"] == "reference"]
    assert "CROMA (303M)" in references
    assert "EoS-FM (72 M)" in references
