"""Import and export of the official EoS-FM ensemble file.

The official code (github.com/pierreadorni/EoS-FM) stores the ensemble as a
``torch.save``-d list of ``(in_chans, state_dict, config)`` tuples, one per
specialist: ``state_dict`` is a timm ``features_only`` backbone,
``config["backbone"]`` a timm model name prefixed ``timm_`` and
``config["encoder_name"]`` an optional name. The file stores no band names or
order, so imported specialists take their bands from the manifest (by name)
or from the caller, and never from the channel count.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from eos_pangaea.specialists import Specialist, SpecialistSpec
from eos_pangaea.weights.files import WeightsError, load_pickle_weights_only
from eos_pangaea.weights.manifest import Manifest, load_manifest

logger = logging.getLogger(__name__)

TIMM_PREFIX = "timm_"


@dataclass(frozen=True)
class OfficialEntry:
    """One specialist of an official ensemble file."""

    index: int
    in_chans: int
    state_dict: Mapping[str, torch.Tensor]
    config: Mapping[str, Any]

    @property
    def backbone(self) -> str:
        """timm model name, without the official ``timm_`` prefix."""
        return str(self.config["backbone"]).removeprefix(TIMM_PREFIX)

    @property
    def encoder_name(self) -> str | None:
        """The name the official file gives this specialist, if any."""
        name = self.config.get("encoder_name")
        return str(name) if name else None


def read_official_ensemble(path: str | Path) -> list[OfficialEntry]:
    """Read an official ensemble file with weights-only unpickling.

    Raises:
        UnsafePickleError: The file needs Python objects other than tensors and containers.
        WeightsError: The file is not a list of ``(in_chans, state_dict, config)``.
    """
    content = load_pickle_weights_only(path)
    if not isinstance(content, (list, tuple)) or not content:
        raise WeightsError(f"{path}: expected a non-empty list of (in_chans, state_dict, config), got {type(content).__name__}")
    entries = []
    for index, item in enumerate(content):
        if not isinstance(item, (list, tuple)) or len(item) != 3:
            raise WeightsError(f"{path}: entry {index} is not an (in_chans, state_dict, config) triple")
        in_chans, state, config = item
        if not isinstance(in_chans, int) or in_chans <= 0:
            raise WeightsError(f"{path}: entry {index} has in_chans {in_chans!r}; expected a positive integer")
        if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise WeightsError(f"{path}: entry {index} has no tensor state dict")
        if not isinstance(config, Mapping) or not isinstance(config.get("backbone"), str):
            raise WeightsError(f"{path}: entry {index} has no config['backbone'] string (a timm model name)")
        entries.append(OfficialEntry(index, in_chans, dict(state), dict(config)))
    return entries


def official_specialists(
    path: str | Path,
    *,
    names: Sequence[str] | None = None,
    bands: Mapping[str, Sequence[str]] | None = None,
    manifest: Manifest | None = None,
) -> list[tuple[Specialist, OfficialEntry]]:
    """Build specialists with the weights of an official ensemble file.

    Args:
        path: The official file.
        names: Name of each entry in file order; by default each entry's
            ``config["encoder_name"]``.
        bands: ``name -> band names`` for specialists the manifest lacks or
            whose manifest bands should be overridden.
        manifest: Manifest to take bands from; the shipped one by default.

    Raises:
        ValueError: ``names`` has the wrong length, an entry has no name, or a
            specialist's bands are neither in the manifest nor given.
        WeightsError: A state dict does not fit its backbone or bands.
    """
    from eos_pangaea.weights.loader import apply_state_dict

    entries = read_official_ensemble(path)
    manifest = manifest or load_manifest()
    if names is not None and len(names) != len(entries):
        raise ValueError(f"{path} contains {len(entries)} specialists but {len(names)} names were given; give one name per entry, in file order.")
    built = []
    for position, entry in enumerate(entries):
        name = names[position] if names is not None else entry.encoder_name
        if not name:
            raise ValueError(f"{path}: entry {entry.index} has no config['encoder_name']; pass names for every entry (--names).")
        spec_bands = _bands_for(name, entry, bands, manifest, path)
        spec = SpecialistSpec(name, spec_bands, entry.backbone, _metadata(name, manifest))
        specialist = Specialist(spec)
        apply_state_dict(specialist, entry.state_dict, where=f"{path} entry {entry.index}")
        built.append((specialist, entry))
    return built


def _bands_for(name: str, entry: OfficialEntry, bands: Mapping[str, Sequence[str]] | None,
               manifest: Manifest, path: str | Path) -> tuple[str, ...]:
    if bands and name in bands:
        chosen = tuple(bands[name])
    elif name in manifest.names():
        chosen = manifest.get(name).bands
    else:
        raise ValueError(
            f"{path}: entry {entry.index} ({name!r}, {entry.in_chans} channels) is not in the weights manifest, "
            f"so its band names are unknown; pass them, e.g. --bands {name}=B04,B03,B02. Bands are never "
            "guessed from the channel count."
        )
    if len(chosen) != entry.in_chans:
        raise ValueError(
            f"{path}: entry {entry.index} ({name!r}) has in_chans {entry.in_chans} but its bands {list(chosen)} "
            f"are {len(chosen)}; check the name-to-entry order (--names) or the bands."
        )
    return chosen


def _metadata(name: str, manifest: Manifest) -> dict[str, Any]:
    return manifest.get(name).as_dict() if name in manifest.names() else {}


def export_official(specialists: Sequence[Specialist], path: str | Path) -> None:
    """Write specialists as an official ensemble file that the official code can load.

    Each entry is ``(in_chans, features_only state dict, {"backbone": "timm_<name>",
    "encoder_name": <name>, "bands": [...]})``; the official loader ignores the
    extra ``bands`` key.
    """
    content = []
    for specialist in specialists:
        spec = specialist.spec
        state = {k: v.detach().cpu().clone() for k, v in specialist.backbone.state_dict().items()}
        config = {"backbone": f"{TIMM_PREFIX}{spec.backbone}", "encoder_name": spec.name, "bands": list(spec.bands)}
        content.append((spec.in_chans, state, config))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(content, path)
    logger.info("Wrote %d specialists to %s in the official ensemble format", len(content), path)
