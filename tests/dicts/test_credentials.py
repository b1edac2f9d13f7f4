"""Vended credentials: who gets them, what they allow, and how the SDK refreshes them."""

from __future__ import annotations

import httpx
import pytest
from botocore.exceptions import ClientError

import multinode as mn
from multinode._client import get_client
from multinode._dict_store import RETRY_FOR_S, DictStore
from multinode_controlplane.services.dict_credentials import session_policy
from tests.dicts.conftest import DictPlane


def test_an_app_cannot_get_credentials_for_another_apps_dict(
    as_app, fresh_name: str, dict_plane: DictPlane
) -> None:
    mn.get_dict(fresh_name)["secret"] = "alpha's"
    as_app("beta")
    with pytest.raises(mn.ForbiddenError, match="only on its own app"):
        mn.get_dict(fresh_name, app="alpha")["secret"]
    with pytest.raises(mn.ForbiddenError):
        mn.get_dict(fresh_name, app="alpha")["secret"] = "overwritten by beta"
    # beta's own dict of the same name is a different dict.
    assert mn.get_dict(fresh_name).get("secret") is None
    as_app("alpha")
    assert mn.get_dict(fresh_name)["secret"] == "alpha's"


def test_the_owners_api_key_may_use_any_of_its_apps(
    as_app, fresh_name: str, dict_plane: DictPlane
) -> None:
    mn.get_dict(fresh_name)["k"] = "from alpha's VM"
    as_app("alpha", token=dict_plane.key)
    assert mn.get_dict(fresh_name, app="alpha")["k"] == "from alpha's VM"
    with pytest.raises(mn.NotFoundError, match="no app named 'nope'"):
        mn.get_dict(fresh_name, app="nope")["k"]


