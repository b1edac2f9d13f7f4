"""The base of every environment: what every VM has before any environment is added.

A VM installs the ``multinode`` distribution (SDK and agent), so it always has the SDK's
dependencies. An environment is resolved *against* those, at the versions installed here,
so that a user's requirement can never replace a package the workers themselves need (a
conflicting pin fails the build with the resolver's explanation), and what the base
already holds is not packed again.
"""

from __future__ import annotations

import functools
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

DISTRIBUTION = "multinode"


@functools.cache
def base_pins() -> dict[str, str]:
    """Canonical name → installed version of the SDK's dependencies, transitively (extras
    of the ``multinode`` distribution excluded)."""
    pins: dict[str, str] = {}
    pending = [Requirement(r) for r in metadata.requires(DISTRIBUTION) or []]
    while pending:
        requirement = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        if name in pins:
            continue
        try:
            dist = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            continue
        pins[name] = dist.version
        for extra in requirement.extras:
            pending += [
                r
                for r in map(Requirement, dist.requires or [])
                if r.marker is not None and r.marker.evaluate({"extra": extra})
            ]
        pending += [
            r
            for r in map(Requirement, dist.requires or [])
            if r.marker is None or r.marker.evaluate({"extra": ""})
        ]
    return pins
