"""Schema and loader of ``weights_manifest.yaml``, the list of published specialists.

Every entry states a specialist's name, training dataset and task, modality
and band names in channel order. ``bands_inferred`` marks orders that the
official training code does not state. The entry also gives the input scaling
the specialist was trained with, its timm backbone and parameter count, where
its weights are hosted, their SHA-256 (``null`` when not known), licence and
citation. The schema is
checked field by field, and every error names the entry and the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

MANIFEST_FORMAT_VERSION = 1
SCALING_METHODS = ("divide", "zscore", "unknown")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(ValueError):
    """The weights manifest is invalid; the message names the entry and field."""


@dataclass(frozen=True)
class HubSource:
    """Location of a file on the Hugging Face Hub.

    Attributes:
        repo: Model repository, ``owner/name``.
        revision: Branch, tag or commit to download from.
        filename: Path of the file in the repository; ``None`` when not known.
        note: Why the file name or checksum is missing, and what to pass instead.
    """

    repo: str
    revision: str
    filename: str | None
    note: str = ""


@dataclass(frozen=True)
class ManifestEntry:
    """One published specialist as the manifest describes it."""

    name: str
    dataset: str
    task: str
    modality: str
    bands: tuple[str, ...]
    bands_inferred: bool
    input_scaling: Mapping[str, Any]
    backbone: str
    parameters: int
    source: HubSource
    sha256: str | None
    license: str
    citation: str
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """Return the entry as it is written in the manifest."""
        return dict(self.raw)


@dataclass(frozen=True)
class Manifest:
    """The validated manifest: the official ensemble file and every specialist."""

    ensemble: HubSource
    ensemble_sha256: str | None
    specialists: tuple[ManifestEntry, ...]

    def names(self) -> list[str]:
        """Return the specialists' names in manifest order."""
        return [e.name for e in self.specialists]

    def get(self, name: str) -> ManifestEntry:
        """Return the entry called ``name``.

        Raises:
            KeyError: No specialist has this name; the message lists the known names.
        """
        for entry in self.specialists:
            if entry.name == name:
                return entry
        raise KeyError(f"Specialist {name!r} is not in the weights manifest; known names: {self.names()}")


def default_manifest_path() -> Path:
    """Return the path of the manifest shipped in the package."""
    return Path(str(resources.files("eos_pangaea").joinpath("data", "weights_manifest.yaml")))


def load_manifest(path: str | Path | None = None) -> Manifest:
    """Read and validate a weights manifest.

    Args:
        path: YAML file to read; the shipped ``weights_manifest.yaml`` when omitted.

    Raises:
        ManifestError: The file is not valid YAML or breaks the schema.
    """
    path = Path(path) if path is not None else default_manifest_path()
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ManifestError(f"{path}: not valid YAML: {error}") from error
    return parse_manifest(document, origin=str(path))


def parse_manifest(document: Any, origin: str = "weights manifest") -> Manifest:
    """Validate an already parsed manifest document.

    Raises:
        ManifestError: A field is missing, has the wrong type or an invalid value.
    """
    if not isinstance(document, Mapping):
        raise ManifestError(f"{origin}: expected a mapping at the top level, got {type(document).__name__}")
    version = document.get("format_version")
    if version != MANIFEST_FORMAT_VERSION:
        raise ManifestError(
            f"{origin}: field 'format_version' is {version!r}; this version of eos-pangaea reads "
            f"format {MANIFEST_FORMAT_VERSION}."
        )
    ensemble = _Checker(origin, "ensemble", document.get("ensemble"))
    ensemble_source = _parse_source(ensemble, ensemble.data)
    ensemble_sha = ensemble.sha256("sha256")

    raw = document.get("specialists")
    if not isinstance(raw, list) or not raw:
        raise ManifestError(f"{origin}: field 'specialists' must be a non-empty list of entries")
    entries = [_parse_entry(origin, index, item) for index, item in enumerate(raw)]
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            raise ManifestError(f"{origin}: specialist {entry.name!r}: field 'name' is used by two entries")
        seen.add(entry.name)
    return Manifest(ensemble_source, ensemble_sha, tuple(entries))


_ENTRY_FIELDS = {"name", "dataset", "task", "modality", "bands", "bands_inferred", "input_scaling", "backbone",
                 "parameters", "source", "sha256", "license", "citation"}
_OPTIONAL_ENTRY_FIELDS = {"license_note", "notes"}


