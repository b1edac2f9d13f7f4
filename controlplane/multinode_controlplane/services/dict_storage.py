"""The AWS resources behind ``mn.get_dict``: one table, one bucket, one role.

The control plane never reads or writes dict values (processes do, with credentials from
``services.dict_credentials``); it makes sure the resources exist and deletes an app's
data when asked. boto3 honours ``AWS_ENDPOINT_URL``, so the same code serves AWS,
LocalStack and the local cloud's emulator. Item layout: ``multinode._dict_codec``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from multinode import wire
from multinode._aws_check import DENIED_CODES, Checklist, error_code
from multinode.errors import InfrastructureError
from multinode_controlplane.settings import ServerSettings

log = logging.getLogger(__name__)

# The partition key of every item of app A starts with KEY_SEPARATOR-terminated "A#"; app
# names cannot contain "#", so no app's prefix is a prefix of another app's keys.
KEY_SEPARATOR = "#"
REGISTRY_TAG = "d:"  # sort keys of the registry items in partition "<app>#"
DYNAMODB_ITEM_ACTIONS = (
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:BatchGetItem",
    "dynamodb:BatchWriteItem",
    "dynamodb:Query",
    "dynamodb:ConditionCheckItem",
)
S3_OBJECT_ACTIONS = ("s3:GetObject", "s3:PutObject", "s3:DeleteObject")
# Every vended session carries this session tag with its app's name; the dict role's own
# policy confines a session to ${aws:PrincipalTag/mn:app}'s keys and objects, so IAM
# enforces the app's prefix even apart from the session policy.
SESSION_TAG = "mn:app"
CHECK_SESSION = "mn-startup-check"


def session_tags(app: str) -> list[dict[str, str]]:
    """The ``Tags`` of an ``AssumeRole`` made for ``app``'s dicts."""
    return [{"Key": SESSION_TAG, "Value": app}]


def key_prefix(app: str) -> str:
    """Every partition key of ``app``'s dicts starts with this."""
    return app + KEY_SEPARATOR


def object_prefix(app: str) -> str:
    """Every S3 object key of ``app``'s large values starts with this."""
    return app + "/"


@dataclass(frozen=True)
class DictResources:
    """Where dicts live, once the resources are known to exist."""

    table: str
    table_arn: str
    bucket: str
    role_arn: str
    region: str
    account: str


