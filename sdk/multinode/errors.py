"""The one error hierarchy of Multinode.

Every error has a stable ``code``. The control plane answers failed requests with
``{"code", "message", "details"}`` (see :class:`multinode.wire.ErrorBody`) and the SDK turns
that body back into the same class with :func:`error_from_body`, so a caller can
``except mn.NotFoundError`` whether the problem was found locally or on the server.

This module imports nothing heavy: the control plane and the agent use it too.
"""

from __future__ import annotations

from typing import Any, ClassVar


class MultinodeError(Exception):
    """Base of every error Multinode raises on purpose.

    Attributes:
        code: stable machine-readable code, e.g. ``"not_found"``.
        message: one human sentence, ideally with the fix.
        details: structured fields (names, limits) for programs.
    """

    code: ClassVar[str] = "internal"
    status: ClassVar[int] = 500

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def to_body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class InvalidRequestError(MultinodeError, ValueError):
    """Input that can never succeed as given (bad spec, bad argument)."""

    code = "invalid"
    status = 422


class SerializationError(MultinodeError, TypeError):
    """An object could not be pickled or unpickled; the message names the object."""

    code = "serialization"
    status = 422


class AuthError(MultinodeError):
    """Missing, unknown or revoked credentials."""

    code = "unauthorized"
    status = 401


class ForbiddenError(MultinodeError):
    """Valid credentials that may not touch this resource."""

    code = "forbidden"
    status = 403


class NotFoundError(MultinodeError, LookupError):
    """An app, function, call or instance that does not exist. ``details`` names what does."""

    code = "not_found"
    status = 404


class ConflictError(MultinodeError):
    """The request lost a race or was made by a holder whose lease has expired."""

    code = "conflict"
    status = 409


class ControlPlaneUnreachableError(MultinodeError, ConnectionError):
    """The SDK or CLI could not reach a control plane; the message says where it looked."""

    code = "unreachable"
    status = 503


class CallTimeoutError(MultinodeError, TimeoutError):
    """A remote call ran longer than its function's ``timeout`` and was stopped."""

    code = "timed_out"
    status = 408


class CallCancelledError(MultinodeError):
    """The call was cancelled before it produced a result."""

    code = "cancelled"
    status = 409


class RemoteError(MultinodeError):
    """A remote function raised an exception that could not be rebuilt on the caller.

    The original type name and the remote traceback are in ``details`` and in the message.
    """

    code = "remote_error"
    status = 500


class InfrastructureError(MultinodeError):
    """The platform could not run the call (no capacity, instances lost too often)."""

    code = "infrastructure"
    status = 503


class ResultTimeoutError(MultinodeError, TimeoutError):
    """``handle.result(timeout=...)`` returned before the call finished. The call goes on."""

    code = "result_timeout"
    status = 408


class ServiceNotReadyError(MultinodeError, TimeoutError):
    """A service's replicas did not all become ready: one crash-loops, or its port never
    answered in time. ``details`` names the replica and carries its last log lines."""

    code = "service_not_ready"
    status = 504


class EnvironmentBuildError(MultinodeError):
    """A function's packages could not be installed: the message carries the resolver's
    (or installer's) own explanation; nothing was deployed."""

    code = "build_failed"
    status = 422


class SecretsUnavailableError(MultinodeError):
    """The control plane has no key to encrypt or decrypt secrets with; the message says
    which setting to give it."""

    code = "secrets_unavailable"
    status = 409  # a setting is missing: retrying the same request cannot help


_BY_CODE: dict[str, type[MultinodeError]] = {
    cls.code: cls
    for cls in (
        MultinodeError,
        InvalidRequestError,
        SerializationError,
        AuthError,
        ForbiddenError,
        NotFoundError,
        ConflictError,
        ControlPlaneUnreachableError,
        CallTimeoutError,
        CallCancelledError,
        RemoteError,
        InfrastructureError,
        ResultTimeoutError,
        ServiceNotReadyError,
        SecretsUnavailableError,
        EnvironmentBuildError,
    )
}


def error_from_body(body: dict[str, Any]) -> MultinodeError:
    """Rebuild the error class the server raised from its ``{code, message, details}`` body.

    Unknown codes become a plain :class:`MultinodeError` carrying the code in ``details``.
    """
    code = str(body.get("code", "internal"))
    cls = _BY_CODE.get(code, MultinodeError)
    details = dict(body.get("details") or {})
    if cls is MultinodeError and code != "internal":
        details.setdefault("code", code)
    return cls(str(body.get("message", "unknown error")), details=details)
