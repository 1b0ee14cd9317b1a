"""``eos-pangaea prune``: keep only the top-k specialists of a trained PANGAEA run."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

RANDOM_WEIGHTS = "random"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``prune`` sub-command."""
    parser = subparsers.add_parser(
        "prune",
        help="turn a trained top-k checkpoint into a compact ensemble",
        description=(
            "Read a PANGAEA checkpoint of an EoS-FM run trained with top_k, keep only the k "
            "specialists with the largest selection weights (with their normalisation statistics, "
            "selection weights and fusion columns) and write them as a directory that "
            "load_pruned_ensemble and the encoder's weights option read. The ensemble is rebuilt "
            "from the run's configs/config.yaml."
        ),
    )
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT", help="checkpoint_*.pth of a PANGAEA experiment folder")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="directory to write the pruned ensemble to")
    add_run_config_options(parser)
    parser.add_argument(
        "--encoder-weights", metavar="SOURCE",
        help="specialist weights to load (default: the run's encoder.encoder_weights); 'random' rebuilds the "
        "random specialists from the run's seed as PANGAEA's run.py does, which matches a run trained with "
        "encoder.encoder_weights=random",
    )
    parser.set_defaults(func=run)


def add_run_config_options(parser: argparse.ArgumentParser) -> None:
    """Add the options that locate and override a run's settings."""
    parser.add_argument(
        "--run-config", type=Path, metavar="FILE",
        help="the run's Hydra config (default: configs/config.yaml in the checkpoint's folder)",
    )
    parser.add_argument("--top-k", type=int, metavar="K", help="number of specialists to keep (default: the run's encoder.top_k)")


def run(args: argparse.Namespace) -> int:
    """Prune the checkpoint, write the directory and print the report."""
    from eos_pangaea.pruning import count_parameters, export_pruned, load_checkpoint_head, prune_checkpoint, selection_report
    from eos_pangaea.specialists import load_specialist_specs

    head = load_checkpoint_head(args.checkpoint)
    settings = read_encoder_settings(args.checkpoint, args.run_config)
    if args.top_k is not None:
        names = settings.get("specialists")
        check_top_k(args.top_k, len(names) if names is not None else len(load_specialist_specs()), "the run")
        settings["top_k"] = args.top_k
    weights = args.encoder_weights or str(settings.get("encoder_weights") or RANDOM_WEIGHTS)
    seed = read_run_seed(run_config_path(args.checkpoint, args.run_config))
    model = build_ensemble(settings, seed=seed)
    _load_specialists(model, weights)
    _check_specialist_weights(model, head, weights, seed, args.checkpoint)

    pruned = prune_checkpoint(model, args.checkpoint, head=head, band_labels=settings.get("band_labels") or {},
                              missing_bands=settings.get("missing_bands") or "skip")
    print(selection_report(model.selection, eligible_only=True))
    export_pruned(pruned, args.output, source={
        "checkpoint": str(args.checkpoint.resolve()),
        "top_k": settings["top_k"],
        "encoder_weights": weights,
        "dropped": [s.name for s in model.specialists if s.name not in {p.name for p in pruned.specialists}],
    })
    before, after = count_parameters(model), count_parameters(pruned)
    print(f"\nKept {len(pruned.specialists)} of {len(model.specialists)} specialists: "
          + ", ".join(s.name for s in pruned.specialists))
    print(f"Parameters: {after['total']:,} ({after['specialists']:,} in specialists, {after['head']:,} in "
          f"selection and fusion), down from {before['total']:,}")
    print(f"Wrote {args.output}")
    names = ",".join(s.name for s in pruned.specialists)
    print(f"PANGAEA overrides for these specialists: encoder.specialists=[{names}] encoder.top_k=null "
          f"encoder.encoder_weights={args.output.resolve()}")
    # NOTE: the PANGAEA encoder loads only the specialists from such a directory; its trained head
    # (head.safetensors) needs eos_pangaea.pruning.load_pruned_head, which the encoder does not call yet.
    return 0


def check_top_k(top_k: int, count: int, owner: str) -> None:
    """Reject a ``--top-k`` outside 1 to ``count``, the number of specialists of ``owner``.

    Raises:
        ValueError: ``top_k`` is out of range.
    """
    if not 1 <= top_k <= count:
        raise ValueError(f"--top-k {top_k} is invalid: {owner} has {count} specialists, so pass a k from 1 to {count}.")


