"""Built environments on the VM: downloaded once from the bucket, unpacked, kept on disk.

An environment is a folder of installed packages (``uv pip install --target``) built once
by the control plane. Its workers put the folder first on ``sys.path`` (see
``runtime.use_environment``); the agent's own packages stay behind it, and the
environment was resolved against them, so both fit. A folder is complete or absent: the
archive is checked against its sha256 and unpacked into a temporary folder renamed into
place.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import httpx

from multinode.wire import EnvironmentRef

log = logging.getLogger(__name__)


class EnvironmentUnavailable(Exception):
    """The environment could not be had: the download failed or did not match its hash."""


class EnvironmentCache:
    """Environments under ``cache_dir``, each downloaded once however many threads ask."""

    def __init__(self, *, cache_dir: Path, timeout_s: float = 300.0) -> None:
        self._dir = Path(cache_dir)
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._gates: dict[str, threading.Lock] = {}

    def path(self, ref: EnvironmentRef) -> Path:
        """The folder of environment ``ref``, downloaded and unpacked if missing.

        Raises:
            EnvironmentUnavailable: the download failed or its bytes do not match ``ref.sha256``.
        """
        final = self._dir / ref.id
        if final.is_dir():
            return final
        with self._lock:
            gate = self._gates.setdefault(ref.id, threading.Lock())
        with gate:
            if not final.is_dir():
                self._fetch(ref, final)
        return final

    def _fetch(self, ref: EnvironmentRef, final: Path) -> None:
        started = time.monotonic()
        self._dir.mkdir(parents=True, exist_ok=True)
        tmp = self._dir / f".{ref.id}.{os.getpid()}.{threading.get_ident()}"
        archive = tmp.with_suffix(".tar.gz")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            sha = hashlib.sha256()
            try:
                with httpx.stream("GET", ref.url, timeout=self._timeout_s) as response:
                    response.raise_for_status()
                    with archive.open("wb") as out:
                        for chunk in response.iter_bytes(1 << 20):
                            sha.update(chunk)
                            out.write(chunk)
            except httpx.HTTPError as exc:
                raise EnvironmentUnavailable(
                    f"downloading environment {ref.id[:12]} failed: {exc}"
                ) from None
            if sha.hexdigest() != ref.sha256:
                raise EnvironmentUnavailable(
                    f"environment {ref.id[:12]} arrived with other contents"
                )
            downloaded = time.monotonic()
            _unpack(archive, tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():
                    raise
            log.info(
                "environment %s ready in %.2fs (%.1f MiB downloaded in %.2fs, unpacked in %.2fs)",
                ref.id[:12],
                time.monotonic() - started,
                ref.size / 1048576,
                downloaded - started,
                time.monotonic() - downloaded,
            )
        finally:
            archive.unlink(missing_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)


def _unpack(archive: Path, into: Path) -> None:
    """Unpack a verified archive: with the system's ``tar`` where there is one (C, about
    twice as fast as :mod:`tarfile` on an environment of thousands of files), else
    :mod:`tarfile` refusing links and paths that leave the folder."""
    into.mkdir(parents=True)
    tar_bin = shutil.which("tar")
    if tar_bin is not None:
        done = subprocess.run(
            [tar_bin, "-xzf", str(archive), "-C", str(into), "--no-same-owner"],
            capture_output=True,
            text=True,
        )
        if done.returncode == 0:
            return
        log.warning("tar could not unpack %s (%s); using tarfile", archive, done.stderr.strip())
        shutil.rmtree(into, ignore_errors=True)
        into.mkdir(parents=True)
    with tarfile.open(archive, "r:gz") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(into, filter="data")
        else:  # Python < 3.10.12 / 3.11.4
            tar.extractall(into)
