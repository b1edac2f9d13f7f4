"""Load a user's app file and deploy its functions.

A deployment uploads the app's source (its folder, file by file, content-addressed: see
:mod:`multinode._source`) and, per function, a blob saying where to import it from; a
function that cannot be imported again (defined in a notebook cell or inside another
function) is cloudpickled by value instead. Only blobs the control plane lacks are sent.
It then records the version with the control plane and binds the local handles to it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from multinode import _source, wire
from multinode._serialization import blob_hash, is_user_module, pickle_function, register_by_value
from multinode.errors import EnvironmentBuildError, InvalidRequestError
from multinode.functions import Function, registered_functions
from multinode.schedules import collect_schedules

_APP_NAME_RE = re.compile(wire.APP_NAME_PATTERN)
# Module name given by load_app -> (the app's folder, the module's name on a VM).
_APP_ROOTS: dict[str, tuple[Path, str]] = {}


def load_app(path: str | os.PathLike[str]) -> tuple[ModuleType, dict[str, Function[Any]]]:
    """Import the Python file at ``path`` and collect its ``@mn.function`` handles.

    The file is imported under its own name (``app.py`` as ``app``, so its
    ``if __name__ == "__main__":`` block does not run), as it will be on a VM, so classes
    and exceptions it defines keep their import path on both sides. When that name is
    taken by another module here, it gets a unique local name instead. It is executed
    afresh on every call, so a file edited since is deployed as it is now. Its directory
    goes on ``sys.path`` so it can import the modules next to it.

    Returns:
        The module and its functions by name: those decorated in it, then handles it
        imported from elsewhere.

    Raises:
        InvalidRequestError: the path is not a readable ``.py`` file, or two different
            functions share a name. Errors raised by the file itself propagate as they are.
    """
    file = Path(path).expanduser().resolve()
    if not file.is_file() or file.suffix != ".py":
        raise InvalidRequestError(
            f"{path} is not a Python file; pass the path of your app, e.g. `mn deploy app.py`"
        )
    folder = str(file.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    name = file.stem
    existing = sys.modules.get(name)
    taken = existing is not None and not _same_file(existing, file)
    if taken or not name.isidentifier() or name in sys.stdlib_module_names:
        digest = hashlib.sha1(str(file).encode()).hexdigest()[:10]
        name = f"mn_app_{_identifier(file.stem)}_{digest}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise InvalidRequestError(f"cannot import {file}; is it a Python source file?")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    _APP_ROOTS[name] = (file.parent, file.stem)
    return module, collect_functions(module)


def collect_functions(module: ModuleType) -> dict[str, Function[Any]]:
    """The module's decorated functions, plus handles bound to its globals under their name.

    Raises:
        InvalidRequestError: two different functions would deploy under one name.
    """
    found = registered_functions(module.__name__)
    for value in vars(module).values():
        if not isinstance(value, Function) or value._func is None:
            continue
        other = found.setdefault(value.name, value)
        if other is not value and other._func is not value._func:
            raise InvalidRequestError(
                f"two functions named {value.name!r} in {module.__file__}; rename one of them",
                details={"function": value.name},
            )
    return found


def deploy(
    target: str | os.PathLike[str] | ModuleType | Iterable[Function[Any]],
    *,
    name: str,
    ephemeral: bool = False,
    progress: Callable[[str], None] | None = None,
) -> wire.DeploymentInfo:
    """Deploy the functions of a file, a module, or a list of handles as app ``name``.

    Functions are shipped as source where they can be imported again on a VM (the app's
    folder is uploaded, unchanged files skipped), else pickled by value. Each distinct set
    of requirements (the app's ``requirements.txt`` plus a function's ``pip=``) is built
    into an environment on the control plane first, or reused when it was built before;
    ``progress`` receives the build's lines. The handles are then bound to the app, so
    ``.call``/``.map`` work right away.

    Raises:
        InvalidRequestError: a bad app name, nothing to deploy, an app folder over the
            upload limit, a bad requirements file, or a Python the VMs do not run.
        EnvironmentBuildError: requirements that cannot be installed, with the
            resolver's message; nothing is deployed.
        SerializationError: a function cannot be pickled (the message names it); nothing
            is deployed in that case.
    """
    import cloudpickle

    from multinode._client import get_client

    validate_app_name(name)
    if isinstance(target, (str, os.PathLike)):
        functions = list(load_app(target)[1].values())
    elif isinstance(target, ModuleType):
        functions = list(collect_functions(target).values())
    else:
        functions = list(target)
    if not functions:
        raise InvalidRequestError(
            f"nothing to deploy to {name!r}: no @mn.function found; decorate a function with "
            "@mn.function and deploy the file that defines it"
        )
    for fn in functions:
        if fn._func is None:
            raise InvalidRequestError(f"{fn!r} has no local code to deploy")
    # Everything is packed before the first request, so a bad function sends nothing.
    code, blobs = package(functions)
    wanted = {fn.name: environment_request(fn) for fn in functions}
    client = get_client()
    for digest in client.missing_blobs(list(blobs)):
        client.put_blob(digest, blobs[digest]())
    built = build_environments(client, wanted, progress=progress)
    request = wire.DeployRequest(
        functions=[
            wire.FunctionUpload(
                name=fn.name,
                spec=fn.spec.model_copy(update={"environment": built.get(fn.name)}),
                blob_hash=code[fn.name],
            )
            for fn in functions
        ],
        python_version=platform.python_version(),
        cloudpickle_version=cloudpickle.__version__,
        ephemeral=ephemeral,
        schedules=collect_schedules(functions),
    )
    info = client.deploy(name, request)
    for fn in functions:
        fn._bind(info.app)
    return info


def environment_request(fn: Function[Any]) -> wire.EnvironmentRequest | None:
    """What ``fn`` needs built: its app's requirements plus its own ``pip=``, for its
    Python (the one deploying unless ``python=`` says otherwise); None if nothing.

    Raises:
        InvalidRequestError: the app's requirements file is malformed.
    """
    root = _app_root(fn)
    requirements = list(
        dict.fromkeys([*(_source.app_requirements(root) if root else []), *fn.spec.pip])
    )
    if not requirements:
        return None
    python = fn.spec.python or ".".join(platform.python_version_tuple()[:2])
    return wire.EnvironmentRequest(python=python, requirements=requirements)


def build_environments(
    client: Any,
    wanted: dict[str, wire.EnvironmentRequest | None],
    *,
    progress: Callable[[str], None] | None = None,
    poll_s: float = 0.25,
) -> dict[str, str]:
    """Have the control plane build (or reuse) each distinct environment, following each
    build's log, and return the environment id of every function that has one.

    Raises:
        EnvironmentBuildError: a build failed; the message holds its error.
    """
    say = progress or (lambda _line: None)
    ids: dict[str, str] = {}
    done: dict[str, wire.EnvironmentInfo] = {}
    for function, req in wanted.items():
        if req is None:
            continue
        info = client.request_environment(req)
        ids[function] = info.id
        if info.id in done:
            continue
        if info.status is wire.EnvironmentStatus.ready:
            say(f"environment {info.id[:12]} for {function}: reused, built before")
        else:
            say(
                f"environment {info.id[:12]} for {function}: building (Python {req.python}, "
                f"{len(req.requirements)} requirements)"
            )
            offset = 0
            while info.status in (wire.EnvironmentStatus.pending, wire.EnvironmentStatus.building):
                time.sleep(poll_s)
                info = client.get_environment(info.id, log_offset=offset)
                for line in info.log.splitlines():
                    say(f"  {line}")
                offset = info.log_offset + len(info.log)
            if info.status is wire.EnvironmentStatus.failed:
                names = sorted(f for f, other in ids.items() if other == info.id)
                raise EnvironmentBuildError(
                    f"the packages of {', '.join(names)} could not be installed; nothing was "
                    f"deployed. {info.error or 'the build failed'}",
                    details={"environment": info.id, "requirements": req.requirements},
                )
        done[info.id] = info
    return ids


def package(
    functions: list[Function[Any]],
) -> tuple[dict[str, str], dict[str, Callable[[], bytes]]]:
    """Pack functions for upload.

    Returns:
        Each function's blob hash by name, and every blob the deployment needs by hash
        (read lazily, so only the ones the control plane lacks are read twice).

    Raises:
        InvalidRequestError: an app folder is over the upload limit.
        SerializationError: a function that travels by value cannot be pickled.
    """
    blobs: dict[str, Callable[[], bytes]] = {}
    code: dict[str, str] = {}
    trees: dict[tuple[Path, str | None], _source.SourceTree] = {}
    by_value = []
    for fn in functions:
        assert fn._func is not None
        location = _source.locate(fn._func, roots=_APP_ROOTS)
        if location is None:
            by_value.append(fn)
            continue
        key = (location.root, location.package)
        tree = trees.get(key)
        if tree is None:
            tree = trees[key] = _source.collect(location.root, package=location.package)
            for relative, digest in tree.files.items():
                blobs[digest] = functools.partial(tree.read, relative)
            blobs[tree.manifest_hash] = functools.partial(bytes, tree.manifest)
        reference = _source.import_reference(location, tree.manifest_hash)
        code[fn.name] = blob_hash(reference)
        blobs[code[fn.name]] = functools.partial(bytes, reference)
    if by_value:
        _ship_neighbours_by_value(by_value)
    for fn in by_value:
        assert fn._func is not None
        data = pickle_function(fn._func)
        code[fn.name] = blob_hash(data)
        blobs[code[fn.name]] = functools.partial(bytes, data)
    return code, blobs


def validate_app_name(name: str) -> None:
    """Raise InvalidRequestError unless ``name`` is a usable app name."""
    if not isinstance(name, str) or not _APP_NAME_RE.match(name):
        raise InvalidRequestError(
            f"app name {name!r} is not valid; {wire.APP_NAME_RULE}, e.g. --name my-app"
        )


def default_app_name(path: str | os.PathLike[str]) -> str:
    """The app name derived from a file: its stem, lowercased, other characters as '-'."""
    stem = re.sub(r"[^a-z0-9-]+", "-", Path(path).stem.lower()).strip("-")
    return (stem or "app")[:50]


def _identifier(text: str) -> str:
    return re.sub(r"\W", "_", text) or "app"


def _app_root(fn: Function[Any]) -> Path | None:
    """The folder whose requirements file applies to ``fn``: where its source travels from."""
    if fn._func is None:
        return None
    location = _source.locate(fn._func, roots=_APP_ROOTS)
    if location is not None:
        return location.root
    known = _APP_ROOTS.get(getattr(fn._func, "__module__", ""))
    return known[0] if known else None


def _same_file(module: ModuleType, file: Path) -> bool:
    other = getattr(module, "__file__", None)
    return bool(other) and Path(other).resolve() == file


def _ship_neighbours_by_value(functions: list[Function[Any]]) -> None:
    # A function that travels by value may use modules from its app's folder, which only
    # travel as source for functions found by import: ship those modules by value too.
    folders = {
        str(root) + os.sep
        for module_name in {getattr(fn._func, "__module__", "") for fn in functions}
        for root, _ in [_APP_ROOTS.get(module_name) or (None, None)]
        if root is not None
    }
    main = sys.modules.get("__main__")
    main_file = getattr(main, "__file__", None)
    if main_file:
        folders.add(os.path.dirname(os.path.realpath(main_file)) + os.sep)
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if not file or not any(os.path.realpath(file).startswith(f) for f in folders):
            continue
        if is_user_module(module):
            register_by_value(module)