def run_config_path(checkpoint: Path, run_config: Path | None) -> Path:
    """Return ``run_config``, or ``configs/config.yaml`` in the checkpoint's folder."""
    return run_config or checkpoint.parent / "configs" / "config.yaml"


def read_run_seed(path: Path) -> int | None:
    """Return the run's top-level ``seed`` from its Hydra config, or ``None`` when it is not an integer."""
    from omegaconf import OmegaConf

    seed = OmegaConf.load(path).get("seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def read_encoder_settings(checkpoint: Path, run_config: Path | None) -> dict[str, Any]:
    """Return the run's resolved ``encoder`` section.

    Raises:
        FileNotFoundError: The config file is missing.
        ValueError: The config has no EoS-FM encoder section.
    """
    from omegaconf import OmegaConf

    path = run_config_path(checkpoint, run_config)
    if not path.is_file():
        raise FileNotFoundError(f"Run config {path} not found; pass --run-config with the run's configs/config.yaml.")
    config = OmegaConf.load(path)
    if "encoder" not in config:
        raise ValueError(f"{path} has no 'encoder' section; pass the Hydra config of an EoS-FM run.")
    settings = OmegaConf.to_container(config.encoder, resolve=True)
    target = str(settings.get("_target_", ""))
    if not target.startswith("eos_pangaea."):
        raise ValueError(f"{path} configures encoder {target or settings.get('model_name')!r}, not EoS-FM; pass "
                         "the config of a run with encoder=eos_fm or eos_fm_small.")
    return settings


def build_ensemble(settings: dict[str, Any], seed: int | None = None):
    """Build the ensemble a run's encoder settings describe, with random specialists.

    With ``seed``, the specialists are drawn as in the run: PANGAEA's
    ``run.py`` calls ``fix_seed(cfg.seed)`` (``torch.manual_seed`` among
    others) and then builds the encoder, whose first random draws are the
    specialists. The global torch random state is restored afterwards.
    """
    import torch

    from eos_pangaea.ensemble import EoSFM
    from eos_pangaea.specialists import build_specialists, load_specialist_specs

    names = settings.get("specialists")
    specs = load_specialist_specs(None if names is None else list(names))
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        specialists = build_specialists(specs)
    return EoSFM(
        specialists,
        settings["input_bands"],
        dataset=settings.get("dataset_name"),
        band_labels=settings.get("band_labels") or {},
        missing_bands=settings.get("missing_bands") or "skip",
        norm=settings.get("norm") or "batch",
        top_k=settings.get("top_k"),
        warmup_steps=int(settings.get("selection_warmup_steps") or 0),
        width_multiplier=float(settings.get("width_multiplier") or 1.0),
        specialists_in_state_dict=False,
    )


def _load_specialists(model, weights: str) -> None:
    if weights == RANDOM_WEIGHTS:
        logger.info("Specialists keep the random initialisation drawn from the run's seed (encoder_weights=random).")
        return
    from eos_pangaea.weights import load_ensemble_weights

    load_ensemble_weights(model, weights)


def _check_specialist_weights(model, head: dict, weights: str, seed: int | None, checkpoint: Path) -> None:
    """Check the specialists' digests against those the checkpoint records, with a fix for the command line."""
    extra = head.get("_extra_state")
    recorded = extra.get("sha256") if isinstance(extra, dict) else None
    if not isinstance(recorded, dict):
        return  # The head's own check (EoSFM.set_extra_state) reports a checkpoint without digests.
    current = model.specialist_digests()
    changed = [name for name, digest in recorded.items() if name in current and current[name] != digest]
    if not changed:
        return
    if weights != RANDOM_WEIGHTS:
        loaded = f"the weights --encoder-weights {weights} loads"
    elif seed is None:
        loaded = "random specialists, and the run config has no integer seed to draw them as the run did"
    else:
        loaded = f"the random specialists drawn from the run's seed {seed}"
    raise ValueError(
        f"{checkpoint} was trained with other weights for specialists {changed} than {loaded}; pass "
        "--encoder-weights SOURCE with the specialist weights the run was trained with (its "
        "encoder.encoder_weights, for example hf://pierreadorni/eos-fm or a local directory)."
    )