def _parse_entry(origin: str, index: int, item: Any) -> ManifestEntry:
    label = f"entry {index}"
    if isinstance(item, Mapping) and isinstance(item.get("name"), str):
        label = f"specialist {item['name']!r} (entry {index})"
    check = _Checker(origin, label, item)
    unknown = sorted(set(item) - _ENTRY_FIELDS - _OPTIONAL_ENTRY_FIELDS)
    if unknown:
        check.fail(unknown[0], f"unknown field; allowed fields are {sorted(_ENTRY_FIELDS | _OPTIONAL_ENTRY_FIELDS)}")

    bands = check.string_list("bands")
    scaling = _parse_scaling(_Checker(origin, f"{label}, field 'input_scaling'", item.get("input_scaling")), len(bands))
    parameters = item.get("parameters")
    if not isinstance(parameters, int) or isinstance(parameters, bool) or parameters <= 0:
        check.fail("parameters", f"expected a positive integer, got {parameters!r}")
    return ManifestEntry(
        name=check.string("name"),
        dataset=check.string("dataset"),
        task=check.string("task"),
        modality=check.string("modality"),
        bands=tuple(bands),
        bands_inferred=check.boolean("bands_inferred"),
        input_scaling=scaling,
        backbone=check.string("backbone"),
        parameters=parameters,
        source=_parse_source(_Checker(origin, f"{label}, field 'source'", item.get("source")), item.get("source")),
        sha256=check.sha256("sha256"),
        license=check.string("license"),
        citation=check.string("citation"),
        raw=dict(item),
    )


def _parse_source(check: _Checker, data: Any) -> HubSource:
    filename = data.get("filename")
    if filename is not None and not (isinstance(filename, str) and filename):
        check.fail("filename", f"expected a file path or null, got {filename!r}")
    note = data.get("note", "")
    if filename is None and not (isinstance(note, str) and note.strip()):
        check.fail("note", "required when 'filename' is null: say why the file name is unknown and what to pass")
    return HubSource(check.string("repo"), check.string("revision"), filename, note or "")


def _parse_scaling(check: _Checker, n_bands: int) -> dict[str, Any]:
    data = check.data
    method = data.get("method")
    if method not in SCALING_METHODS:
        check.fail("method", f"expected one of {list(SCALING_METHODS)}, got {method!r}")
    check.boolean("inferred")
    if method == "divide":
        divisor = data.get("divisor")
        if not _is_number(divisor) or divisor == 0:
            check.fail("divisor", f"expected a non-zero number, got {divisor!r}")
    if method == "zscore":
        for key in ("mean", "std"):
            values = data.get(key)
            if values is None:
                if not data.get("inferred"):
                    check.fail(key, "may be null only when 'inferred' is true")
                continue
            if not isinstance(values, list) or len(values) != n_bands or not all(_is_number(v) for v in values):
                check.fail(key, f"expected {n_bands} numbers (one per band) or null, got {values!r}")
    if method == "unknown" and not str(data.get("note", "")).strip():
        check.fail("note", "required when 'method' is 'unknown'")
    return dict(data)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Checker:
    """Typed field access that raises a ManifestError naming the entry and field."""

    def __init__(self, origin: str, label: str, data: Any) -> None:
        self.origin = origin
        self.label = label
        if not isinstance(data, Mapping):
            raise ManifestError(f"{origin}: {label}: expected a mapping, got {data!r}")
        self.data = data

    def fail(self, key: str, problem: str) -> None:
        raise ManifestError(f"{self.origin}: {self.label}, field {key!r}: {problem}")

    def string(self, key: str) -> str:
        value = self.data.get(key)
        if not isinstance(value, str) or not value.strip():
            self.fail(key, f"expected a non-empty string, got {value!r}")
        return value

    def boolean(self, key: str) -> bool:
        value = self.data.get(key)
        if not isinstance(value, bool):
            self.fail(key, f"expected true or false, got {value!r}")
        return value

    def string_list(self, key: str) -> list[str]:
        value = self.data.get(key)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            self.fail(key, f"expected a non-empty list of band names, got {value!r}")
        return list(value)

    def sha256(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is not None and not (isinstance(value, str) and _SHA256.match(value)):
            self.fail(key, f"expected 64 lowercase hexadecimal digits or null, got {value!r}")
        return value


def entries_by_name(manifest: Manifest, names: Sequence[str] | None = None) -> list[ManifestEntry]:
    """Return the entries called ``names``, in that order, or all of them.

    Raises:
        ValueError: A name is not in the manifest.
    """
    if names is None:
        return list(manifest.specialists)
    unknown = [n for n in names if n not in manifest.names()]
    if unknown:
        raise ValueError(f"Unknown specialist names {unknown}; the manifest lists {manifest.names()}")
    return [manifest.get(n) for n in names]
