"""Vending short-lived AWS credentials for one app's dicts.

The control plane assumes the dict role with an inline *session policy*: the credentials
it hands out can do no more than both the role and that policy allow
(https://docs.aws.amazon.com/IAM/latest/UserGuide/access_policies.html#policies_session).
The policy confines them to items whose partition key starts with ``<app>#``
(``dynamodb:LeadingKeys``) and to S3 objects under ``<bucket>/<app>/``; the session is
also tagged ``mn:app=<app>``, which the dict role's own policy (infra/multinode.yaml, or
the role ``dict_storage`` creates) uses to draw the same bounds. Scan is not
granted: ``ForAllValues`` is vacuously true for requests without leading keys, so only
key-addressed actions may appear in the statement.
"""

from __future__ import annotations

import json
from typing import Any

from multinode import wire
from multinode.errors import InfrastructureError
from multinode_controlplane.services.auth import Principal, resolve_app
from multinode_controlplane.services.context import Context
from multinode_controlplane.services.dict_storage import (
    DYNAMODB_ITEM_ACTIONS,
    S3_OBJECT_ACTIONS,
    DictResources,
    DictStorage,
    key_prefix,
    object_prefix,
    session_tags,
)


def vend(
    ctx: Context, storage: DictStorage, principal: Principal, app_name: str
) -> wire.DictCredentials:
    """Credentials for ``app_name``'s dicts, for a caller allowed to act on that app.

    Raises:
        ForbiddenError: an agent token of another app asked.
        NotFoundError: the caller's owner has no such app.
        InfrastructureError: the dict storage or STS is not available.
    """
    with ctx.db.read() as session:
        app = resolve_app(session, principal, app_name)
        name = app.name
    resources = storage.ready()
    policy = session_policy(name, resources)
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        reply = storage.client("sts").assume_role(
            RoleArn=resources.role_arn,
            RoleSessionName=session_name(name),
            Policy=json.dumps(policy, separators=(",", ":")),
            DurationSeconds=ctx.settings.dict_credentials_ttl_s,
            Tags=session_tags(name),
        )
    except (BotoCoreError, ClientError) as exc:
        raise InfrastructureError(
            f"could not vend dict credentials for app {name!r}: {exc}", details={"app": name}
        ) from exc
    creds = reply["Credentials"]
    return wire.DictCredentials(
        access_key_id=creds["AccessKeyId"],
        secret_access_key=creds["SecretAccessKey"],
        session_token=creds["SessionToken"],
        expiration=creds["Expiration"],
        region=resources.region,
        table=resources.table,
        bucket=resources.bucket,
        key_prefix=key_prefix(name),
        object_prefix=object_prefix(name),
        endpoint_url=ctx.settings.dict_endpoint_url,
        dynamodb_endpoint_url=ctx.settings.dict_dynamodb_endpoint_url,
    )


def session_policy(app: str, resources: DictResources) -> dict[str, Any]:
    """The session policy confining credentials to ``app``'s items and objects."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "OwnDictItems",
                "Effect": "Allow",
                "Action": list(DYNAMODB_ITEM_ACTIONS),
                "Resource": resources.table_arn,
                "Condition": {
                    "ForAllValues:StringLike": {"dynamodb:LeadingKeys": [key_prefix(app) + "*"]}
                },
            },
            {
                "Sid": "OwnLargeValues",
                "Effect": "Allow",
                "Action": list(S3_OBJECT_ACTIONS),
                "Resource": f"arn:aws:s3:::{resources.bucket}/{object_prefix(app)}*",
            },
        ],
    }


def session_name(app: str) -> str:
    """The role session name (shows in CloudTrail): ``mn-dict-<app>``, at most 64 chars."""
    return ("mn-dict-" + app)[:64]
