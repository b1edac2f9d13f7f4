"""Load a user's app file and deploy its functions.

A deployment uploads each function as a content-addressed blob (cloudpickled by value,
so the VM needs none of the user's files), then records the version with the control
plane and binds the local handles to the app.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from multinode import wire
from multinode._serialization import blob_hash, is_user_module, pickle_function, register_by_value
from multinode.errors import InvalidRequestError
from multinode.functions import Function, registered_functions
from multinode.schedules import collect_schedules

_APP_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def load_app(path: str | os.PathLike[str]) -> tuple[ModuleType, dict[str, Function[Any]]]:
    """Import the Python file at ``path`` and collect its ``@mn.function`` handles.

    The file gets a unique module name (so two ``app.py`` files never collide and its
    ``if __name__ == "__main__":`` block does not run), and its directory goes on
    ``sys.path`` so it can import the modules next to it. Those modules, like the file
    itself, are pickled by value at deploy time.

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
    _ship_neighbours(file.parent)
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
) -> wire.DeploymentInfo:
    """Deploy the functions of a file, a module, or a list of handles as app ``name``.

    Each function is pickled by value and uploaded if the control plane lacks its blob;
    the handles are then bound to the app, so ``.call``/``.map`` work right away.

    Raises:
        InvalidRequestError: a bad app name, or nothing to deploy.
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
    # Pickle everything before the first request so a bad function sends nothing.
    blobs = {fn.name: pickle_function(fn._func) for fn in functions if fn._func is not None}
    uploads = []
    client = get_client()
    for fn in functions:
        if fn._func is None:
            raise InvalidRequestError(f"{fn!r} has no local code to deploy")
        data = blobs[fn.name]
        digest = blob_hash(data)
        if not client.has_blob(digest):
            client.put_blob(digest, data)
        uploads.append(wire.FunctionUpload(name=fn.name, spec=fn.spec, blob_hash=digest))
    request = wire.DeployRequest(
        functions=uploads,
        python_version=platform.python_version(),
        cloudpickle_version=cloudpickle.__version__,
        ephemeral=ephemeral,
        schedules=collect_schedules(functions),
    )
    info = client.deploy(name, request)
    for fn in functions:
        fn._bind(info.app)
    return info


def validate_app_name(name: str) -> None:
    """Raise InvalidRequestError unless ``name`` is a usable app name."""
    if not isinstance(name, str) or not _APP_NAME_RE.match(name):
        raise InvalidRequestError(
            f"app name {name!r} is not valid; use letters, digits, '-', '_' or '.', starting "
            "with a letter or digit, at most 63 characters, e.g. --name my-app"
        )


def default_app_name(path: str | os.PathLike[str]) -> str:
    """The app name derived from a file: its stem, lowercased, other characters as '-'."""
    stem = re.sub(r"[^a-z0-9-]+", "-", Path(path).stem.lower()).strip("-")
    return (stem or "app")[:50]


def _identifier(text: str) -> str:
    return re.sub(r"\W", "_", text) or "app"


def _ship_neighbours(folder: Path) -> None:
    # Modules imported from the app's folder are not installed on a VM; ship them by value.
    prefix = str(folder) + os.sep
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if not file or not os.path.realpath(file).startswith(prefix):
            continue
        if is_user_module(module):
            register_by_value(module)
