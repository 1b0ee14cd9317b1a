"""Our ensemble formats on disk: a directory of specialist files, or one file.

**Directory** (what ``eos-pangaea weights export`` and ``import-official``
write): one ``<name>.safetensors`` per specialist (see
:mod:`eos_pangaea.weights.files`) plus ``eos-pangaea-weights.json``, an index
listing each specialist's file, bands, backbone, file SHA-256 and weights
digest (the digest :meth:`EoSFM.specialist_digests` reports, which head
checkpoints record). A directory without an index is read by file name:
``<name>.safetensors``, or a ``.pth``/``.pt`` pickle of that name.

**Single file**: one safetensors file whose keys are ``<name>/<backbone key>``
and whose metadata ``eos_pangaea_ensemble`` lists every specialist's name,
backbone and bands.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from eos_pangaea.specialists import Specialist
from eos_pangaea.weights.files import (
    PICKLE_SUFFIXES,
    SAFETENSORS_SUFFIX,
    WEIGHTS_FORMAT_VERSION,
    WeightsError,
    save_specialist_file,
    sha256_file,
)

logger = logging.getLogger(__name__)

INDEX_NAME = "eos-pangaea-weights.json"
ENSEMBLE_METADATA_KEY = "eos_pangaea_ensemble"


@dataclass(frozen=True)
class SpecialistFile:
    """Location of one specialist's weights file, with the checksum, bands and backbone its index lists."""

    name: str
    path: Path
    sha256: str | None
    bands: tuple[str, ...] | None = None
    backbone: str | None = None


def export_directory(specialists: Sequence[Specialist], out_dir: str | Path, *, extra: Mapping[str, Any] | None = None) -> Path:
    """Write specialists as ``<name>.safetensors`` files plus an index, and return the index path.

    Args:
        specialists: Specialists to write, for example those a pruned
            ensemble keeps.
        out_dir: Directory to create or fill; existing files of the same
            names are replaced.
        extra: More top-level index fields, for example where the weights came from.
    """
    from eos_pangaea.ensemble import tensor_digest

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for specialist in specialists:
        spec = specialist.spec
        state = specialist.backbone.state_dict()
        path = out_dir / f"{spec.name}{SAFETENSORS_SUFFIX}"
        sha = save_specialist_file(path, state, name=spec.name, backbone=spec.backbone, bands=spec.bands)
        entries.append({
            "name": spec.name,
            "file": path.name,
            "sha256": sha,
            "weights_sha256": tensor_digest(specialist.state_dict()),
            "backbone": spec.backbone,
            "bands": list(spec.bands),
        })
        logger.info("Exported specialist %s to %s (SHA-256 %s)", spec.name, path, sha)
    index = {"format_version": int(WEIGHTS_FORMAT_VERSION), **dict(extra or {}), "specialists": entries}
    index_path = out_dir / INDEX_NAME
    index_path.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return index_path


def read_index(index_path: str | Path) -> list[SpecialistFile]:
    """Read an index file and return its specialists' files.

    Raises:
        WeightsError: The index is not valid JSON, lacks a field, or names a file outside its directory.
    """
    index_path = Path(index_path)
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        entries = index["specialists"]
        files = []
        for entry in entries:
            file = Path(entry["file"])
            if file.is_absolute() or ".." in file.parts:
                raise WeightsError(f"{index_path}: file {entry['file']!r} of {entry['name']!r} must be a plain "
                                   "name inside the index's directory.")
            files.append(SpecialistFile(entry["name"], index_path.parent / file, entry.get("sha256"),
                                        tuple(entry["bands"]) if "bands" in entry else None, entry.get("backbone")))
        return files
    except (ValueError, KeyError, TypeError) as error:
        if isinstance(error, WeightsError):
            raise
        raise WeightsError(f"{index_path} is not a valid eos-pangaea weights index ({error!r}); export it again.") from error


def find_directory_files(directory: str | Path, names: Sequence[str]) -> dict[str, SpecialistFile]:
    """Find the files of ``names`` in a directory, through its index if it has one.

    Raises:
        FileNotFoundError: A specialist has no file in the directory.
    """
    directory = Path(directory)
    index_path = directory / INDEX_NAME
    if index_path.is_file():
        listed = {f.name: f for f in read_index(index_path)}
        missing = [n for n in names if n not in listed]
        if missing:
            raise FileNotFoundError(
                f"{index_path} lists no weights for specialists {missing} (it lists {sorted(listed)}); "
                "export them into this directory or drop them from the ensemble."
            )
        return {n: listed[n] for n in names}

    found: dict[str, SpecialistFile] = {}
    for name in names:
        candidates = [directory / f"{name}{suffix}" for suffix in (SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES)]
        existing = [c for c in candidates if c.is_file()]
        if not existing:
            raise FileNotFoundError(
                f"No weights for specialist {name!r} in {directory}: expected {name}{SAFETENSORS_SUFFIX} "
                f"(or {name}.pth / {name}.pt)."
            )
        found[name] = SpecialistFile(name, existing[0], None)
    return found


def save_ensemble_file(specialists: Sequence[Specialist], path: str | Path) -> str:
    """Write specialists into one safetensors file and return its SHA-256."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    listing = []
    for specialist in specialists:
        spec = specialist.spec
        for key, tensor in specialist.backbone.state_dict().items():
            tensors[f"{spec.name}/{key}"] = tensor.detach().cpu().contiguous()
        listing.append({"name": spec.name, "backbone": spec.backbone, "bands": list(spec.bands)})
    metadata = {"format": "pt", "eos_pangaea_format_version": WEIGHTS_FORMAT_VERSION,
                ENSEMBLE_METADATA_KEY: json.dumps(listing)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return sha256_file(path)


def split_ensemble_file(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], path: Path) -> dict[str, dict[str, Any]]:
    """Split the content of a single-file ensemble into ``name -> {state, bands, backbone}``.

    Raises:
        WeightsError: The metadata does not list the specialists, or a key has no listed specialist.
    """
    try:
        listing = json.loads(metadata[ENSEMBLE_METADATA_KEY])
    except (KeyError, ValueError) as error:
        raise WeightsError(f"{path} is a safetensors file without a valid {ENSEMBLE_METADATA_KEY!r} listing") from error
    split = {e["name"]: {"state": {}, "bands": tuple(e["bands"]), "backbone": e["backbone"]} for e in listing}
    for key, tensor in tensors.items():
        name, _, inner = key.partition("/")
        if name not in split:
            raise WeightsError(f"{path}: tensor {key!r} belongs to no specialist listed in its metadata")
        split[name]["state"][inner] = tensor
    return split
