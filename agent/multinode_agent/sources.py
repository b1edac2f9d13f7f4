"""An app's source on the VM: a manifest's files written once into a folder of their own.

A function deployed as source reaches the agent as an *import reference* (JSON: the
manifest's hash, the module, the qualified name; see ``multinode._source``). The agent
writes the manifest's files under ``<cache>/<manifest hash>/`` (fetched through the blob
cache, so a file shared by two versions is downloaded once) and hands the worker the
reference with that folder added as ``path``; the worker imports the module from there.
A folder is complete or absent: files are written into a temporary folder renamed into
place, so a crash mid-way leaves nothing a later call would trust.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from multinode.wire import SOURCE_MANIFEST_FORMAT, SOURCE_REFERENCE_FORMAT
from multinode_agent.blobs import BlobCache

_FETCH_THREADS = 8


class SourceError(Exception):
    """A reference or manifest this agent cannot use (malformed, or a path escaping its
    folder)."""


def is_import_reference(blob: bytes) -> bool:
    """A reference is JSON (``{``); a pickled function starts with the protocol byte."""
    return blob[:1] == b"{"


class SourceTrees:
    """Materialises manifests under ``cache_dir``, each once however many threads ask."""

    def __init__(self, *, cache_dir: Path, blobs: BlobCache) -> None:
        self._dir = Path(cache_dir)
        self._blobs = blobs
        self._lock = threading.Lock()
        self._gates: dict[str, threading.Lock] = {}

    def prepare(self, reference: bytes) -> bytes:
        """The reference with ``path`` added: the folder holding its source.

        Raises:
            SourceError: the reference or its manifest is malformed.
            Exception: whatever fetching a blob raised (the next call tries again).
        """
        try:
            ref = json.loads(reference)
        except ValueError as exc:
            raise SourceError(f"the function's import reference is not JSON: {exc}") from None
        if not isinstance(ref, dict) or ref.get("format") != SOURCE_REFERENCE_FORMAT:
            raise SourceError(
                f"the function's import reference has format {ref.get('format')!r}, this agent "
                f"reads {SOURCE_REFERENCE_FORMAT!r}; deploy with a matching SDK"
            )
        path = self.materialise(str(ref["source"]))
        return json.dumps({**ref, "path": str(path)}).encode()

    def materialise(self, manifest_hash: str) -> Path:
        """The folder holding the files of manifest ``manifest_hash``, written if missing."""
        final = self._dir / manifest_hash
        if final.is_dir():
            return final
        with self._lock:
            gate = self._gates.setdefault(manifest_hash, threading.Lock())
        with gate:
            if not final.is_dir():
                self._write(manifest_hash, final)
        return final

    def _write(self, manifest_hash: str, final: Path) -> None:
        manifest = json.loads(self._blobs.get(manifest_hash))
        if manifest.get("format") != SOURCE_MANIFEST_FORMAT:
            raise SourceError(f"source manifest {manifest_hash} has an unknown format")
        files: dict[str, str] = manifest["files"]
        for relative in files:
            _check_relative(relative)
        self._dir.mkdir(parents=True, exist_ok=True)
        tmp = self._dir / f".{manifest_hash}.{os.getpid()}.{threading.get_ident()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:

            def write(item: tuple[str, str]) -> None:
                relative, digest = item
                target = tmp / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(self._blobs.get(digest))

            tmp.mkdir()
            with ThreadPoolExecutor(_FETCH_THREADS, thread_name_prefix="mn-source") as pool:
                list(pool.map(write, files.items()))
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _check_relative(relative: str) -> None:
    path = PurePosixPath(relative)
    if path.is_absolute() or ".." in path.parts or not path.parts or "\\" in relative:
        raise SourceError(f"source manifest names a path outside its folder: {relative!r}")
