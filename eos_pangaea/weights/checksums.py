"""Cache directory and the record of checksums first seen on download.

Where the manifest gives no SHA-256 for a file, the first download records the
file's digest in ``<cache>/checksums.json`` and every later load must match
it (trust on first use). The cache directory is ``~/.cache/eos-pangaea`` by
default; the ``EOS_PANGAEA_CACHE`` environment variable or a ``cache_dir``
argument overrides it. Downloaded files live under ``<cache>/hub`` in the
Hugging Face cache layout.

``checksums.json`` maps a source key, ``hf://<repo>@<revision>/<filename>``,
to ``{"sha256": ..., "recorded": <UTC time>}``. Delete an entry (or use
``eos-pangaea weights verify --forget KEY``) to accept a new file.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from eos_pangaea.weights.files import ChecksumMismatchError, sha256_file

logger = logging.getLogger(__name__)

CACHE_ENV = "EOS_PANGAEA_CACHE"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Return the eos-pangaea cache directory: the argument, ``$EOS_PANGAEA_CACHE`` or ``~/.cache/eos-pangaea``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path.home() / ".cache" / "eos-pangaea"


class ChecksumStore:
    """The recorded SHA-256 digests of downloaded files, kept in a JSON file.

    Args:
        path: JSON file; ``<cache_root()>/checksums.json`` when omitted.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else cache_root() / "checksums.json"

    def read(self) -> dict[str, dict[str, str]]:
        """Return every record, by source key.

        Raises:
            ValueError: The file exists but is not valid JSON.
        """
        if not self.path.is_file():
            return {}
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise ValueError(f"{self.path} is not valid JSON ({error}); fix or delete it to record checksums anew.") from error

    def get(self, key: str) -> str | None:
        """Return the recorded digest of ``key``, if any."""
        record = self.read().get(key)
        return record["sha256"] if record else None

    def record(self, key: str, sha256: str) -> None:
        """Record ``sha256`` for ``key``, replacing the file atomically."""
        records = self.read()
        records[key] = {"sha256": sha256, "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=self.path.parent, delete=False, suffix=".tmp", encoding="utf-8") as tmp:
            json.dump(records, tmp, indent=2, sort_keys=True)
        os.replace(tmp.name, self.path)

    def forget(self, key: str) -> bool:
        """Remove the record of ``key`` and return whether there was one."""
        records = self.read()
        if records.pop(key, None) is None:
            return False
        self.path.write_text(json.dumps(records, indent=2, sort_keys=True), encoding="utf-8")
        return True


def check_or_record(
    path: str | Path,
    key: str,
    *,
    expected: str | None,
    store: ChecksumStore,
    strict: bool,
) -> str:
    """Verify a file's SHA-256 before it is used and return it.

    The expected digest comes from ``expected`` (the manifest or an index)
    when given, else from the store. A file with neither is accepted and its
    digest recorded, unless ``strict`` is set.

    Raises:
        ChecksumMismatchError: The digest differs from the expected or recorded one.
        ValueError: ``strict`` is set and no checksum is known for the file.
    """
    actual = sha256_file(path)
    if expected is not None:
        if actual != expected.lower():
            raise ChecksumMismatchError(
                f"Checksum mismatch for {key} ({path}): SHA-256 is {actual} but the manifest or index expects "
                f"{expected}. The file is corrupt or not the published one; download it again with "
                "`eos-pangaea weights fetch --force-download`, or correct the expected checksum."
            )
        return actual

    recorded = store.get(key)
    if recorded is not None:
        if actual != recorded:
            raise ChecksumMismatchError(
                f"Checksum mismatch for {key} ({path}): SHA-256 is {actual} but {recorded} was recorded in "
                f"{store.path} on first download. The file changed upstream or is corrupt; pin a revision, "
                "download it again with --force-download, or accept the new file with "
                f"`eos-pangaea weights verify --forget {key}`."
            )
        return actual

    if strict:
        raise ValueError(
            f"No checksum is known for {key}: the manifest has none and none is recorded in {store.path}. "
            f"Its SHA-256 is {actual}; add it to the manifest, or load once without strict checksums to record it."
        )
    store.record(key, actual)
    logger.warning("Recorded SHA-256 %s for %s in %s on first use; later loads must match it.", actual, key, store.path)
    return actual
