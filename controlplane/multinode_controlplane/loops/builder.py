"""The builder loop: builds queued environments one at a time (see
services/environment_builds.py). Woken when an environment is requested."""

from __future__ import annotations

from multinode_controlplane.services import environment_builds
from multinode_controlplane.services.context import Context


class Builder:
    def __init__(self, ctx: Context, storage: object) -> None:
        self.ctx = ctx
        self.storage = storage

    def run_once(self) -> int:
        """Build every environment waiting now; returns how many were built or failed."""
        done = 0
        while (row := environment_builds.claim(self.ctx)) is not None:
            environment_builds.build(self.ctx, self.storage, row)
            done += 1
        return done
