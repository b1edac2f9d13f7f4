"""Bearer tokens: random strings whose prefix names their kind, stored only as sha256."""

from __future__ import annotations

import hashlib
import secrets
from typing import Literal

TokenKind = Literal["key", "agent", "bootstrap"]

PREFIXES: dict[TokenKind, str] = {"key": "mnk_", "agent": "mna_", "bootstrap": "mnb_"}


def new_token(kind: TokenKind) -> str:
    """A fresh token of ``kind`` (256 bits of randomness after the prefix)."""
    return PREFIXES[kind] + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The form a token is stored and looked up in."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_kind(token: str) -> TokenKind | None:
    """The kind a token's prefix claims, or None for a string no kind matches."""
    for kind, prefix in PREFIXES.items():
        if token.startswith(prefix):
            return kind
    return None
