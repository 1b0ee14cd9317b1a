"""Safe reading and writing of specialist weight files.

Formats read:

- **safetensors** (preferred): no code can run on load. The header is checked
  against the file size first, so a truncated file gets a clear error.
- **torch pickles** (``torch.save`` output, zip or legacy format): read only
  with ``torch.load(weights_only=True)``, which refuses any Python object other
  than tensors and plain containers, so a file that would run code on load is
  rejected before that code runs.

Our format is one safetensors file per specialist, ``<name>.safetensors``,
holding the state dict of the timm ``features_only`` backbone (keys
``stem_0.weight``, ``stages_0.blocks.0...``) with metadata: name, backbone,
bands as JSON and the format version. :func:`to_features_only` converts the
key layouts of timm full models and of the original ConvNeXt-V2 code into it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import re
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

WEIGHTS_FORMAT_VERSION = "1"
SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl")


class WeightsError(ValueError):
    """A weights file is unusable: truncated, corrupt, mismatched or refused."""


class ChecksumMismatchError(WeightsError):
    """A file's SHA-256 differs from the expected one."""


class UnsafePickleError(WeightsError):
    """A pickle needs Python objects that weights-only loading does not allow."""


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Return the hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: str | Path, expected: str, what: str) -> str:
    """Check a file's SHA-256 before it is parsed and return it.

    Args:
        path: File to hash.
        expected: Expected hex digest.
        what: Where ``expected`` comes from, for the error message.

    Raises:
        ChecksumMismatchError: The digests differ.
        WeightsError: ``expected`` is not 64 hexadecimal digits.
    """
    if not re.fullmatch(r"[0-9a-fA-F]{64}", expected or ""):
        raise WeightsError(f"{what}={expected!r} is not a SHA-256 digest; give 64 hexadecimal digits "
                           "(as printed by `sha256sum FILE`).")
    actual = sha256_file(path)
    if actual != expected.lower():
        raise ChecksumMismatchError(
            f"Checksum mismatch for {path}: SHA-256 is {actual} but {what} expects {expected}. "
            "The file is corrupt, truncated or not the published one; delete it and download it again "
            "(eos-pangaea weights fetch --force-download), or fix the expected checksum if the file is "
            "deliberately different."
        )
    return actual


