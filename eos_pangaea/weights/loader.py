"""Load specialist weights into an EoS-FM ensemble from any supported source."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from eos_pangaea.specialists import Specialist
from eos_pangaea.weights import hub
from eos_pangaea.weights.checksums import ChecksumStore, cache_root
from eos_pangaea.weights.files import (
    WeightsError,
    check_state_dict,
    read_weights_file,
    sha256_file,
    specialist_metadata,
    to_features_only,
    verify_sha256,
)
from eos_pangaea.weights.local import (
    ENSEMBLE_METADATA_KEY,
    INDEX_NAME,
    SpecialistFile,
    find_directory_files,
    read_index,
    split_ensemble_file,
)
from eos_pangaea.weights.manifest import load_manifest

if TYPE_CHECKING:
    from eos_pangaea.ensemble import EoSFM

RANDOM_SOURCE = "random"


@dataclass(frozen=True)
class LoadedSpecialist:
    """Record of the weights loaded into one specialist.

    Attributes:
        name: Specialist name.
        source: File (or file and entry) the weights came from.
        file_sha256: SHA-256 of that file.
        weights_sha256: Digest of the loaded tensors, as head checkpoints record it.
    """

    name: str
    source: str
    file_sha256: str
    weights_sha256: str


def load_ensemble_weights(
    ensemble: EoSFM,
    source: str | Path,
    *,
    logger: logging.Logger | None = None,
    strict_checksums: bool = False,
    cache_dir: str | Path | None = None,
    revision: str | None = None,
    offline: bool | None = None,
) -> list[LoadedSpecialist]:
    """Load the weights of every specialist of ``ensemble`` from ``source``.

    Every file is verified against a known SHA-256 before it is parsed: the
    manifest's, the index's, or the one recorded on first download. Pickles are
    read only with ``torch.load(weights_only=True)``.

    Args:
        ensemble: The ensemble whose specialists to fill; they are matched by name.
        source: ``"random"`` (keep the random initialisation, with a warning);
            a directory of per-specialist files; one ensemble file (ours, or
            the official pickle); an index file ``eos-pangaea-weights.json``;
            or ``hf://OWNER/NAME[@REVISION][/FILE]`` on the Hugging Face Hub.
        logger: Logger to report each loaded specialist and its checksum to;
            this module's logger when omitted.
        strict_checksums: Reject files whose checksum is not known in advance.
        cache_dir: eos-pangaea cache root for downloads and recorded checksums.
        revision: Hub revision when ``source`` names none; pin a commit for reproducibility.
        offline: Use only cached downloads; ``None`` follows ``HF_HUB_OFFLINE``.

    Returns:
        One record per specialist, in ensemble order.

    Raises:
        FileNotFoundError: The source or a specialist's file is missing.
        ValueError: A checksum mismatches or is unknown under ``strict_checksums``,
            a file is unsafe, truncated or does not fit its specialist.
    """
    return load_specialist_weights(
        list(ensemble.specialists), source, logger=logger, strict_checksums=strict_checksums,
        cache_dir=cache_dir, revision=revision, offline=offline,
    )


def load_specialist_weights(
    specialists: Sequence[Specialist],
    source: str | Path,
    *,
    logger: logging.Logger | None = None,
    strict_checksums: bool = False,
    cache_dir: str | Path | None = None,
    revision: str | None = None,
    offline: bool | None = None,
) -> list[LoadedSpecialist]:
    """Load weights into specialists by name; see :func:`load_ensemble_weights` for the arguments."""
    log = logger or logging.getLogger(__name__)
    source = str(source)
    names = [s.name for s in specialists]
    if source == RANDOM_SOURCE:
        log.warning("EoS-FM: keeping randomly initialised specialists %s; features are meaningless "
                    "until real weights are loaded.", names)
        return []

    if source.startswith(hub.HUB_SCHEME):
        files = _hub_files(source, names, strict_checksums, cache_dir, revision, offline)
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            files = _check_local(find_directory_files(path, names), strict_checksums)
        elif path.is_file():
            files = _single_file(path, names, strict_checksums)
        else:
            raise FileNotFoundError(
                f"Weights source {source!r} is neither 'random', an existing file or directory, nor an "
                "hf://OWNER/NAME reference."
            )

    loaded = []
    by_name = {s.name: s for s in specialists}
    for name, (state, where, sha, declared) in _states(files, names).items():
        specialist = by_name[name]
        if declared is not None and tuple(declared) != tuple(specialist.spec.bands):
            raise WeightsError(
                f"{where}: weights of {name!r} were saved for bands {list(declared)} but the ensemble declares "
                f"{list(specialist.spec.bands)}; fix the manifest entry or use the matching weights."
            )
        digest = apply_state_dict(specialist, state, where=where)
        loaded.append(LoadedSpecialist(name, where, sha, digest))
        log.info("EoS-FM: loaded specialist %s from %s (file SHA-256 %s, weights SHA-256 %s)", name, where, sha, digest)
    return loaded


def apply_state_dict(specialist: Specialist, state: Mapping[str, torch.Tensor], *, where: str) -> str:
    """Convert, check and load a state dict into a specialist; return the weights digest.

    Raises:
        WeightsError: Keys are missing or unexpected, a shape differs, or the
            stem's input channels disagree with the specialist's bands.
    """
    from eos_pangaea.ensemble import tensor_digest

    converted = to_features_only(state, where)
    expected = specialist.backbone.state_dict()
    check_state_dict(converted, expected, name=specialist.name, bands=specialist.spec.bands, where=where)
    cast = {k: v.to(dtype=expected[k].dtype) for k, v in converted.items()}
    specialist.backbone.load_state_dict(cast, strict=True)
    return tensor_digest(specialist.state_dict())


def _states(files: Any, names: list[str]) -> dict[str, tuple[Mapping[str, torch.Tensor], str, str, tuple[str, ...] | None]]:
    """Read verified files into ``name -> (state dict, where, file sha256, declared bands)``.

    ``files`` is either ``name -> (path, sha256, bands or None)`` for one file
    per specialist, or ``(path, sha256)`` for one ensemble file.
    """
    if isinstance(files, tuple):
        path, sha = files
        return _states_from_ensemble_file(path, sha, names)
    states = {}
    for name, (path, sha, declared) in files.items():
        content, metadata = read_weights_file(path)
        if metadata:
            meta = specialist_metadata(metadata, path)
            if meta["name"] != name:
                raise WeightsError(f"{path} contains specialist {meta['name']!r}, not {name!r}; rename or re-export it.")
            declared = meta["bands"]
        states[name] = (_unwrap_state(content, path), str(path), sha, declared)
    return states


def _states_from_ensemble_file(path: Path, sha: str, names: list[str]):
    from eos_pangaea.weights.official import read_official_ensemble

    content, metadata = read_weights_file(path)
    if ENSEMBLE_METADATA_KEY in metadata:
        split = split_ensemble_file(content, metadata, path)
        _require(names, split, path)
        return {n: (split[n]["state"], f"{path}:{n}", sha, split[n]["bands"]) for n in names}

    if metadata or not isinstance(content, (list, tuple)):
        raise WeightsError(
            f"{path} contains a single state dict, not an ensemble; put it in a directory as <name>.safetensors "
            "or export the ensemble with `eos-pangaea weights export`."
        )
    entries = {e.encoder_name: e for e in read_official_ensemble(path)}
    missing = [n for n in names if n not in entries]
    if missing:
        raise WeightsError(
            f"{path} is an official ensemble file whose encoder names {sorted(k or '?' for k in entries)} do not "
            f"include {missing}. Convert it first with `eos-pangaea weights import-official {path} OUT_DIR "
            "--names ...` (one name per entry, in file order) and load OUT_DIR."
        )
    return {n: (entries[n].state_dict, f"{path} entry {entries[n].index}", sha, None) for n in names}


def _require(names: list[str], available: Mapping[str, Any], path: Path) -> None:
    missing = [n for n in names if n not in available]
    if missing:
        raise WeightsError(f"{path} has no weights for specialists {missing}; it contains {sorted(available)}.")


def _unwrap_state(content: Any, path: Path) -> Mapping[str, torch.Tensor]:
    if isinstance(content, Mapping) and "state_dict" in content and isinstance(content["state_dict"], Mapping):
        content = content["state_dict"]
    if not isinstance(content, Mapping) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors (found {type(content).__name__}).")
    return content


def _check_local(files: Mapping[str, SpecialistFile], strict: bool) -> dict[str, tuple[Path, str, tuple[str, ...] | None]]:
    """Verify local files against their index checksums before they are parsed."""
    checked = {}
    for name, file in files.items():
        if file.sha256 is not None:
            sha = verify_sha256(file.path, file.sha256, f"the index of {file.path.parent}")
        elif strict:
            raise ValueError(
                f"No checksum is known for {file.path} (no {INDEX_NAME} lists it) and strict checksums are on; "
                "export the weights with `eos-pangaea weights export` to write an index, or turn strict checksums off."
            )
        else:
            sha = sha256_file(file.path)
        checked[name] = (file.path, sha, file.bands)
    return checked


def _single_file(path: Path, names: list[str], strict: bool):
    if path.name == INDEX_NAME or path.suffix == ".json":
        files = {f.name: f for f in read_index(path)}
        _require(names, files, path)
        return _check_local({n: files[n] for n in names}, strict)
    if strict:
        raise ValueError(
            f"No checksum is known for {path} and strict checksums are on; load it through a directory "
            f"with an {INDEX_NAME} index (eos-pangaea weights export) or turn strict checksums off."
        )
    return path, sha256_file(path)


def _hub_files(source: str, names: list[str], strict: bool, cache_dir, revision, offline):
    ref = hub.parse_hub_ref(source)
    manifest = load_manifest()
    revision = ref.revision or revision or (manifest.ensemble.revision if ref.repo == manifest.ensemble.repo else "main")
    options = dict(revision=revision, cache_dir=cache_dir, offline=offline, strict_checksums=strict)

    if ref.filename is not None:
        expected = manifest.ensemble.sha256 if (ref.repo, ref.filename) == (manifest.ensemble.repo, manifest.ensemble.filename) else None
        path, sha = hub.download(ref.repo, ref.filename, expected_sha256=expected, **options)
        if ref.filename.endswith(".json"):
            return _hub_index_files(ref, path, names, options)
        return path, sha

    entries = {e.name: e for e in manifest.specialists}
    per_file = [n for n in names if n in entries and entries[n].source.filename and entries[n].source.repo == ref.repo]
    if len(per_file) == len(names):
        files = {}
        for name in names:
            entry = entries[name]
            path, sha = hub.download(ref.repo, entry.source.filename, expected_sha256=entry.sha256, **options)
            files[name] = (path, sha, None)
        return files
    if manifest.ensemble.filename and manifest.ensemble.repo == ref.repo:
        return hub.download(ref.repo, manifest.ensemble.filename, expected_sha256=manifest.ensemble.sha256, **options)
    raise ValueError(
        f"The weights manifest names no files in {ref.repo} for specialists {[n for n in names if n not in per_file]}: "
        f"{manifest.ensemble.note} Pass the file explicitly, e.g. hf://{ref.repo}@{revision}/FILENAME (an ensemble "
        f"file or an {INDEX_NAME} index); in PANGAEA, as encoder.encoder_weights=hf://{ref.repo}@{revision}/FILENAME, "
        "a local folder or file, or encoder.encoder_weights=random for a smoke test."
    )


def _hub_index_files(ref: hub.HubRef, index_path: Path, names: list[str], options: dict):
    """Download every file an index on the hub lists, checked against the index's checksums."""
    listed = {f.name: f for f in read_index(index_path)}
    _require(names, listed, index_path)
    folder = str(Path(ref.filename).parent)
    files = {}
    for name in names:
        remote = listed[name].path.name if folder == "." else f"{folder}/{listed[name].path.name}"
        path, sha = hub.download(ref.repo, remote, expected_sha256=listed[name].sha256, **options)
        files[name] = (path, sha, listed[name].bands)
    return files


def default_checksum_store(cache_dir: str | Path | None = None) -> ChecksumStore:
    """Return the checksum record of the cache root ``cache_dir``."""
    return ChecksumStore(cache_root(cache_dir) / "checksums.json")
