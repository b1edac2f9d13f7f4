"""An app's source as it travels to VMs: files by content hash, functions by import path.

``mn deploy app.py`` uploads the folder that holds ``app.py`` (its *root*): every file in
it, less what ``.gitignore`` (and ``.mnignore``) exclude and a few folders nobody ships
(``.git``, virtual environments, caches). Each file is a content-addressed blob, so an
unchanged file is never uploaded twice; a *manifest* (JSON, itself a blob) maps relative
paths to hashes. A function then travels as a small JSON *import reference* naming the
manifest, the module (its dotted path under the root) and the function's qualified name;
the agent materialises the manifest into a folder and its worker imports the module from
there, so module-level code runs on the VM exactly as it does locally.

What cannot be found again by import (a function defined in a notebook cell, inside
another function, or outside any folder) still travels by value as a cloudpickle.

Both forms are opaque bytes to the control plane. A reference is JSON and starts with
``{``; a cloudpickle starts with the pickle protocol byte ``0x80``, so a reader tells them
apart by the first byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from multinode.errors import InvalidRequestError
from multinode.wire import SOURCE_MANIFEST_FORMAT, SOURCE_REFERENCE_FORMAT

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
DEFAULT_MAX_FILES = 5000
MAX_BYTES_ENV = "MN_SOURCE_MAX_BYTES"

# Never shipped, wherever they are: version control, environments, caches, build output.
_ALWAYS_SKIPPED_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "__pycache__",
        ".venv",
        "venv",
        ".tox",
        ".nox",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        "node_modules",
        ".ipynb_checkpoints",
    }
)
_ALWAYS_SKIPPED_SUFFIXES = (".pyc", ".pyo")
_IGNORE_FILES = (".gitignore", ".mnignore")


@dataclass(frozen=True)
class SourceTree:
    """The files of one root, ready to upload.

    Attributes:
        root: the folder the paths are relative to.
        files: relative POSIX path → sha256 hex of its bytes.
        manifest: the manifest's bytes (JSON), whose hash names the whole tree.
    """

    root: Path
    files: dict[str, str]
    manifest: bytes

    @property
    def manifest_hash(self) -> str:
        return hashlib.sha256(self.manifest).hexdigest()

    def read(self, relative: str) -> bytes:
        """The file's bytes, as they were hashed.

        Raises:
            InvalidRequestError: the file changed since (its upload would not match).
        """
        data = (self.root / relative).read_bytes()
        if hashlib.sha256(data).hexdigest() != self.files[relative]:
            raise InvalidRequestError(
                f"{self.root / relative} changed while it was being deployed; deploy again "
                "(or list it in .mnignore if it changes all the time, like a log)",
                details={"file": relative},
            )
        return data


@dataclass(frozen=True)
class Location:
    """Where a VM finds a function again: ``module`` under ``root``, then ``qualname``.

    ``package`` is set for a module inside a package that was not deployed as an app
    file: only that top-level package's folder under ``root`` is shipped, not its
    neighbours.
    """

    root: Path
    module: str
    qualname: str
    package: str | None = None


def collect(
    root: Path,
    *,
    package: str | None = None,
    max_bytes: int | None = None,
    max_files: int = DEFAULT_MAX_FILES,
) -> SourceTree:
    """Hash the files under ``root`` (only its folder ``package`` if given) that are
    shipped (see the module docstring).

    Raises:
        InvalidRequestError: the files add up to more than ``max_bytes`` (default
            ``MN_SOURCE_MAX_BYTES`` or 50 MiB) or ``max_files``; the message names the
            largest files and how to leave them out.
    """
    root = root.resolve()
    limit = max_bytes if max_bytes is not None else _max_bytes()
    state = _state_dir()
    if state is not None and (root == state or state in root.parents):
        raise InvalidRequestError(
            f"the app's folder {root} is inside MN_HOME ({state}), which holds the local "
            "cloud's state and keys; move the app to a folder of its own",
            details={"root": str(root), "home": str(state)},
        )
    files: dict[str, str] = {}
    sizes: list[tuple[int, str]] = []
    total = 0
    for path in _walk(root / package if package else root, skip=state):
        relative = path.relative_to(root).as_posix()
        data = path.read_bytes()
        files[relative] = hashlib.sha256(data).hexdigest()
        total += len(data)
        sizes.append((len(data), relative))
        if len(files) > max_files or total > limit:
            break
    if len(files) > max_files or total > limit:
        largest = ", ".join(
            f"{name} ({size / 1048576:.1f} MiB)" for size, name in sorted(sizes, reverse=True)[:5]
        )
        raise InvalidRequestError(
            f"the app's folder {root} holds more than {limit / 1048576:.0f} MiB or "
            f"{max_files} files to upload (largest: {largest}); list what the VMs do not need "
            f"in {root / '.mnignore'} (gitignore syntax), keep the app in a folder of its "
            f"own, or raise {MAX_BYTES_ENV}",
            details={"root": str(root), "max_bytes": limit, "max_files": max_files},
        )
    manifest = json.dumps(
        {"format": SOURCE_MANIFEST_FORMAT, "files": dict(sorted(files.items()))},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    return SourceTree(root=root, files=files, manifest=manifest)


def locate(func: Callable[..., Any], *, roots: dict[str, tuple[Path, str]]) -> Location | None:
    """Where ``func`` can be imported from on a VM, or None if it must travel by value.

    ``roots`` maps the names under which :func:`multinode._deploy.load_app` imported app
    files to ``(root, module name on the VM)``. Any other module is found under the
    folder above its top-level package. The function must be reachable from its module by
    its ``__qualname__`` (not defined inside another function) as itself or as the handle
    that decorates it.
    """
    module_name = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", "")
    module = sys.modules.get(module_name or "")
    if module is None or not qualname or "<" in qualname:
        return None
    file = getattr(module, "__file__", None)
    if not file or not file.endswith(".py"):
        return None
    from multinode._serialization import is_user_module

    # A script run as __main__ often does its work at import (deploys, calls): importing it
    # on a VM would do that work again, so its functions travel by value. Installed code
    # is pickled by reference anyway.
    if module_name == "__main__" or not is_user_module(module):
        return None
    path = Path(file).resolve()
    if module_name in roots:
        root, vm_name = roots[module_name]
    else:
        root, vm_name = _package_root(path, module_name or ""), module_name or ""
    if root is None or not _resolves_to(module, qualname, func):
        return None
    if vm_name.split(".")[0] in sys.stdlib_module_names:
        return None  # on the VM, `import json` finds the standard library's, not the app
    package = vm_name.split(".")[0] if "." in vm_name or path.name == "__init__.py" else None
    return Location(root=root, module=vm_name, qualname=qualname, package=package)


def import_reference(location: Location, manifest_hash: str) -> bytes:
    """The bytes of a function's import reference (stable for unchanged source)."""
    return json.dumps(
        {
            "format": SOURCE_REFERENCE_FORMAT,
            "source": manifest_hash,
            "module": location.module,
            "qualname": location.qualname,
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


def app_requirements(root: Path) -> list[str]:
    """The requirements every function of the app in ``root`` gets: the lines of
    ``requirements.txt``, else ``[project.dependencies]`` of ``pyproject.toml``, else none.

    Raises:
        InvalidRequestError: a line is an option (``-r``, ``--index-url``) or a local path,
            naming the file and line; or ``pyproject.toml`` cannot be read.
    """
    from multinode.wire import requirement_problem

    found: list[tuple[str, str]] = []
    requirements_txt = root / "requirements.txt"
    pyproject = root / "pyproject.toml"
    if requirements_txt.is_file():
        for number, raw in enumerate(requirements_txt.read_text().splitlines(), start=1):
            line = raw.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                found.append((line, f"{requirements_txt}:{number}"))
    elif pyproject.is_file():
        try:
            import tomllib
        except ImportError:  # Python 3.10
            raise InvalidRequestError(
                f"reading the dependencies of {pyproject} needs Python 3.11 or later; list "
                f"them in {requirements_txt} instead"
            ) from None
        try:
            project = tomllib.loads(pyproject.read_text()).get("project", {})
        except tomllib.TOMLDecodeError as exc:
            raise InvalidRequestError(f"{pyproject} is not valid TOML: {exc}") from None
        for item in project.get("dependencies", []) or []:
            found.append((item, f"{pyproject} [project.dependencies]"))
    requirements = []
    for line, where in found:
        problem = requirement_problem(line)
        if problem:
            raise InvalidRequestError(f"{where}: {problem}", details={"requirement": line})
        requirements.append(line)
    return requirements


def _resolves_to(module: ModuleType, qualname: str, func: Callable[..., Any]) -> bool:
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return False
    return obj is func or getattr(obj, "_func", None) is func


def _package_root(path: Path, module_name: str) -> Path | None:
    depth = module_name.count(".") + (1 if path.name == "__init__.py" else 0)
    root = path.parent
    for _ in range(depth):
        root = root.parent
    expected = root.joinpath(*module_name.split("."))
    if path.name == "__init__.py":
        expected = expected / "__init__.py"
    else:
        expected = expected.with_suffix(".py")
    return root if expected == path else None


def _state_dir() -> Path | None:
    """``MN_HOME``: the local cloud's database, logs and keys are never shipped."""
    from multinode.config import load_settings

    try:
        return Path(load_settings().home).expanduser().resolve()
    except OSError:
        return None


def _walk(root: Path, *, skip: Path | None = None) -> Iterator[Path]:
    import pathspec

    specs: list[tuple[Path, pathspec.GitIgnoreSpec]] = []
    for current, dirs, names in os.walk(root):
        folder = Path(current)
        for ignore in _IGNORE_FILES:
            if ignore in names:
                lines = (folder / ignore).read_text(errors="replace").splitlines()
                specs.append((folder, pathspec.GitIgnoreSpec.from_lines(lines)))

        def ignored(path: Path, *, is_dir: bool) -> bool:
            for base, spec in specs:
                if base == path or base not in path.parents:
                    continue
                relative = path.relative_to(base).as_posix() + ("/" if is_dir else "")
                if spec.match_file(relative):
                    return True
            return False

        dirs[:] = sorted(
            d
            for d in dirs
            if d not in _ALWAYS_SKIPPED_DIRS
            and folder / d != skip
            and not d.endswith(".egg-info")
            and not (folder / d / "pyvenv.cfg").exists()
            and not ignored(folder / d, is_dir=True)
        )
        for name in sorted(names):
            path = folder / name
            if name.endswith(_ALWAYS_SKIPPED_SUFFIXES) or not path.is_file():
                continue
            if ignored(path, is_dir=False):
                continue
            yield path


def _max_bytes() -> int:
    raw = os.environ.get(MAX_BYTES_ENV)
    if not raw:
        return DEFAULT_MAX_BYTES
    try:
        return max(1, int(raw))
    except ValueError:
        raise InvalidRequestError(
            f"{MAX_BYTES_ENV}={raw!r} is not a number of bytes, e.g. {MAX_BYTES_ENV}=104857600"
        ) from None
