"""Pickling of functions, arguments and results, with errors that name the object.

cloudpickle is imported inside the functions, so ``import multinode`` (and the control
plane, which imports ``multinode.wire`` and ``multinode.errors``) never pays for it.

A user's own code (their script, the modules next to it) is not installed on a VM, so it
is pickled *by value*; anything installed in site-packages or the standard library is
pickled by reference and must be installed on the VM too.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import sysconfig
from collections.abc import Callable
from types import ModuleType
from typing import Any

from multinode.errors import SerializationError

# Pickle protocol 5 exists on every Python the SDK supports (>= 3.8) and handles large
# buffers without extra copies.
PROTOCOL = 5


def dumps(obj: Any, *, what: str) -> bytes:
    """Cloudpickle ``obj``; ``what`` says what it is for messages (``"argument 0 of crunch"``).

    Raises:
        SerializationError: ``obj`` (or something it references) cannot be pickled.
    """
    import cloudpickle

    try:
        return cloudpickle.dumps(obj, protocol=PROTOCOL)
    except Exception as exc:
        raise SerializationError(
            f"{what}: {exc} (the value is {_describe(obj)}); pass plain data instead: open "
            "locks, sockets, files and clients inside the function rather than passing them",
            details={"what": what, "type": _type_name(obj), "error": str(exc)},
        ) from exc


def loads(data: bytes, *, what: str) -> Any:
    """Unpickle ``data`` (``what`` names it for messages).

    Raises:
        SerializationError: the bytes cannot be unpickled here; the message names the
            likely cause (a module missing on this machine, or a Python/cloudpickle version
            different from the one that pickled them).
    """
    import cloudpickle

    try:
        return cloudpickle.loads(data)
    except ModuleNotFoundError as exc:
        raise SerializationError(
            f"cannot unpickle {what}: module {exc.name!r} is not installed here; install it "
            "where the value is loaded (or keep the code next to your app so it is shipped)",
            details={"what": what, "module": exc.name, **runtime_versions()},
        ) from exc
    except Exception as exc:
        raise SerializationError(
            f"cannot unpickle {what}: {type(exc).__name__}: {exc}; the likely cause is a "
            f"different Python or cloudpickle version on each side (here: Python "
            f"{platform.python_version()}, cloudpickle {cloudpickle.__version__}); use the "
            "same versions on your machine and the VMs",
            details={"what": what, "error": str(exc), **runtime_versions()},
        ) from exc


def pickle_function(func: Callable[..., Any]) -> bytes:
    """Pickle a user's function so it runs on a VM that has only site-packages installed.

    The function's own module (and, if it is one, the user's package) is registered for
    pickling by value when it is not an installed module, so the VM needs no copy of it.

    Raises:
        SerializationError: the function, or a global it uses, cannot be pickled.
    """
    module = sys.modules.get(getattr(func, "__module__", None) or "")
    if module is not None and is_user_module(module):
        register_by_value(module)
    name = getattr(func, "__qualname__", None) or repr(func)
    return dumps(func, what=f"function {name}")


def restore_exception(cls: type[BaseException], args: tuple, state: dict) -> BaseException:
    """Rebuild an exception pickled by the worker as class, ``args`` and attributes,
    without calling its ``__init__`` (whose signature may not take ``args``)."""
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


def blob_hash(data: bytes) -> str:
    """The content address of a blob: lowercase sha256 hex."""
    return hashlib.sha256(data).hexdigest()


def runtime_versions() -> dict[str, str]:
    """Versions that must match between the pickling and the unpickling interpreter."""
    import cloudpickle

    return {
        "python_version": platform.python_version(),
        "cloudpickle_version": cloudpickle.__version__,
    }


def is_user_module(module: ModuleType) -> bool:
    """True for code a VM will not have installed: scripts and modules outside site-packages.

    ``__main__`` counts as user code; built-in modules, the standard library, installed
    distributions and Multinode itself do not.
    """
    name = module.__name__
    if name == "__main__":
        return True
    if name.split(".")[0] in _NEVER_BY_VALUE:
        return False
    file = getattr(module, "__file__", None)
    if not file:
        return False
    path = os.path.realpath(file)
    return not any(path.startswith(root) for root in _installed_roots())


def register_by_value(module: ModuleType) -> None:
    """Have cloudpickle ship ``module``'s code by value (idempotent)."""
    import cloudpickle

    if module.__name__ == "__main__":
        return  # cloudpickle already pickles __main__ by value
    top = sys.modules.get(module.__name__.split(".")[0], module)
    target = top if top is not module and is_user_module(top) else module
    if target.__name__ in cloudpickle.list_registry_pickle_by_value():
        return
    cloudpickle.register_pickle_by_value(target)


_NEVER_BY_VALUE = frozenset(
    {"multinode", "multinode_agent", "multinode_controlplane", "multinode_provisioner"}
)
_ROOTS: tuple[str, ...] | None = None


def _installed_roots() -> tuple[str, ...]:
    global _ROOTS
    if _ROOTS is None:
        roots = set()
        for key in ("stdlib", "platstdlib", "purelib", "platlib"):
            path = sysconfig.get_paths().get(key)
            if path:
                roots.add(os.path.realpath(path) + os.sep)
        for entry in sys.path:
            if entry and os.path.basename(entry) in ("site-packages", "dist-packages"):
                roots.add(os.path.realpath(entry) + os.sep)
        _ROOTS = tuple(sorted(roots))
    return _ROOTS


def _type_name(obj: Any) -> str:
    cls = type(obj)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def _describe(obj: Any) -> str:
    text = repr(obj)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text}, of type {_type_name(obj)}"
