"""EoSFMEncoder with PANGAEA's real configs and decoders (skipped without PANGAEA)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.pangaea

SMALL = "encoder.specialists=[eurosat,sen12ms-s1]"
COMMON = ["encoder.encoder_weights=random", SMALL, "decoder.channels=32"]

# decoder, dataset, task, extra overrides: every decoder family of the EoS-FM paper's protocol.
DECODER_CASES = [
    ("seg_upernet", "sen1floods11", "segmentation", []),
    ("seg_upernet_mt_ltae", "pastis", "segmentation", ["dataset.multi_temporal=3"]),
    ("seg_upernet_mt_linear", "pastis", "segmentation", ["dataset.multi_temporal=3"]),
    ("seg_siamupernet_conc", "xview2", "change_detection", []),
    ("seg_siamupernet_diff", "spacenet7cd", "change_detection", []),
    ("reg_upernet", "biomassters", "regression", ["dataset.multi_temporal=1"]),
    ("reg_upernet_mt_ltae", "biomassters", "regression", ["dataset.multi_temporal=3"]),
    ("reg_upernet_mt_linear", "biomassters", "regression", ["dataset.multi_temporal=3"]),
]


def compose(config_dir: Path, decoder: str, dataset: str, task: str, extra=(), encoder: str = "eos_fm"):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    overrides = [f"encoder={encoder}", f"dataset={dataset}", f"decoder={decoder}", f"task={task}",
                 "preprocessing=seg_default", "criterion=cross_entropy", *COMMON, *extra]
    with initialize_config_dir(str(config_dir), version_base=None):
        return hydra_compose("train", overrides=overrides)


def build(cfg):
    from hydra.utils import instantiate

    from eos_pangaea.cpu_run import sync_batchnorm_to_batchnorm2d

    encoder = instantiate(cfg.encoder)
    encoder.load_encoder_weights(logging.getLogger("test"))
    decoder = instantiate(cfg.decoder, encoder=encoder)
    return encoder, sync_batchnorm_to_batchnorm2d(decoder)


def sample_input(cfg, batch=2, size=64):
    # Change-detection datasets return two time steps even where multi_temporal is False (xView2).
    steps = 2 if "Siam" in cfg.decoder._target_ else int(cfg.dataset.multi_temporal) or 1
    return {m: torch.randn(batch, len(bands), steps, size, size) for m, bands in cfg.dataset.bands.items()}


def head_state(encoder):
    return {n: p.detach().clone() for n, p in encoder.named_parameters() if not n.startswith("ensemble.specialists.")}


def specialist_state(encoder):
    return {n: t.detach().clone() for n, t in encoder.ensemble.specialists.state_dict().items()}


def train_step(decoder, image, lr=1e-2):
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=lr)
    decoder.train()
    output = decoder(image, output_shape=image[next(iter(image))].shape[-2:])
    loss = output.float().square().mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return output


@pytest.mark.parametrize("decoder_name,dataset,task,extra", DECODER_CASES, ids=[c[0] for c in DECODER_CASES])
def test_decoder_trains_head_only(pangaea_config_dir, decoder_name, dataset, task, extra):
    from pangaea.encoders.base import Encoder

    cfg = compose(pangaea_config_dir, decoder_name, dataset, task, extra)
    encoder, decoder = build(cfg)
    assert isinstance(encoder, Encoder)
    assert cfg.finetune is False
    image = sample_input(cfg)

    # The encoder's own outputs, one time step, have the declared widths.
    encoder.eval()
    features = encoder({m: v[:, :, 0] for m, v in image.items()})
    assert len(features) == len(encoder.output_layers) == 4
    assert [f.shape[1] for f in features] == encoder.output_dim == [40, 80, 160, 320]
    assert [f.shape[-1] for f in features] == [16, 8, 4, 2]

    heads_before, specialists_before = head_state(encoder), specialist_state(encoder)
    output = train_step(decoder, image)
    expected_classes = 1 if task == "regression" else cfg.dataset.num_classes
    assert output.shape == (2, expected_classes, 64, 64)

    heads_after, specialists_after = head_state(encoder), specialist_state(encoder)
    assert not torch.equal(heads_before["ensemble.selection.weight"], heads_after["ensemble.selection.weight"])
    fusion = [n for n in heads_before if n.startswith("ensemble.fusion.")]
    assert fusion
    for name in fusion:
        assert not torch.equal(heads_before[name], heads_after[name]), name
    for name, tensor in specialists_before.items():
        assert torch.equal(tensor, specialists_after[name]), name
    assert not any(p.requires_grad for p in encoder.parameters())


def test_finetune_true_keeps_specialists_frozen(pangaea_config_dir):
    cfg = compose(pangaea_config_dir, "seg_upernet", "sen1floods11", "segmentation", ["finetune=true"])
    encoder, decoder = build(cfg)
    heads_before, specialists_before = head_state(encoder), specialist_state(encoder)
    train_step(decoder, sample_input(cfg))
    heads_after = head_state(encoder)
    assert not torch.equal(heads_before["ensemble.selection.weight"], heads_after["ensemble.selection.weight"])
    for name, tensor in specialist_state(encoder).items():
        assert torch.equal(tensor, specialists_before[name]), name


def test_parameters_yield_specialists_only(pangaea_config_dir):
    cfg = compose(pangaea_config_dir, "seg_upernet", "sen1floods11", "segmentation")
    encoder, decoder = build(cfg)
    own = {id(p) for p in encoder.parameters()}
    specialists = {id(p) for p in encoder.ensemble.specialists.parameters()}
    assert own == specialists
    names = dict(encoder.named_parameters())
    assert "ensemble.selection.weight" in names
    assert any(n.startswith("ensemble.fusion.") for n in names)
    in_decoder = {id(p) for p in decoder.parameters()}
    assert {id(p) for p in encoder.head_parameters()} <= in_decoder


def test_head_builds_graph_inside_no_grad(pangaea_config_dir):
    cfg = compose(pangaea_config_dir, "seg_upernet", "sen1floods11", "segmentation")
    encoder, _ = build(cfg)
    image = {m: v[:, :, 0] for m, v in sample_input(cfg).items()}
    encoder.train()
    with torch.no_grad():
        features = encoder(image)
    assert all(f.requires_grad for f in features)
    encoder.eval()
    features = encoder(image)
    assert not any(f.requires_grad for f in features)


def test_checkpoint_holds_head_and_reloads_strictly(pangaea_config_dir):
    cfg = compose(pangaea_config_dir, "seg_upernet", "sen1floods11", "segmentation")
    encoder, decoder = build(cfg)
    train_step(decoder, sample_input(cfg))
    state = decoder.state_dict()
    assert not any(".specialists." in key for key in state)
    assert "encoder.ensemble.selection.weight" in state

    torch.manual_seed(0)  # Same seed as the autouse fixture: same random specialists.
    _, fresh = build(cfg)
    fresh.load_state_dict(state, strict=True)
    assert torch.equal(fresh.encoder.ensemble.selection.weight, encoder.ensemble.selection.weight)


def test_reg_upernet_rejects_several_time_steps(pangaea_config_dir):
    cfg = compose(pangaea_config_dir, "reg_upernet", "biomassters", "regression", ["dataset.multi_temporal=2"])
    _, decoder = build(cfg)
    with pytest.raises(ValueError, match="2 time steps.*multi-temporal decoder"):
        decoder(sample_input(cfg))


def test_unusable_bands_name_the_dataset_bands(pangaea_config_dir):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = compose(pangaea_config_dir, "seg_upernet", "sen1floods11", "segmentation", ["encoder.specialists=null"])
    OmegaConf.update(cfg, "dataset.bands", {"optical": ["B1", "B9", "B10"]}, merge=False)
    with pytest.raises(Exception) as error:  # Hydra wraps the ValueError in an InstantiationException.
        instantiate(cfg.encoder)
    assert isinstance(error.value.__cause__, ValueError)
    message = str(error.value.__cause__)
    assert "Sen1Floods11" in message
    assert "'B1', 'B9', 'B10'" in message
    assert "No specialist can use this input" in message


def test_top_k_without_warmup_warns(pangaea_config_dir, caplog):
    cfg = compose(pangaea_config_dir, "seg_upernet", "sen1floods11", "segmentation",
                  ["encoder.top_k=1", "encoder.selection_warmup_steps=0"])
    with caplog.at_level(logging.WARNING):
        build(cfg)
    assert "never train" in caplog.text
    assert "encoder.selection_warmup_steps" in caplog.text


def test_frozen_head_warns(pangaea_config_dir, caplog):
    from eos_pangaea.pangaea_encoder import warn_if_fusion_untrained

    cfg = compose(pangaea_config_dir, "seg_upernet", "sen1floods11", "segmentation")
    encoder, _ = build(cfg)
    assert not warn_if_fusion_untrained(encoder, logging.getLogger("test"))
    for parameter in encoder.head_parameters():
        parameter.requires_grad_(False)
    with caplog.at_level(logging.WARNING):
        assert warn_if_fusion_untrained(encoder, logging.getLogger("test"))
    assert "will not train" in caplog.text


def test_ddp_top_k_below_ensemble_size(pangaea_config_dir, tmp_path):
    """Under DDP with find_unused_parameters=False, pruning must leave no parameter without a gradient."""
    import torch.distributed as dist

    cfg = compose(pangaea_config_dir, "seg_upernet", "sen1floods11", "segmentation",
                  ["encoder.top_k=1", "encoder.selection_warmup_steps=1"])
    encoder, decoder = build(cfg)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = torch.nn.parallel.DistributedDataParallel(decoder, find_unused_parameters=False)
        image = sample_input(cfg)
        for _ in range(3):  # warm-up pass, then two pruned passes
            train_step(model, image)
        assert len(encoder.ensemble.selection.selected()) == 1
    finally:
        dist.destroy_process_group()


def test_small_variant_parameter_count(caplog, pangaea_config_dir):
    from hydra.utils import instantiate

    from eos_pangaea.pangaea_encoder import count_parameters

    cfg = compose(pangaea_config_dir, "seg_upernet", "sen1floods11", "segmentation",
                  ["encoder.specialists=null"], encoder="eos_fm_small")
    encoder = instantiate(cfg.encoder)
    counts = count_parameters(encoder)
    assert encoder.ensemble.selection.top_k == 6
    assert len(encoder.ensemble.specialists) == 21
    assert 20e6 < counts["active"] < 24e6, counts
    assert 70e6 < counts["total"] < 85e6, counts
    caplog.set_level(logging.INFO, logger="pangaea-test")
    encoder.load_encoder_weights(logging.getLogger("pangaea-test"))
    assert f"{counts['active']:,} used per inference pass with top_k=6" in caplog.text


def test_pangaea_run_finds_encoder_config(pangaea_config_dir, tmp_path):
    """PANGAEA's own run.py composes encoder=eos_fm through the installed search-path plugin."""
    run_py = pangaea_config_dir.parent / "pangaea" / "run.py"
    command = [sys.executable, str(run_py), "--cfg", "job", "encoder=eos_fm_small", "dataset=sen1floods11",
               "decoder=seg_upernet", "task=segmentation", "preprocessing=seg_default",
               "criterion=cross_entropy"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    assert result.returncode == 0, result.stderr
    assert "_target_: eos_pangaea.pangaea_encoder.EoSFMEncoder" in result.stdout
    assert "top_k: 6" in result.stdout
    assert "download_url: ''" in result.stdout
