"""The blob cache: one download per hash, verified, kept on disk."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from multinode_agent.blobs import BlobCache, BlobError

DATA = b"pickled function bytes"
HASH = hashlib.sha256(DATA).hexdigest()


class CountingFetch:
    def __init__(self, data: bytes = DATA) -> None:
        self.data = data
        self.calls = 0
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, blob_hash: str) -> bytes:
        self.calls += 1
        assert self.gate.wait(10)
        return self.data


def test_concurrent_requests_download_once(tmp_path: Path) -> None:
    fetch = CountingFetch()
    fetch.gate.clear()
    cache = BlobCache(cache_dir=tmp_path, fetch=fetch)
    got: list[bytes] = []
    threads = [threading.Thread(target=lambda: got.append(cache.get(HASH))) for _ in range(8)]
    for t in threads:
        t.start()
    fetch.gate.set()
    for t in threads:
        t.join(10)

    assert got == [DATA] * 8
    assert fetch.calls == 1
    assert (tmp_path / HASH).read_bytes() == DATA


def test_disk_cache_survives_a_restart_and_a_torn_file_is_fetched_again(tmp_path: Path) -> None:
    BlobCache(cache_dir=tmp_path, fetch=CountingFetch()).get(HASH)
    fetch = CountingFetch()
    assert BlobCache(cache_dir=tmp_path, fetch=fetch).get(HASH) == DATA
    assert fetch.calls == 0

    (tmp_path / HASH).write_bytes(DATA[:5])
    assert BlobCache(cache_dir=tmp_path, fetch=fetch).get(HASH) == DATA
    assert fetch.calls == 1


def test_bytes_that_do_not_match_the_hash_are_refused(tmp_path: Path) -> None:
    cache = BlobCache(cache_dir=tmp_path, fetch=CountingFetch(b"something else"))

    with pytest.raises(BlobError):
        cache.get(HASH)
    assert not (tmp_path / HASH).exists()
