"""What every service function needs, built once by the app and passed explicitly."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from multinode_controlplane.clock import Clock
from multinode_controlplane.db import Database
from multinode_controlplane.services.events import Notifier
from multinode_controlplane.settings import ServerSettings


@dataclass
class Context:
    db: Database
    notifier: Notifier
    settings: ServerSettings
    clock: Clock
    # token hash -> (expiry, principal); see services.auth.authenticate
    auth_cache: dict[str, tuple[float, Any]] = field(default_factory=dict)
    # services.secrets' cipher, made at first use
    secret_box: Any = None
    # When this control plane started serving: an instance is lost only after missing
    # heartbeats for agent_lost_after_s counted from here too (see instances.reap_lost).
    started_at: float = 0.0

    @property
    def recheck_s(self) -> float | None:
        """How often long-polls re-check the database for other replicas' events."""
        if self.settings.event_recheck_s is not None:
            return self.settings.event_recheck_s or None
        return None if self.db.is_sqlite else 0.25
