"""Function blobs by content hash: memory, then disk, then the control plane."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path


class BlobError(Exception):
    """A blob could not be had: not on the server, or its bytes do not match its hash."""


class BlobCache:
    """Fetches each blob once, however many threads ask for it at the same time.

    Args:
        cache_dir: where blobs are kept across agent restarts, one file per hash.
        fetch: downloads a blob by hash (raises whatever the transport raises).
        memory_bytes: the in-memory cache holds at most this many bytes (least recently
            used go first; they are still on disk).
    """

    def __init__(
        self, *, cache_dir: Path, fetch: Callable[[str], bytes], memory_bytes: int = 256 << 20
    ) -> None:
        self._dir = Path(cache_dir)
        self._fetch = fetch
        self._memory_bytes = memory_bytes
        self._lock = threading.Lock()
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._inflight: dict[str, threading.Lock] = {}

    def get(self, blob_hash: str) -> bytes:
        """The blob whose sha256 hex digest is ``blob_hash``.

        Raises:
            BlobError: the fetched bytes do not hash to ``blob_hash``.
            Exception: whatever ``fetch`` raised (the next call tries again).
        """
        data = self._from_memory(blob_hash)
        if data is not None:
            return data
        with self._lock:
            gate = self._inflight.setdefault(blob_hash, threading.Lock())
        with gate:  # one download per hash; the others wait and then read memory
            data = self._from_memory(blob_hash)
            if data is None:
                data = self._from_disk(blob_hash)
            if data is None:
                data = self._fetch(blob_hash)
                if hashlib.sha256(data).hexdigest() != blob_hash:
                    raise BlobError(f"blob {blob_hash} arrived with different contents")
                self._to_disk(blob_hash, data)
            self._to_memory(blob_hash, data)
        with self._lock:
            self._inflight.pop(blob_hash, None)
        return data

    def _from_memory(self, blob_hash: str) -> bytes | None:
        with self._lock:
            data = self._memory.get(blob_hash)
            if data is not None:
                self._memory.move_to_end(blob_hash)
            return data

    def _to_memory(self, blob_hash: str, data: bytes) -> None:
        with self._lock:
            if blob_hash in self._memory:
                return
            self._memory[blob_hash] = data
            self._size += len(data)
            while self._size > self._memory_bytes and len(self._memory) > 1:
                _, dropped = self._memory.popitem(last=False)
                self._size -= len(dropped)

    def _from_disk(self, blob_hash: str) -> bytes | None:
        try:
            data = (self._dir / blob_hash).read_bytes()
        except OSError:
            return None
        # A torn or tampered file is ignored and fetched again.
        return data if hashlib.sha256(data).hexdigest() == blob_hash else None

    def _to_disk(self, blob_hash: str, data: bytes) -> None:
        # Write then rename, so a reader never sees half a blob. A full disk only costs
        # the cache, never the call.
        with contextlib.suppress(OSError):
            self._dir.mkdir(parents=True, exist_ok=True)
            tmp = self._dir / f".{blob_hash}.{os.getpid()}.{threading.get_ident()}"
            tmp.write_bytes(data)
            os.replace(tmp, self._dir / blob_hash)
