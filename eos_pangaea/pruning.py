"""Train-time pruning: turn an ensemble trained with top-k selection into a compact one.

After training with ``top_k = k``, only the k specialists with the largest
selection weights ever run in eval mode. :func:`prune_ensemble` builds an
ensemble of just those k specialists, with their streams' normalisation
statistics, their selection weights and the fusion columns of their
streams. In eval mode it gives the same features as the trained ensemble
(the EoS-FM paper's "Small" variant, about 22 M parameters with k = 6).

On disk (:func:`export_pruned`, read back by :func:`load_pruned_ensemble`),
a pruned ensemble is a directory holding:

- one ``<name>.safetensors`` per kept specialist plus the weights index
  ``eos-pangaea-weights.json`` (:func:`eos_pangaea.weights.export_directory`);
- ``head.safetensors``: selection weights, normalisation statistics, fusion;
- ``eos-pangaea-pruned.json``: how to rebuild the ensemble (input bands,
  dataset, options, specialists with their bands and weight digests) and
  where it came from.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from eos_pangaea.ensemble import EoSFM
from eos_pangaea.selection import SpecialistSelection
from eos_pangaea.specialists import Specialist, SpecialistSpec

logger = logging.getLogger(__name__)

PRUNED_FORMAT_VERSION = 1
CONFIG_NAME = "eos-pangaea-pruned.json"
HEAD_NAME = "head.safetensors"
# Suffix of the selection weights' key in a PANGAEA checkpoint's "model" dict,
# which is the decoder's state dict and contains the encoder under "encoder.".
SELECTION_KEY_SUFFIX = "selection.weight"


def prune_ensemble(
    model: EoSFM,
    keep: Sequence[int] | None = None,
    *,
    band_labels: Mapping[str, str] | None = None,
    missing_bands: str | None = None,
) -> EoSFM:
    """Build an ensemble of only the kept specialists with the same eval-mode features.

    The new ensemble shares the kept specialist modules with ``model`` and
    copies the rest: selection weights, the kept streams' normalisation
    statistics, and the fusion weight columns of the kept streams. It has
    no top-k cut, since every specialist it contains is kept.

    Args:
        model: The trained ensemble.
        keep: Indices of the specialists to keep; by default the ones
            ``model`` selects in eval mode (its top k).
        band_labels: Extra ``label -> role`` entries ``model`` was built
            with; read from ``model.band_labels`` when it has that attribute.
        missing_bands: The ``missing_bands`` policy ``model`` was built with;
            read from ``model.missing_bands`` when present, else ``"skip"``.

    Returns:
        The pruned ensemble, in the training mode of ``model``.

    Raises:
        ValueError: ``keep`` is empty, names an unknown or ineligible
            specialist, or the kept streams cannot be rebuilt from the bands.
    """
    keep = sorted(set(model.selection.selected(training=False) if keep is None else keep))
    _check_keep(model, keep)
    band_labels = dict(band_labels if band_labels is not None else getattr(model, "band_labels", None) or {})
    missing_bands = missing_bands or getattr(model, "missing_bands", None) or "skip"

    pruned = EoSFM(
        [model.specialists[i] for i in keep],
        model.input_bands,
        dataset=model.dataset,
        band_labels=band_labels,
        missing_bands=missing_bands,
        norm=model.norms.kind,
        out_channels=model.out_channels,
        batch_streams=model.batch_streams,
        channels_last=model.channels_last,
        execution=model.execution,
        specialists_in_state_dict=model.specialists_in_state_dict,
    )
    old_streams = [stream for i in keep for stream in model._streams_of[i]]
    _check_same_streams(model, pruned, keep, old_streams)
    _copy_head(model, pruned, keep, old_streams)
    pruned.band_labels = band_labels
    pruned.missing_bands = missing_bands
    return pruned.train(model.training)


def count_parameters(model: EoSFM) -> dict[str, int]:
    """Return the parameter counts of an ensemble: ``specialists``, ``head`` and ``total``."""
    specialists = sum(p.numel() for p in model.specialists.parameters())
    total = sum(p.numel() for p in model.parameters())
    return {"specialists": specialists, "head": total - specialists, "total": total}


def selection_report(selection: SpecialistSelection, eligible_only: bool = False) -> str:
    """Format the specialists ranked by selection weight as a text table.

    Args:
        selection: The ensemble's selection module.
        eligible_only: Leave out specialists that cannot see the input.
    """
    eligible = {name: bool(flag) for name, flag in zip(selection.names, selection.eligible.tolist())}
    k = "all" if selection.top_k is None else str(selection.top_k)
    lines = [f"Specialists ranked by selection weight (top_k={k}):",
             f"{'rank':>4}  {'specialist':<18} {'weight':>9}  status"]
    for rank, (name, weight, kept) in enumerate(selection.ranking(), start=1):
        if eligible_only and not eligible[name]:
            continue
        if kept:
            status = "kept"
        elif eligible[name]:
            status = "dropped"
        else:
            status = "no stream for this input"
        lines.append(f"{rank:>4}  {name:<18} {weight:>9.4f}  {status}")
    return "\n".join(lines)


def log_selection_report(model: EoSFM, log: logging.Logger | None = None) -> None:
    """Log :func:`selection_report` of ``model`` at INFO level."""
    (log or logger).info("%s", selection_report(model.selection))


def log_selection_after_training(model: EoSFM) -> None:
    """Log the selection ranking when training passes happened since the last report.

    :meth:`EoSFM.train` calls this when the ensemble leaves training mode,
    which PANGAEA's evaluator does after every training epoch, so the run's
    log contains the ranking after each epoch and after the last one.
    """
    steps = int(model.selection.steps_seen)
    if steps == 0 or steps == getattr(model, "_ranking_logged_at", 0):
        return
    model._ranking_logged_at = steps
    logger.info("EoS-FM selection after %d training passes.\n%s", steps,
                selection_report(model.selection, eligible_only=True))


# ---------------------------------------------------------------- checkpoints


def load_checkpoint_head(path: str | Path) -> dict[str, torch.Tensor | Any]:
    """Return the EoS-FM head state dict stored in a PANGAEA checkpoint.

    PANGAEA's trainer saves ``{"model": decoder.state_dict(), "optimizer":
    ..., "lr_scheduler": ..., "epoch": ...}``; the encoder's keys start with
    ``encoder.`` and, for our adapter, ``encoder.ensemble.``. The file is
    read with :func:`eos_pangaea.weights.files.read_weights_file`, so a
    pickle is loaded only with ``torch.load(weights_only=True)`` and no code
    in it runs.

    Args:
        path: A ``checkpoint__best.pth``, ``checkpoint_<epoch>.pth`` or
            ``checkpoint_<n>_final.pth`` file, or a state dict saved alone.

    Returns:
        The ensemble's keys with their prefix removed, ``selection.weight``
        among them, plus ``_extra_state`` when the checkpoint has it.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafePickleError: The file is a pickle that needs Python objects
            other than tensors and containers, which could run code.
        WeightsError: The file is not a torch or safetensors file, or is
            truncated or corrupt.
        ValueError: The file contains no EoS-FM selection weights, or several.
    """
    from eos_pangaea.weights.files import WeightsError, read_weights_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} not found; pass a checkpoint_*.pth file of a PANGAEA experiment folder.")
    try:
        content, _ = read_weights_file(path)
    except (KeyError, IndexError, TypeError, AttributeError, EOFError) as error:
        # torch's weights-only unpickler raises these on some corrupt pickles instead of UnpicklingError.
        raise WeightsError(f"{path} could not be read as a torch file ({type(error).__name__}: {error}); it is "
                           "truncated or corrupt, so pass a checkpoint_*.pth file PANGAEA wrote.") from error
    state = content.get("model", content) if isinstance(content, Mapping) else None
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} contains no state dict (found {type(content).__name__}); pass a PANGAEA checkpoint.")
    prefixes = sorted(k[: -len(SELECTION_KEY_SUFFIX)] for k in state if k.endswith(SELECTION_KEY_SUFFIX))
    if len(prefixes) != 1:
        raise ValueError(
            f"{path} has {len(prefixes)} EoS-FM selection weights ({prefixes or 'no key ending in selection.weight'}); "
            "pass a checkpoint of a PANGAEA run with encoder=eos_fm or eos_fm_small."
        )
    prefix = prefixes[0]
    head = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    logger.info("Read %d EoS-FM head entries under %r from %s", len(head), prefix, path)
    return head


def load_head_into(model: EoSFM, head: Mapping[str, Any], source: str = "the checkpoint") -> None:
    """Load a head state dict into ``model``, whose specialists must already hold their weights.

    Raises:
        ValueError: Keys or shapes differ, or the head was trained on other
            specialists or other specialist weights.
    """
    state = {k: v for k, v in head.items() if not k.startswith("specialists.")}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise ValueError(f"The EoS-FM head in {source} does not fit this ensemble: {error}. Build the "
                         "ensemble with the run's input bands, specialists, norm and width_multiplier.") from error
    missing = [k for k in result.missing_keys if not k.startswith("specialists.") and k != "_extra_state"]
    if missing or result.unexpected_keys:
        raise ValueError(f"The EoS-FM head in {source} does not fit this ensemble: missing {missing}, unexpected "
                         f"{list(result.unexpected_keys)}. Build the ensemble with the run's settings.")


def prune_checkpoint(
    model: EoSFM, checkpoint: str | Path, *, head: Mapping[str, Any] | None = None, **options: Any
) -> EoSFM:
    """Load a PANGAEA checkpoint's head into ``model`` and prune it to its top k.

    Args:
        model: The ensemble as the run built it, specialists' weights loaded.
        checkpoint: The PANGAEA checkpoint file.
        head: The head :func:`load_checkpoint_head` already read from
            ``checkpoint``; read from the file when omitted.
        **options: Passed to :func:`prune_ensemble`.

    Raises:
        ValueError: The head does not fit ``model``, or ``model`` has no top-k cut.
    """
    if head is None:
        head = load_checkpoint_head(checkpoint)
    load_head_into(model, head, source=str(checkpoint))
    if model.selection.top_k is None:
        raise ValueError(f"The ensemble has top_k=None, so every specialist is kept and pruning removes nothing; "
                         f"build it with the run's top_k (or the k to keep) before pruning {checkpoint}.")
    model.eval()
    return prune_ensemble(model, **options)


# ---------------------------------------------------------------- files


def export_pruned(pruned: EoSFM, out_dir: str | Path, *, source: Mapping[str, Any] | None = None) -> Path:
    """Write a pruned ensemble as a directory that :func:`load_pruned_ensemble` reads.

    Args:
        pruned: The ensemble to write (any ensemble works; all of its
            specialists are written).
        out_dir: Directory to create or fill.
        source: Provenance to record, for example the checkpoint path.

    Returns:
        The path of the ``eos-pangaea-pruned.json`` file.
    """
    from safetensors.torch import save_file

    from eos_pangaea.weights import export_directory

    out_dir = Path(out_dir)
    export_directory(list(pruned.specialists), out_dir, extra={"pruned_ensemble": CONFIG_NAME})
    head = {k: v.detach().cpu().contiguous() for k, v in pruned.state_dict().items()
            if isinstance(v, torch.Tensor) and not k.startswith("specialists.")}
    save_file(head, str(out_dir / HEAD_NAME))

    config = {
        "format_version": PRUNED_FORMAT_VERSION,
        "input_bands": pruned.input_bands,
        "dataset": pruned.dataset,
        "band_labels": dict(getattr(pruned, "band_labels", None) or {}),
        "missing_bands": getattr(pruned, "missing_bands", None) or "skip",
        "norm": pruned.norms.kind,
        "out_channels": pruned.out_channels,
        "specialists": [
            {"name": s.name, "bands": list(s.spec.bands), "backbone": s.spec.backbone, "weights_sha256": digest}
            for s, digest in zip(pruned.specialists, pruned.specialist_digests().values())
        ],
        "parameters": count_parameters(pruned),
        "source": dict(source or {}),
    }
    config_path = out_dir / CONFIG_NAME
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    logger.info("Wrote the pruned ensemble (%d specialists) to %s", len(pruned.specialists), out_dir)
    return config_path


def is_pruned_export(path: str | Path) -> bool:
    """Return whether ``path`` is a directory written by :func:`export_pruned`."""
    return (Path(path) / CONFIG_NAME).is_file()


def load_pruned_ensemble(path: str | Path, **options: Any) -> EoSFM:
    """Rebuild a pruned ensemble from a directory written by :func:`export_pruned`.

    The specialists' files are verified against the index checksums by
    :func:`eos_pangaea.weights.load_ensemble_weights`, then the head is loaded.

    Args:
        path: The directory.
        **options: More :class:`EoSFM` options, such as ``execution`` or
            ``specialists_in_state_dict``.

    Returns:
        The ensemble in eval mode.

    Raises:
        FileNotFoundError: The directory or one of its files is missing.
        ValueError: The files are of another format version or do not match.
    """
    from eos_pangaea.weights import load_ensemble_weights

    path = Path(path)
    config_path = path / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found; pass a directory written by `eos-pangaea prune`.")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("format_version") != PRUNED_FORMAT_VERSION:
        raise ValueError(f"{config_path} has format_version {config.get('format_version')!r}; this eos-pangaea "
                         f"reads version {PRUNED_FORMAT_VERSION}. Prune the checkpoint again with this version.")

    specs = [SpecialistSpec(s["name"], tuple(s["bands"]), s["backbone"]) for s in config["specialists"]]
    model = EoSFM(
        [Specialist(spec) for spec in specs],
        config["input_bands"],
        dataset=config["dataset"],
        band_labels=config["band_labels"],
        missing_bands=config["missing_bands"],
        norm=config["norm"],
        out_channels=config["out_channels"],
        **options,
    )
    load_ensemble_weights(model, path)
    model.band_labels = dict(config["band_labels"])
    model.missing_bands = config["missing_bands"]
    recorded = {s["name"]: s["weights_sha256"] for s in config["specialists"]}
    changed = [name for name, digest in model.specialist_digests().items() if recorded[name] != digest]
    if changed:
        raise ValueError(f"Specialists {changed} in {path} differ from the weights the pruned head was fitted "
                         "with; export the pruned ensemble again.")
    load_pruned_head(model, path)
    return model.eval()


def load_pruned_head(model: EoSFM, path: str | Path) -> None:
    """Load the head of a directory written by :func:`export_pruned` into ``model``.

    ``model`` must contain the directory's specialists, in its order, with
    their weights loaded. An encoder built with ``specialists`` set to the
    kept names, ``top_k`` unset and the directory as weights source meets this.

    Raises:
        FileNotFoundError: The head file is missing.
        ValueError: The head does not fit ``model``.
    """
    from safetensors.torch import load_file

    head_path = Path(path) / HEAD_NAME
    if not head_path.is_file():
        raise FileNotFoundError(f"{head_path} not found; pass a directory written by `eos-pangaea prune`.")
    load_head_into(model, load_file(str(head_path)), source=str(head_path))


# ---------------------------------------------------------------- helpers


def _check_keep(model: EoSFM, keep: Sequence[int]) -> None:
    count = len(model.specialists)
    if not keep:
        raise ValueError("keep is empty; name at least one specialist to keep.")
    invalid = [i for i in keep if not 0 <= i < count]
    if invalid:
        raise ValueError(f"Specialist indices {invalid} are invalid for an ensemble of {count}; use 0..{count - 1}.")
    unusable = [model.specialists[i].name for i in keep if not model._streams_of[i]]
    if unusable:
        raise ValueError(f"Specialists {unusable} have no stream for the input bands, so keeping them adds only "
                         "parameters; leave them out of keep.")


def _check_same_streams(model: EoSFM, pruned: EoSFM, keep: Sequence[int], old_streams: Sequence[int]) -> None:
    """Check that the pruned ensemble routes the same bands to each kept specialist."""
    old = [(keep.index(model.streams[s].specialist), model.streams[s].route.roles, model.streams[s].sources)
           for s in old_streams]
    new = [(s.specialist, s.route.roles, s.sources) for s in pruned.streams]
    if old != new:
        raise ValueError(
            "The pruned ensemble routes the input differently from the trained one; pass the band_labels "
            "and missing_bands the trained ensemble was built with."
        )


def _copy_head(model: EoSFM, pruned: EoSFM, keep: Sequence[int], old_streams: Sequence[int]) -> None:
    with torch.no_grad():
        pruned.selection.weight.copy_(model.selection.weight[list(keep)])
        pruned.selection.steps_seen.copy_(model.selection.steps_seen)
        for new_stream, old_stream in enumerate(old_streams):
            pruned.norms.norms[new_stream].load_state_dict(model.norms.norms[old_stream].state_dict())
        for level, (new_conv, old_conv) in enumerate(zip(pruned.fusion.convs, model.fusion.convs)):
            columns = model.fusion._columns(level, tuple(old_streams), old_conv.weight.device)
            new_conv.weight.copy_(old_conv.weight.index_select(1, columns))
            new_conv.bias.copy_(old_conv.bias)
