"""Downloads from the Hugging Face Hub through ``huggingface_hub``.

``huggingface_hub.hf_hub_download`` provides the cache (``<cache>/hub``, in the
Hugging Face layout), the pinned revision, offline mode and a progress bar.
Offline mode (``offline=True`` or ``HF_HUB_OFFLINE=1``) reads the cache only.
When a connection drops mid-file, the library resumes with an HTTP ``Range``
request from the last complete 10 MiB chunk. NOTE: huggingface_hub 1.x and later delete a partial file when
the process ends, so an interrupted *process* downloads the file again from
the start.

Every downloaded file is checked against the manifest's SHA-256, or the one
recorded on first download, before anything parses it.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from eos_pangaea.weights.checksums import ChecksumStore, cache_root, check_or_record

logger = logging.getLogger(__name__)

HUB_SCHEME = "hf://"
_HUB_REF = re.compile(r"^hf://(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>[^/]+))?(?:/(?P<filename>.+))?$")


@dataclass(frozen=True)
class HubRef:
    """A parsed ``hf://owner/name[@revision][/path/in/repo]`` reference."""

    repo: str
    revision: str | None
    filename: str | None

    def key(self, filename: str, revision: str) -> str:
        """Return the checksum-record key of ``filename`` at ``revision``."""
        return f"{HUB_SCHEME}{self.repo}@{revision}/{filename}"


def parse_hub_ref(reference: str) -> HubRef:
    """Parse a hub reference such as ``hf://pierreadorni/eos-fm@v1.0/ensemble.pth``.

    Raises:
        ValueError: ``reference`` is not of this form.
    """
    match = _HUB_REF.match(reference)
    if not match:
        raise ValueError(
            f"Invalid hub reference {reference!r}; expected hf://OWNER/NAME, optionally followed by "
            "@REVISION and /PATH/IN/REPO, for example hf://pierreadorni/eos-fm@main/ensemble.pth."
        )
    return HubRef(match["repo"], match["revision"], match["filename"])


def is_offline(offline: bool | None) -> bool:
    """Return ``offline``, or when it is ``None`` whether ``HF_HUB_OFFLINE`` is set to a true value."""
    if offline is not None:
        return offline
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def download(
    repo: str,
    filename: str,
    *,
    revision: str = "main",
    expected_sha256: str | None = None,
    cache_dir: str | Path | None = None,
    offline: bool | None = None,
    strict_checksums: bool = False,
    force_download: bool = False,
    endpoint: str | None = None,
) -> tuple[Path, str]:
    """Download one file from a hub repository into the cache and verify it.

    Args:
        repo: ``owner/name`` of the model repository.
        filename: Path of the file in the repository.
        revision: Branch, tag or commit; pin a commit for reproducible runs.
        expected_sha256: SHA-256 the file must have; when ``None`` the one
            recorded on first download is enforced, or recorded now.
        cache_dir: eos-pangaea cache root (see :func:`cache_root`).
        offline: Read only the cache; ``None`` follows ``HF_HUB_OFFLINE``.
        strict_checksums: Reject a file whose checksum is neither expected nor recorded.
        force_download: Download again even when the file is cached.
        endpoint: Hub URL; ``None`` uses ``HF_ENDPOINT`` or huggingface.co.

    Returns:
        The cached file's path and its SHA-256.

    Raises:
        FileNotFoundError: Offline and the file is not cached, or the
            repository, revision or file does not exist.
        RuntimeError: The download failed.
        ChecksumMismatchError: The file differs from the expected digest.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    root = cache_root(cache_dir)
    offline = is_offline(offline)
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    where = f"{HUB_SCHEME}{repo}@{revision}/{filename}"
    logger.info("Fetching %s%s", where, " from the cache (offline)" if offline else "")
    try:
        path = hf_hub_download(
            repo_id=repo,
            filename=filename,
            revision=revision,
            cache_dir=str(root / "hub"),
            local_files_only=offline,
            force_download=force_download,
            endpoint=endpoint,
        )
    except LocalEntryNotFoundError as error:
        raise FileNotFoundError(
            f"{where} is not in the cache {root / 'hub'} and downloads are off (offline mode or no "
            "connection). Run `eos-pangaea weights fetch` on a machine with network access and copy the "
            "cache directory, or point --cache-dir or EOS_PANGAEA_CACHE at a filled cache."
        ) from error
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as error:
        raise FileNotFoundError(f"{where} was not found on the hub ({type(error).__name__}); check the repository, "
                                "revision and file name.") from error
    except (HfHubHTTPError, OSError) as error:
        raise RuntimeError(f"Download of {where} failed: {error}") from error

    store = ChecksumStore(root / "checksums.json")
    sha = check_or_record(path, where, expected=expected_sha256, store=store, strict=strict_checksums)
    logger.info("Verified %s (SHA-256 %s)", where, sha)
    return Path(path), sha
