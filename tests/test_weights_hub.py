"""Downloads through huggingface_hub against a fake hub on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import logging
import socket

import pytest
import torch

from eos_pangaea.ensemble import EoSFM
from eos_pangaea.specialists import Specialist, SpecialistSpec
from eos_pangaea.weights import ChecksumMismatchError, download, export_directory, load_ensemble_weights
from eos_pangaea.weights.checksums import ChecksumStore
from eos_pangaea.weights.local import INDEX_NAME
from weights_server import FakeHub, start_fake_hub

REPO = "pierreadorni/eos-fm"
# Larger than huggingface_hub's 10 MiB download chunk, so that a connection
# dropped after the first chunk leaves bytes to resume from.
BIG = 12 * 1024 * 1024


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Fail any test that opens a connection to a host other than 127.0.0.1."""
    refused = []
    connect = socket.socket.connect

    def guarded(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] != "127.0.0.1":
            refused.append(address)
            raise OSError(f"test guard: connection to {address} refused")
        return connect(sock, address)

    resolve = socket.getaddrinfo

    def guarded_resolve(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", None):
            refused.append(host)
            raise OSError(f"test guard: lookup of {host!r} refused")
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_resolve)
    yield
    assert refused == [], f"tests tried to reach {refused}"


@pytest.fixture(autouse=True)
def no_agent_registry_fetch(monkeypatch, tmp_path):
    """Keep huggingface_hub from fetching its agent registry from huggingface.co.

    huggingface_hub 2.x fetches ``{ENDPOINT}/api/agent-harnesses`` once a day
    when it builds request headers, using the endpoint read at import time
    rather than the one passed to ``hf_hub_download``. An empty, fresh cached
    registry makes it skip that request.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import _detect_agent

    registry = tmp_path / "agent_harnesses.json"
    registry.write_text(json.dumps({"standardEnvVars": [], "harnesses": {}}))
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(registry))
    monkeypatch.setattr(_detect_agent, "_registry", None)


@pytest.fixture()
def fake_hub(monkeypatch, tmp_path):
    """Serve a fake hub on 127.0.0.1 and point every download at it."""
    hub = FakeHub()
    server = start_fake_hub(hub)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("EOS_PANGAEA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield hub
    server.shutdown()
    server.server_close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_records_and_verifies(fake_hub, tmp_path):
    data = b"weights" * 1000
    fake_hub.files[(REPO, "a.safetensors")] = data
    path, digest = download(REPO, "a.safetensors")
    assert path.read_bytes() == data
    assert digest == sha(data)
    assert ChecksumStore(tmp_path / "cache" / "checksums.json").get(f"hf://{REPO}@main/a.safetensors") == sha(data)


def test_download_resumes_dropped_connection(fake_hub):
    data = bytes(range(256)) * (BIG // 256)
    fake_hub.files[(REPO, "big.bin")] = data
    fake_hub.truncate_first_get["big.bin"] = BIG - 1024 * 1024
    path, digest = download(REPO, "big.bin", expected_sha256=sha(data))
    assert digest == sha(data)
    ranges = fake_hub.gets("big.bin")
    assert ranges[0] is None
    assert ranges[1] == f"bytes={10 * 1024 * 1024}-"


def test_wrong_manifest_checksum_rejected(fake_hub):
    fake_hub.files[(REPO, "a.bin")] = b"published"
    with pytest.raises(ChecksumMismatchError, match="expects " + "0" * 64):
        download(REPO, "a.bin", expected_sha256="0" * 64)


def test_corrupt_download_rejected(fake_hub):
    fake_hub.files[(REPO, "a.bin")] = b"corrupted in transfer"
    with pytest.raises(ChecksumMismatchError, match="corrupt"):
        download(REPO, "a.bin", expected_sha256=sha(b"published bytes"))


def test_corrupt_cached_file_fails_recorded_checksum(fake_hub):
    fake_hub.files[(REPO, "a.bin")] = b"published bytes"
    path, _ = download(REPO, "a.bin")
    blob = path.resolve()
    blob.chmod(0o644)
    blob.write_bytes(b"corrupted bytes")
    with pytest.raises(ChecksumMismatchError, match="recorded"):
        download(REPO, "a.bin", offline=True)


def test_strict_rejects_unknown_checksum(fake_hub):
    fake_hub.files[(REPO, "a.bin")] = b"published"
    with pytest.raises(ValueError, match="No checksum is known"):
        download(REPO, "a.bin", strict_checksums=True)


def test_offline_uses_cached_copy(fake_hub):
    fake_hub.files[(REPO, "a.bin")] = b"published"
    first, _ = download(REPO, "a.bin")
    count = len(fake_hub.requests)
    second, _ = download(REPO, "a.bin", offline=True)
    assert second == first
    assert len(fake_hub.requests) == count


def test_offline_env_without_cache_fails_clearly(fake_hub, monkeypatch):
    fake_hub.files[(REPO, "a.bin")] = b"published"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="not in the cache"):
        download(REPO, "a.bin")
    assert fake_hub.requests == []


def test_missing_hub_file_is_named(fake_hub):
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        download(REPO, "nope.bin")


def test_pinned_revision_in_request(fake_hub):
    fake_hub.files[(REPO, "a.bin")] = b"published"
    download(REPO, "a.bin", revision="v1.0")
    assert all("/resolve/v1.0/" in path for _, path, _ in fake_hub.requests)


def _ensemble(names_bands) -> EoSFM:
    specs = [SpecialistSpec(n, tuple(b)) for n, b in names_bands]
    return EoSFM([Specialist(s) for s in specs], {"optical": ["B02", "B03", "B04", "B08"], "sar": ["VV", "VH"]})


def test_load_ensemble_from_hub_index(fake_hub, tmp_path, caplog):
    layout = [("eurosat", ("B04", "B03", "B02")), ("sen12ms-s1", ("VV", "VH", "VH"))]
    source = _ensemble(layout)
    index = export_directory(list(source.specialists), tmp_path / "export")
    for path in (tmp_path / "export").iterdir():
        fake_hub.files[(REPO, f"v2/{path.name}")] = path.read_bytes()

    target = _ensemble(layout)
    log = logging.getLogger("test.pangaea")
    with caplog.at_level(logging.INFO, logger="test.pangaea"):
        loaded = load_ensemble_weights(target, f"hf://{REPO}@abc/v2/{INDEX_NAME}", logger=log)
    assert [item.name for item in loaded] == ["eurosat", "sen12ms-s1"]
    assert target.specialist_digests() == source.specialist_digests()
    assert "loaded specialist eurosat" in caplog.text
    listed = json.loads(index.read_text())["specialists"]
    assert {item.file_sha256 for item in loaded} == {e["sha256"] for e in listed}
    assert all("/resolve/abc/v2/" in path for _, path, _ in fake_hub.requests)

    again = _ensemble(layout)
    load_ensemble_weights(again, f"hf://{REPO}@abc/v2/{INDEX_NAME}", offline=True)
    x = {"optical": torch.randn(1, 4, 64, 64), "sar": torch.randn(1, 2, 64, 64)}
    source.eval(), again.eval()
    assert again.specialist_digests() == source.specialist_digests()


def test_hub_reference_without_file_explains(fake_hub):
    target = _ensemble([("eurosat", ("B04", "B03", "B02"))])
    with pytest.raises(ValueError, match="FILENAME"):
        load_ensemble_weights(target, f"hf://{REPO}")
