"""Secrets: encrypted at rest, listed by key only, refused at deploy when missing, and read
only by an agent for a function of its own app that names them (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from multinode import wire
from multinode.errors import (
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    SecretsUnavailableError,
)
from multinode_controlplane import models as m
from multinode_controlplane.services import function_env, secrets
from multinode_controlplane.services.auth import Principal
from multinode_controlplane.services.context import Context
from tests.controlplane.helpers import deploy, new_agent

VALUE = "s3cr3t-value-that-must-not-leak"


@pytest.fixture
def keyed(ctx: Context) -> Context:
    """A context with a configured key (PostgreSQL has no file to keep one in)."""
    ctx.settings = ctx.settings.model_copy(update={"secrets_key": Fernet.generate_key().decode()})
    return ctx


def env_of(ctx: Context, agent: Principal, function: str, version: int = 1) -> wire.FunctionEnv:
    request = wire.FunctionEnvRequest(function=function, version=version)
    return function_env.function_env(ctx, object(), agent, request)


def test_values_are_stored_encrypted_and_listed_by_key_only(keyed: Context, user) -> None:
    info = secrets.set_secret(keyed, user, "twitter", {"API_KEY": VALUE, "API_SECRET": "x"})
    assert info.keys == ["API_KEY", "API_SECRET"]
    with keyed.db.read() as session:
        row = session.execute(select(m.SecretRow)).scalar_one()
    assert VALUE.encode() not in row.ciphertext and VALUE not in row.keys
    [listed] = secrets.list_secrets(keyed, user)
    assert VALUE not in listed.model_dump_json()


def test_a_function_gets_exactly_the_secrets_it_names(keyed: Context, user) -> None:
    secrets.set_secret(keyed, user, "twitter", {"API_KEY": VALUE})
    secrets.set_secret(keyed, user, "db", {"DB_URL": "postgres://x"})
    deploy(
        keyed,
        user,
        "demo",
        describe=wire.FunctionSpec(env={"GREETING": "hej"}, secrets=["twitter"]),
        plain=wire.FunctionSpec(),
    )
    agent, _ = new_agent(keyed, user, app="demo")
    got = env_of(keyed, agent, "describe")
    assert got.env == {"GREETING": "hej", "API_KEY": VALUE} and got.secret_keys == ["API_KEY"]
    assert env_of(keyed, agent, "plain").env == {}
    with pytest.raises(ForbiddenError):  # an API key may write secrets, never read them
        env_of(keyed, user, "describe")


def test_a_replaced_secret_is_read_anew_and_a_removed_one_says_how_to_restore_it(
    keyed: Context, user
) -> None:
    secrets.set_secret(keyed, user, "twitter", {"API_KEY": "old"})
    deploy(keyed, user, "demo", f=wire.FunctionSpec(secrets=["twitter"]))
    agent, _ = new_agent(keyed, user, app="demo")
    secrets.set_secret(keyed, user, "twitter", {"API_KEY": "new"})
    assert env_of(keyed, agent, "f").env == {"API_KEY": "new"}
    secrets.delete_secret(keyed, user, "twitter")
    with pytest.raises(NotFoundError, match="mn secret set twitter"):
        env_of(keyed, agent, "f")


def test_deploying_a_function_that_names_a_missing_secret_is_refused(keyed: Context, user) -> None:
    with pytest.raises(InvalidRequestError, match="mn secret set twitter KEY=VALUE") as caught:
        deploy(keyed, user, "demo", f=wire.FunctionSpec(secrets=["twitter"]))
    assert caught.value.details["missing_secrets"] == ["twitter"]
    with keyed.db.read() as session:
        assert session.execute(select(m.AppRow)).first() is None  # nothing was deployed


def test_an_agent_of_another_app_cannot_read_a_functions_secrets(keyed: Context, user) -> None:
    secrets.set_secret(keyed, user, "twitter", {"API_KEY": VALUE})
    deploy(keyed, user, "alpha", f=wire.FunctionSpec(secrets=["twitter"]))
    deploy(keyed, user, "beta", g=wire.FunctionSpec())
    beta_agent, _ = new_agent(keyed, user, app="beta")
    with pytest.raises(NotFoundError):
        env_of(keyed, beta_agent, "f")


def test_a_rotated_key_still_reads_what_the_old_one_wrote(keyed: Context, user) -> None:
    old = keyed.settings.secrets_key
    secrets.set_secret(keyed, user, "twitter", {"API_KEY": VALUE})
    deploy(keyed, user, "demo", f=wire.FunctionSpec(secrets=["twitter"]))
    agent, _ = new_agent(keyed, user, app="demo")
    keyed.secret_box = None
    keyed.settings = keyed.settings.model_copy(
        update={"secrets_key": f"{Fernet.generate_key().decode()},{old}"}
    )
    assert env_of(keyed, agent, "f").env == {"API_KEY": VALUE}
    keyed.secret_box = None
    keyed.settings = keyed.settings.model_copy(update={"secrets_key": "some other random text"})
    with pytest.raises(SecretsUnavailableError, match="another MN_SERVER_SECRETS_KEY"):
        env_of(keyed, agent, "f")


def test_without_a_key_sqlite_makes_one_and_postgresql_refuses(ctx: Context, user) -> None:
    if ctx.db.is_sqlite:
        secrets.set_secret(ctx, user, "twitter", {"API_KEY": VALUE})
        key_file = ctx.db.path.parent / "secrets.key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        Fernet(key_file.read_bytes())  # a usable key
    else:
        with pytest.raises(SecretsUnavailableError, match="MN_SERVER_SECRETS_KEY"):
            secrets.set_secret(ctx, user, "twitter", {"API_KEY": VALUE})


@pytest.mark.parametrize(
    ("name", "key", "says"),
    [("bad name", "A", "not valid"), ("ok", "MN_URL", "reserved"), ("ok", "1A", "not valid")],
)
def test_bad_names_and_keys_are_refused_without_echoing_values(
    keyed: Context, user, name: str, key: str, says: str
) -> None:
    with pytest.raises(InvalidRequestError, match=says) as caught:
        secrets.set_secret(keyed, user, name, {key: VALUE})
    assert VALUE not in str(caught.value) and VALUE not in str(caught.value.details)