def read_weights_file(path: str | Path) -> tuple[Any, dict[str, str]]:
    """Read a weights file without running any code from it.

    Args:
        path: A safetensors file or a torch pickle.

    Returns:
        ``(content, metadata)``: for safetensors a ``name -> tensor`` dict and
        the header metadata; for a pickle the loaded object and ``{}``.

    Raises:
        FileNotFoundError: The file does not exist.
        WeightsError: The file is truncated, corrupt or of an unknown format.
        UnsafePickleError: The pickle needs objects other than tensors and containers.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Weights file {path} does not exist")
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) < 9:
        raise WeightsError(f"{path} is {path.stat().st_size} bytes long, too short for a weights file; it is truncated.")
    if _looks_like_safetensors(head):
        return read_safetensors(path)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return load_pickle_weights_only(path), {}
    raise WeightsError(
        f"{path} is neither a safetensors file nor a torch pickle (first bytes {head[:8]!r}); "
        "it may be corrupt or an HTML error page saved under a weights file name."
    )


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file after checking that it is complete.

    Raises:
        WeightsError: The header is invalid or the file is shorter than it declares.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        if header_len + 8 > size:
            raise WeightsError(
                f"{path} is truncated: its safetensors header declares {header_len} header bytes but the "
                f"file has {size} bytes; download or copy it again."
            )
        try:
            header = json.loads(handle.read(header_len))
        except ValueError as error:
            raise WeightsError(f"{path} has a corrupt safetensors header ({error}); download or copy it again.") from error
    metadata = header.pop("__metadata__", None) or {}
    data_end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    if 8 + header_len + data_end > size:
        raise WeightsError(
            f"{path} is truncated: its header declares {8 + header_len + data_end} bytes but the file has "
            f"{size}; download or copy it again."
        )
    try:
        tensors = load_file(str(path))
    except SafetensorError as error:
        raise WeightsError(f"{path} is not a valid safetensors file: {error}") from error
    return tensors, dict(metadata)


def load_pickle_weights_only(path: str | Path) -> Any:
    """Load a torch pickle with ``torch.load(weights_only=True)`` only.

    Raises:
        UnsafePickleError: The file needs other Python objects, which could run
            code while loading; the message names the first one.
        WeightsError: The file is truncated or corrupt.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()
        detail = next((line for line in reason if "Unsupported" in line or "GLOBAL" in line), reason[0] if reason else "")
        raise UnsafePickleError(
            f"Refused to load {path}: it is a pickle that needs Python objects other than tensors and "
            f"plain containers ({detail.strip()}), and loading such a file can run arbitrary code. "
            "eos-pangaea reads pickles only with torch.load(weights_only=True). If you trust the file, "
            "re-save its tensors in a trusted environment as plain dicts of tensors or as safetensors files, "
            "then load or import those."
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise WeightsError(
            f"{path} could not be read as a torch file ({error}); it is truncated or corrupt, so download "
            "or copy it again."
        ) from error


def save_specialist_file(
    path: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    *,
    name: str,
    backbone: str,
    bands: Sequence[str],
    extra_metadata: Mapping[str, str] | None = None,
) -> str:
    """Write one specialist in our format and return the file's SHA-256.

    Args:
        path: Destination ``.safetensors`` file.
        state_dict: ``features_only`` backbone state dict.
        name: Specialist name.
        backbone: timm model name.
        bands: Band names in channel order.
        extra_metadata: More string metadata to store.
    """
    from safetensors.torch import save_file

    metadata = {
        "format": "pt",
        "eos_pangaea_format_version": WEIGHTS_FORMAT_VERSION,
        "name": name,
        "backbone": backbone,
        "bands": json.dumps(list(bands)),
        **dict(extra_metadata or {}),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return sha256_file(path)


def specialist_metadata(metadata: Mapping[str, str], path: str | Path) -> dict[str, Any]:
    """Parse the metadata of one of our specialist files.

    Raises:
        WeightsError: The metadata lacks a field or has an unknown format version.
    """
    version = metadata.get("eos_pangaea_format_version")
    if version != WEIGHTS_FORMAT_VERSION:
        raise WeightsError(
            f"{path} has eos_pangaea_format_version {version!r}; expected {WEIGHTS_FORMAT_VERSION!r}. "
            "Files from other tools carry no such metadata: import them with `eos-pangaea weights import-official`."
        )
    missing = [k for k in ("name", "backbone", "bands") if k not in metadata]
    if missing:
        raise WeightsError(f"{path} lacks the metadata fields {missing}; export the specialist again.")
    return {"name": metadata["name"], "backbone": metadata["backbone"], "bands": tuple(json.loads(metadata["bands"]))}


def _looks_like_safetensors(head: bytes) -> bool:
    """Return whether the first 9 bytes start a safetensors file: a little-endian header length, then '{'."""
    (header_len,) = struct.unpack("<Q", head[:8])
    return 0 < header_len < 100_000_000 and head[8:9] == b"{"


# Key layouts: timm full model (``stem.0``, ``stages.0``), original ConvNeXt-V2
# code (``downsample_layers``, ``dwconv``, ``pwconv1``, ``grn.gamma``), and the
# timm ``features_only`` model that Specialist.backbone is (``stem_0``, ``stages_0``).
_WRAPPER_PREFIXES = ("module.", "model.", "encoder.", "backbone.", "_orig_mod.")
_CLASSIFIER_PREFIXES = ("head.", "norm.")
_ORIGINAL_RENAMES = (
    (re.compile(r"^downsample_layers\.0\.(\d+)\."), r"stem.\1."),
    (re.compile(r"^downsample_layers\.(\d+)\.(\d+)\."), r"stages.\1.downsample.\2."),
    (re.compile(r"^stages\.(\d+)\.(\d+)\."), r"stages.\1.blocks.\2."),
    (re.compile(r"\.dwconv\."), ".conv_dw."),
    (re.compile(r"\.pwconv(\d)\."), r".mlp.fc\1."),
    (re.compile(r"\.grn\.gamma$"), ".mlp.grn.weight"),
    (re.compile(r"\.grn\.beta$"), ".mlp.grn.bias"),
)


def to_features_only(state_dict: Mapping[str, torch.Tensor], where: str = "state dict") -> dict[str, torch.Tensor]:
    """Convert a ConvNeXt(-V2) state dict to the timm ``features_only`` layout.

    Accepts timm ``features_only`` keys unchanged, timm full-model keys, and
    original ConvNeXt-V2 keys, with or without a wrapper prefix shared by all
    keys (``module.``, ``model.``, ``encoder.``, ``backbone.``). A feature
    pyramid has no classifier, so the classifier of a full model (``head.*``,
    and ``norm.*`` in the original code) is dropped and the count is logged.
    GRN parameters stored as ``[1, 1, 1, C]`` or ``[1, C]`` become ``[C]``.

    Args:
        state_dict: Tensors by key.
        where: Where the state dict comes from, for messages.
    """
    state = dict(state_dict)
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}

    dropped = [k for k in state if k.startswith(_CLASSIFIER_PREFIXES)]
    if dropped:
        logger.info("%s: dropped %d classifier tensors (%s...) that a feature pyramid does not use",
                    where, len(dropped), dropped[0])
    converted: dict[str, torch.Tensor] = {}
    original_layout = any(k.startswith("downsample_layers.") or ".dwconv." in k for k in state)
    for key, tensor in state.items():
        if key in dropped:
            continue
        if original_layout:
            for pattern, replacement in _ORIGINAL_RENAMES:
                key = pattern.sub(replacement, key)
        key = re.sub(r"^(stem|stages)\.(\d+)", r"\1_\2", key)
        if re.search(r"\.grn\.(weight|bias)$", key):
            tensor = _grn_vector(tensor, key, where)
        converted[key] = tensor
    return converted


def _grn_vector(tensor: torch.Tensor, key: str, where: str) -> torch.Tensor:
    """Reshape a GRN parameter stored as ``[C]``, ``[1, C]`` or ``[1, 1, 1, C]`` to ``[C]``."""
    if tensor.ndim == 1:
        return tensor
    if tensor.ndim in (2, 4) and all(size == 1 for size in tensor.shape[:-1]):
        return tensor.reshape(tensor.shape[-1])
    raise WeightsError(
        f"{where}: GRN parameter {key!r} has shape {list(tensor.shape)}; expected [C], [1, C] or [1, 1, 1, C]."
    )


def check_state_dict(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    *,
    name: str,
    bands: Sequence[str],
    where: str,
) -> None:
    """Check a converted state dict against a backbone's own state dict.

    Raises:
        WeightsError: The stem takes another number of channels than ``bands``
            has, keys are missing or unexpected, or a shape differs.
    """
    stem = state.get("stem_0.weight")
    if stem is not None and stem.ndim == 4 and stem.shape[1] != len(bands):
        raise WeightsError(
            f"{where}: specialist {name!r} declares {len(bands)} bands {list(bands)} but the stem in its "
            f"weights takes {stem.shape[1]} input channels; fix the band list (manifest entry or --bands) "
            "or use the weights of the right specialist."
        )
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise WeightsError(
            f"{where}: weights of specialist {name!r} do not fit its backbone: "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}. "
            "Check that the backbone name matches the weights."
        )
    wrong = [(k, list(state[k].shape), list(v.shape)) for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        key, got, want = wrong[0]
        raise WeightsError(
            f"{where}: weights of specialist {name!r} have {len(wrong)} tensors of the wrong shape, "
            f"for example {key!r} is {got} but the backbone needs {want}."
        )