def test_vended_credentials_are_scoped_by_a_session_policy(dict_plane: DictPlane) -> None:
    token = dict_plane.agent_tokens["beta"]
    with httpx.Client(base_url=dict_plane.url + "/v1") as http:
        denied = http.post(
            "/apps/alpha/dict-credentials", headers={"Authorization": f"Bearer {token}"}
        )
        reply = http.post(
            "/apps/beta/dict-credentials", headers={"Authorization": f"Bearer {token}"}
        )
    assert denied.status_code == 403 and denied.json()["code"] == "forbidden"
    creds = mn.wire.DictCredentials.model_validate(reply.json())
    assert creds.key_prefix == "beta#" and creds.object_prefix == "beta/"
    assert creds.endpoint_url == dict_plane.aws_endpoint
    assert creds.session_token and creds.table == dict_plane.settings.dict_table

    resources = dict_plane.app.state.dict_storage.ready()
    items, objects = session_policy("beta", resources)["Statement"]
    assert items["Resource"] == resources.table_arn
    assert items["Condition"] == {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["beta#*"]}}
    # Scan would slip past a LeadingKeys condition; it must not be granted.
    assert all("Scan" not in action for action in items["Action"])
    assert objects["Resource"] == f"arn:aws:s3:::{resources.bucket}/beta/*"
    assert set(objects["Action"]) == {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"}


def test_credentials_are_refreshed_five_minutes_before_they_expire(as_app, fresh_name) -> None:
    from datetime import datetime, timezone

    fetched = []

    def fetch() -> mn.wire.DictCredentials:
        # Each fetch lives one hour on the test's clock.
        expires = datetime.fromtimestamp(3600.0 * (len(fetched) + 1), tz=timezone.utc)
        creds = get_client().dict_credentials("alpha").model_copy(update={"expiration": expires})
        fetched.append(creds)
        return creds

    now = [0.0]
    store = DictStore("alpha", fetch, clock=lambda: now[0])
    d = mn.get_dict(fresh_name)
    d._store = store
    d["k"] = 1
    assert len(fetched) == 1
    now[0] = 3600 - 301
    assert d["k"] == 1 and len(fetched) == 1
    now[0] = 3600 - 299
    assert d["k"] == 1 and len(fetched) == 2
    assert d["k"] == 1 and len(fetched) == 2
    assert store.credentials is fetched[1]


def test_deleting_an_apps_dicts_removes_items_and_s3_values(
    as_app, fresh_name: str, dict_plane: DictPlane
) -> None:
    as_app("gamma")
    big = b"y" * 400_000
    mn.get_dict(fresh_name).update({"a": 1, "b": big})
    mn.get_dict(fresh_name + "-2")["c"] = "x"
    as_app("alpha")
    mn.get_dict(fresh_name)["kept"] = "alpha's"
    as_app("gamma", token=dict_plane.key)
    gone = get_client().delete_dicts("gamma")
    assert gone.dicts == sorted([fresh_name, fresh_name + "-2"])
    assert gone.items == 3 and gone.objects == 1
    assert len(mn.get_dict(fresh_name, app="gamma")) == 0
    from multinode.dicts import list_dicts

    assert list_dicts("gamma") == []
    assert mn.get_dict(fresh_name, app="alpha")["kept"] == "alpha's"


class _FakeDynamoDB:
    """Throttling and unprocessed items on demand: the emulator never produces them."""

    def __init__(self, failures: list[str], unprocessed: int = 0) -> None:
        self.failures = failures
        self.unprocessed = unprocessed
        self.calls = 0

    def put_item(self, **kwargs: object) -> dict:
        self.calls += 1
        if self.failures:
            code = self.failures.pop(0)
            raise ClientError({"Error": {"Code": code, "Message": code}}, "PutItem")
        return {}

    def batch_write_item(self, RequestItems: dict) -> dict:  # noqa: N803 - boto3's name
        self.calls += 1
        if self.unprocessed:
            self.unprocessed -= 1
            return {"UnprocessedItems": RequestItems}
        return {"UnprocessedItems": {}}


def _store_with(fake: _FakeDynamoDB, dict_plane: DictPlane, monkeypatch) -> DictStore:
    for name, value in dict_plane.env(dict_plane.agent_tokens["alpha"]).items():
        monkeypatch.setenv(name, value)
    store = DictStore("alpha", lambda: get_client().dict_credentials("alpha"))
    store.credentials  # noqa: B018 - real credentials; then swap in the fake client
    store._clients = (fake, fake)
    return store


def test_throttling_is_retried_with_backoff(dict_plane: DictPlane, monkeypatch) -> None:
    fake = _FakeDynamoDB(["ProvisionedThroughputExceededException", "ThrottlingException"])
    store = _store_with(fake, dict_plane, monkeypatch)
    assert store.call("dynamodb", "put_item", Item={}) == {}
    assert fake.calls == 3


def test_throttling_retries_are_bounded(dict_plane: DictPlane, monkeypatch) -> None:
    fake = _FakeDynamoDB(["ThrottlingException"] * 10_000)
    store = _store_with(fake, dict_plane, monkeypatch)
    monkeypatch.setattr("multinode._dict_store.RETRY_FOR_S", 0.3)
    with pytest.raises(mn.InfrastructureError, match="ThrottlingException"):
        store.call("dynamodb", "put_item", Item={})
    assert RETRY_FOR_S == 20.0 and 2 <= fake.calls < 10_000


def test_a_lost_conditional_write_is_never_retried(dict_plane: DictPlane, monkeypatch) -> None:
    fake = _FakeDynamoDB(["ConditionalCheckFailedException"])
    store = _store_with(fake, dict_plane, monkeypatch)
    with pytest.raises(ClientError):
        store.call("dynamodb", "put_item", Item={})
    assert fake.calls == 1


def test_unprocessed_batch_items_are_sent_again(dict_plane: DictPlane, monkeypatch) -> None:
    fake = _FakeDynamoDB([], unprocessed=2)
    store = _store_with(fake, dict_plane, monkeypatch)
    store.batch_write([{"PutRequest": {"Item": {}}}] * 10)
    assert fake.calls == 3
