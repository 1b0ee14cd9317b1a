"""The weights layer: manifest, safe file reading, downloads, import and export.

Entry point: :func:`load_ensemble_weights` fills an :class:`~eos_pangaea.EoSFM`
ensemble's specialists from a directory, a file, or the Hugging Face Hub,
verifying every file's SHA-256 before it is parsed. See ``docs/weights.md``.
"""

from eos_pangaea.weights.checksums import ChecksumStore, cache_root
from eos_pangaea.weights.files import (
    ChecksumMismatchError,
    UnsafePickleError,
    WeightsError,
    read_weights_file,
    sha256_file,
    to_features_only,
)
from eos_pangaea.weights.hub import download, parse_hub_ref
from eos_pangaea.weights.loader import LoadedSpecialist, apply_state_dict, load_ensemble_weights
from eos_pangaea.weights.local import INDEX_NAME, export_directory, save_ensemble_file
from eos_pangaea.weights.manifest import Manifest, ManifestEntry, ManifestError, load_manifest
from eos_pangaea.weights.official import export_official, official_specialists, read_official_ensemble

__all__ = [
    "INDEX_NAME",
    "ChecksumMismatchError",
    "ChecksumStore",
    "LoadedSpecialist",
    "Manifest",
    "ManifestEntry",
    "ManifestError",
    "UnsafePickleError",
    "WeightsError",
    "apply_state_dict",
    "cache_root",
    "download",
    "export_directory",
    "export_official",
    "load_ensemble_weights",
    "load_manifest",
    "official_specialists",
    "parse_hub_ref",
    "read_official_ensemble",
    "read_weights_file",
    "save_ensemble_file",
    "sha256_file",
    "to_features_only",
]
