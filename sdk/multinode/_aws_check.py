"""Collecting what an AWS target lacks, item by item, into a :class:`wire.AwsCheck`.

Shared by the control plane's dict-storage check and the provisioner's EC2 check. It
imports no AWS library: errors are read through botocore's ``response`` attribute.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from multinode import wire

# Codes meaning "these credentials may not", across the services checked.
DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedOperation",
        "AuthFailure",
        "403",
        "Forbidden",
    }
)
_BAD_CREDENTIALS = frozenset(
    {"InvalidClientTokenId", "UnrecognizedClientException", "ExpiredToken", "SignatureDoesNotMatch"}
)


class Checklist:
    """Runs checks one by one and collects what they find into a :class:`wire.AwsCheck`.

    A check is a callable returning ``None`` when the item is fine, or a sentence saying
    what is wrong and how to fix it. An AWS error it raises becomes that sentence.
    """

    def __init__(self) -> None:
        self.checked: list[str] = []
        self.problems: list[wire.AwsProblem] = []
        self._started = time.monotonic()

    def run(self, item: str, setting: str | None, check: Callable[[], str | None]) -> bool:
        """Run one check; True when it found nothing wrong."""
        self.checked.append(item)
        try:
            problem = check()
        except Exception as exc:  # any failure of one item is reported, never raised
            problem = explain(exc, setting=setting)
        if problem:
            self.problems.append(wire.AwsProblem(item=item, setting=setting, message=problem))
        return not problem

    def result(self) -> wire.AwsCheck:
        return wire.AwsCheck(
            status="problems" if self.problems else "ok",
            checked=list(self.checked),
            problems=list(self.problems),
            duration_s=round(time.monotonic() - self._started, 3),
        )


def explain(exc: BaseException, *, setting: str | None = None) -> str:
    """One sentence for an error AWS (or botocore) raised while checking."""
    code = error_code(exc)
    message = _error_message(exc)
    if code in DENIED_CODES:
        return f"not allowed ({code}): {message}. Grant the control plane's role this action."
    if code in _BAD_CREDENTIALS:
        return f"AWS refused the credentials ({code}): {message}"
    if type(exc).__name__ == "NoCredentialsError":
        return "no AWS credentials found: give the control plane a role or AWS_* variables"
    if code:
        hint = f" (check {setting})" if setting else ""
        return f"AWS answered {code}: {message}{hint}"
    return f"could not reach AWS: {type(exc).__name__}: {exc}"


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _error_message(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Message", "")) or str(exc)
    return str(exc)