class DictStorage:
    """Ensures the dict resources exist (once, lazily) and deletes apps' data.

    Thread-safe; one per control plane, kept on ``app.state.dict_storage``.
    """

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._ready: DictResources | None = None
        self._clients: dict[str, Any] = {}
        self._check_clients: dict[str, Any] = {}

    def client(self, service: str) -> Any:
        """A boto3 client of the control plane's own credentials (made once per service)."""
        if service not in self._clients:
            import boto3
            from botocore.config import Config

            session = boto3.session.Session()
            region = self.settings.dict_region or session.region_name or "us-east-1"
            self._clients[service] = session.client(
                service, region_name=region, config=Config(retries={"mode": "standard"})
            )
        return self._clients[service]

    def ready(self) -> DictResources:
        """The resources, checked (and created if missing and allowed) on first call.

        Raises:
            InfrastructureError: a resource is missing and may not be created, or AWS
                refused; the message names it. The next call tries again.
        """
        if self._ready is None:
            with self._lock:
                if self._ready is None:
                    self._ready = self._ensure()
        return self._ready

    def prepare_quietly(self) -> None:
        """:meth:`ready` for startup: a failure is logged, and retried at first use."""
        try:
            resources = self.ready()
            log.info("dict storage ready: table %s, bucket %s", resources.table, resources.bucket)
        except Exception as exc:  # startup must not fail on AWS; the first request retries
            log.warning("dict storage not ready yet (retried at first use): %s", exc)

    # ---------------------------------------------------------------- checking

    def check(self) -> wire.AwsCheck:
        """Whether the table, bucket and role exist and the role may be assumed.

        Every item is checked, whatever the others answer. A resource that is missing but
        would be created at first use (``dict_create_resources``) is not a problem. The
        clients used time out within seconds, so an unreachable endpoint is reported
        rather than waited on.
        """
        s = self.settings
        checks = Checklist()
        identity: dict[str, str] = {}
        checks.run("AWS credentials", None, lambda: self._check_identity(identity))
        checks.run("dict table", "MN_SERVER_DICT_TABLE", self._check_table)
        checks.run("dict bucket", "MN_SERVER_DICT_BUCKET", self._check_bucket)
        setting = "MN_SERVER_DICT_ROLE_ARN" if s.dict_role_arn else "MN_SERVER_DICT_ROLE_NAME"
        checks.run("dict role", setting, lambda: self._check_role(identity))
        return checks.result()

    def _checking_client(self, service: str) -> Any:
        """A client of short timeouts, one per service, all of one boto3 session (making a
        session costs more than the check's requests)."""
        if service not in self._check_clients:
            import boto3
            from botocore.config import Config

            session = self._check_clients.setdefault("session", boto3.session.Session())
            region = self.settings.dict_region or session.region_name or "us-east-1"
            config = Config(
                retries={"mode": "standard", "max_attempts": 2}, connect_timeout=3, read_timeout=10
            )
            self._check_clients[service] = session.client(
                service, region_name=region, config=config
            )
        return self._check_clients[service]

    def _check_identity(self, identity: dict[str, str]) -> str | None:
        identity.update(self._checking_client("sts").get_caller_identity())
        return None

    def _check_table(self) -> str | None:
        dynamodb = self._checking_client("dynamodb")
        table = self.settings.dict_table
        try:
            described = dynamodb.describe_table(TableName=table)["Table"]
        except Exception as exc:
            if error_code(exc) != "ResourceNotFoundException":
                raise
            return self._missing(f"DynamoDB table {table} does not exist in {_region(dynamodb)}")
        keys = {k["AttributeName"]: k["KeyType"] for k in described.get("KeySchema", [])}
        if keys != {"pk": "HASH", "sk": "RANGE"}:
            return (
                f"DynamoDB table {table} has the keys {keys}; dicts need pk (HASH) and sk (RANGE)"
            )
        return None

    def _check_bucket(self) -> str | None:
        s3 = self._checking_client("s3")
        bucket = self.settings.dict_bucket
        try:
            s3.head_bucket(Bucket=bucket)
        except Exception as exc:
            if error_code(exc) not in ("404", "NoSuchBucket"):
                raise
            return self._missing(f"S3 bucket {bucket} does not exist")
        return None

    def _check_role(self, identity: dict[str, str]) -> str | None:
        s = self.settings
        arn = s.dict_role_arn
        name = arn.rsplit("/", 1)[-1] if arn else s.dict_role_name
        account = arn.split(":")[4] if arn and arn.count(":") >= 5 else identity.get("Account")
        if account and account == identity.get("Account"):
            # AssumeRole alone does not say "no such role" on every endpoint: ask IAM first.
            try:
                arn = self._checking_client("iam").get_role(RoleName=name)["Role"]["Arn"]
            except Exception as exc:
                code = error_code(exc)
                if code == "NoSuchEntity":
                    if not s.dict_role_arn:
                        return self._missing(f"IAM role {name} does not exist")
                    return f"IAM role {name} does not exist; fix MN_SERVER_DICT_ROLE_ARN"
                if code not in DENIED_CODES:
                    raise
        if not arn:
            return None  # unknown account, role by name: created or found at first use
        try:
            self._checking_client("sts").assume_role(
                RoleArn=arn,
                RoleSessionName=CHECK_SESSION,
                DurationSeconds=900,
                Tags=session_tags(CHECK_SESSION),
            )
        except Exception as exc:
            if error_code(exc) not in DENIED_CODES:
                raise
            caller = identity.get("Arn", "the control plane")
            return (
                f"{caller} may not assume {arn}: the role's trust policy must allow it "
                "sts:AssumeRole and sts:TagSession, and its own policy must too"
            )
        return None

    def _missing(self, what: str) -> str | None:
        if self.settings.dict_create_resources:
            return None  # created at first use
        return (
            f"{what}; create it (infra/multinode.yaml does) or set "
            "MN_SERVER_DICT_CREATE_RESOURCES=true"
        )

    # ---------------------------------------------------------------- deleting

    def delete_app_data(self, app: str) -> tuple[list[str], int, int]:
        """Delete every dict of ``app`` and every S3 object under its prefix.

        Returns:
            (dict names, items deleted, S3 objects deleted).
        """
        resources = self.ready()
        registry = list(self._query(resources.table, key_prefix(app), projection="pk, sk"))
        names = sorted(item["sk"]["S"][len(REGISTRY_TAG) :] for item in registry)
        deleted = 0
        for name in names:
            keys = [
                {"pk": item["pk"], "sk": item["sk"]}
                for item in self._query(resources.table, key_prefix(app) + name, "pk, sk")
            ]
            self._delete_keys(resources.table, keys)
            deleted += len(keys)
        self._delete_keys(
            resources.table, [{"pk": item["pk"], "sk": item["sk"]} for item in registry]
        )
        objects = 0
        s3 = self.client("s3")
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=resources.bucket, Prefix=object_prefix(app)
        ):
            batch = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if batch:
                s3.delete_objects(Bucket=resources.bucket, Delete={"Objects": batch, "Quiet": True})
                objects += len(batch)
        return names, deleted, objects

    def _query(self, table: str, pk: str, projection: str) -> Iterator[dict[str, Any]]:
        paginator = self.client("dynamodb").get_paginator("query")
        for page in paginator.paginate(
            TableName=table,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": pk}},
            ProjectionExpression=projection,
            ConsistentRead=True,
        ):
            yield from page.get("Items", [])

    def _delete_keys(self, table: str, keys: list[dict[str, Any]]) -> None:
        dynamodb = self.client("dynamodb")
        for start in range(0, len(keys), 25):
            pending: dict[str, Any] = {
                table: [{"DeleteRequest": {"Key": key}} for key in keys[start : start + 25]]
            }
            for attempt in range(50):
                pending = dynamodb.batch_write_item(RequestItems=pending).get("UnprocessedItems")
                if not pending:
                    break
                time.sleep(min(1.0, 0.02 * 2**attempt))  # backoff: the table is at capacity
            else:
                raise InfrastructureError("DynamoDB kept items unprocessed while deleting dicts")

    # ---------------------------------------------------------------- ensuring

    def _ensure(self) -> DictResources:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            account = self.client("sts").get_caller_identity()["Account"]
            table_arn = self._ensure_table()
            self._ensure_bucket()
            role_arn = self.settings.dict_role_arn or self._ensure_role(account, table_arn)
        except (BotoCoreError, ClientError) as exc:
            raise InfrastructureError(
                f"the dict storage is not available: {exc}",
                details={"table": self.settings.dict_table, "bucket": self.settings.dict_bucket},
            ) from exc
        return DictResources(
            table=self.settings.dict_table,
            table_arn=table_arn,
            bucket=self.settings.dict_bucket,
            role_arn=role_arn,
            region=self.client("dynamodb").meta.region_name,
            account=account,
        )

    def _ensure_table(self) -> str:
        dynamodb = self.client("dynamodb")
        table = self.settings.dict_table
        try:
            return dynamodb.describe_table(TableName=table)["Table"]["TableArn"]
        except dynamodb.exceptions.ResourceNotFoundException:
            self._refuse_to_create(f"DynamoDB table {table!r}")
        # Another replica may create it first: that is fine.
        with contextlib.suppress(dynamodb.exceptions.ResourceInUseException):
            dynamodb.create_table(
                TableName=table,
                AttributeDefinitions=[
                    {"AttributeName": "pk", "AttributeType": "S"},
                    {"AttributeName": "sk", "AttributeType": "S"},
                ],
                KeySchema=[
                    {"AttributeName": "pk", "KeyType": "HASH"},
                    {"AttributeName": "sk", "KeyType": "RANGE"},
                ],
                BillingMode="PAY_PER_REQUEST",
            )
        dynamodb.get_waiter("table_exists").wait(
            TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
        )
        log.info("created DynamoDB table %s", table)
        return dynamodb.describe_table(TableName=table)["Table"]["TableArn"]

    def _ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        s3 = self.client("s3")
        bucket = self.settings.dict_bucket
        try:
            s3.head_bucket(Bucket=bucket)
            return
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                raise
        self._refuse_to_create(f"S3 bucket {bucket!r}")
        region = s3.meta.region_name
        kwargs: dict[str, Any] = {}
        if region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            s3.create_bucket(Bucket=bucket, **kwargs)
        log.info("created S3 bucket %s", bucket)

    def _ensure_role(self, account: str, table_arn: str) -> str:
        iam = self.client("iam")
        name = self.settings.dict_role_name
        try:
            return iam.get_role(RoleName=name)["Role"]["Arn"]
        except iam.exceptions.NoSuchEntityException:
            self._refuse_to_create(f"IAM role {name!r} (or set MN_SERVER_DICT_ROLE_ARN)")
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
                    "Action": ["sts:AssumeRole", "sts:TagSession"],
                }
            ],
        }
        # Each session reaches only the keys and objects of the app in its session tag; its
        # session policy (services.dict_credentials) narrows it the same way.
        app = "${aws:PrincipalTag/" + SESSION_TAG + "}"
        permissions = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": list(DYNAMODB_ITEM_ACTIONS),
                    "Resource": table_arn,
                    "Condition": {
                        "ForAllValues:StringLike": {"dynamodb:LeadingKeys": [key_prefix(app) + "*"]}
                    },
                },
                {
                    "Effect": "Allow",
                    "Action": list(S3_OBJECT_ACTIONS),
                    "Resource": f"arn:aws:s3:::{self.settings.dict_bucket}/{object_prefix(app)}*",
                },
            ],
        }
        try:
            arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))[
                "Role"
            ]["Arn"]
        except iam.exceptions.EntityAlreadyExistsException:
            return iam.get_role(RoleName=name)["Role"]["Arn"]
        iam.put_role_policy(
            RoleName=name, PolicyName="multinode-dicts", PolicyDocument=json.dumps(permissions)
        )
        log.info("created IAM role %s", name)
        return arn

    def _refuse_to_create(self, what: str) -> None:
        if not self.settings.dict_create_resources:
            raise InfrastructureError(
                f"{what} does not exist and MN_SERVER_DICT_CREATE_RESOURCES is off; "
                "create it or turn the setting on",
                details={"missing": what},
            )


def _region(client: Any) -> str:
    return client.meta.region_name
