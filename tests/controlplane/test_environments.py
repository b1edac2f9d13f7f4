"""Environments on the control plane: one row per distinct set, queued once, claimed by
one builder at a time, and required ready before a deploy (SQLite and PostgreSQL). The
build itself, against the real package index, is in tests/e2e/test_environments_e2e.py."""

from __future__ import annotations

import platform

import pytest
from sqlalchemy import func, select

from multinode import wire
from multinode.errors import InvalidRequestError
from multinode_controlplane import models as m
from multinode_controlplane.services import environment_builds, environments
from multinode_controlplane.services.context import Context
from tests.controlplane.helpers import deploy

HERE = ".".join(platform.python_version_tuple()[:2])


def ask(ctx: Context, user, *requirements: str, python: str = HERE) -> wire.EnvironmentInfo:
    request = wire.EnvironmentRequest(python=python, requirements=list(requirements))
    return environments.request(ctx, user, request)


def rows(ctx: Context) -> int:
    with ctx.db.read() as session:
        return session.execute(select(func.count()).select_from(m.EnvironmentRow)).scalar()


def test_one_set_of_requirements_is_one_environment_whatever_the_order(ctx: Context, user) -> None:
    first = ask(ctx, user, "humanize==4.17.0", "python-slugify")
    again = ask(ctx, user, "python-slugify", "humanize==4.17.0")
    other = ask(ctx, user, "humanize==4.17.0")
    assert first.id == again.id != other.id
    assert first.status is wire.EnvironmentStatus.pending and rows(ctx) == 2


def test_a_python_the_vms_do_not_run_is_refused_with_the_ones_they_do(ctx: Context, user) -> None:
    with pytest.raises(InvalidRequestError, match=f"they run {HERE}") as caught:
        ask(ctx, user, "humanize", python="3.9")
    assert caught.value.details["available"] == [HERE]


def test_one_builder_claims_an_environment_and_a_dead_builders_lease_passes(
    ctx: Context, user, clock
) -> None:
    env = ask(ctx, user, "humanize")
    claimed = environment_builds.claim(ctx)
    assert claimed is not None and claimed.id == env.id and claimed.builds == 1
    assert environment_builds.claim(ctx) is None  # building, under lease
    clock.advance(ctx.settings.build_timeout_s + 61)
    again = environment_builds.claim(ctx)
    assert again is not None and again.id == env.id and again.builds == 2


def test_a_failed_environment_is_queued_again_when_asked_for(ctx: Context, user) -> None:
    env = ask(ctx, user, "humanize")
    _finish(ctx, env.id, status="failed", error="no such version")
    assert environments.get(ctx, user, env.id).status is wire.EnvironmentStatus.failed
    assert ask(ctx, user, "humanize").status is wire.EnvironmentStatus.pending


def test_a_deploy_needs_every_environment_it_names_ready(ctx: Context, user) -> None:
    env = ask(ctx, user, "humanize")
    spec = wire.FunctionSpec(pip=["humanize"], environment=env.id)
    with pytest.raises(InvalidRequestError, match="pending, not ready"):
        deploy(ctx, user, "demo", f=spec)
    _finish(ctx, env.id, status="ready", sha256="0" * 64, size=10, object_key="k")
    assert deploy(ctx, user, "demo", f=spec).version == 1
    with pytest.raises(InvalidRequestError, match="unknown, not ready"):
        deploy(ctx, user, "demo", f=spec.model_copy(update={"environment": "1" * 64}))


def test_a_deploy_for_a_python_the_vms_lack_is_refused(ctx: Context, user) -> None:
    with pytest.raises(InvalidRequestError, match="Python 3.9"):
        deploy(ctx, user, "demo", f=wire.FunctionSpec(python="3.9"))


def test_the_build_log_is_read_from_an_offset(ctx: Context, user) -> None:
    env = ask(ctx, user, "humanize")
    _finish(ctx, env.id, status="building", log="line one\nline two\n")
    whole = environments.get(ctx, user, env.id)
    rest = environments.get(ctx, user, env.id, log_offset=len("line one\n"))
    assert whole.log == "line one\nline two\n" and rest.log == "line two\n"
    assert rest.log_size == len(whole.log)


def _finish(ctx: Context, env_id: str, **fields: object) -> None:
    with ctx.db.write() as session:
        row = session.get(m.EnvironmentRow, env_id)
        for name, value in fields.items():
            setattr(row, name, value)
