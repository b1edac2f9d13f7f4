"""Create what Multinode expects in LocalStack: the dict bucket, table and role.

LocalStack runs this file (it runs every ``*.py`` in ``ready.d`` with its own Python, in
its own process) once its services are ready, both in the Docker image and when the
launcher (`mn localstack up`) runs it without Docker. Every step is idempotent. The names
follow the control plane's settings (``MN_SERVER_DICT_TABLE``, ``MN_SERVER_DICT_BUCKET``,
``MN_SERVER_DICT_ROLE_NAME``) and their defaults. The control plane creates whatever is
still missing at startup, so these hooks matter when it may not
(``MN_SERVER_DICT_CREATE_RESOURCES=false``, as in production).

The table is skipped when ``MN_LOCALSTACK_SKIP_DYNAMODB`` is set: the launcher sets it,
because LocalStack without Docker has no DynamoDB and the local cloud routes DynamoDB to
its embedded emulator.
"""

import json
import logging
import os

import boto3
from botocore.exceptions import ClientError
from localstack import config

log = logging.getLogger("multinode.init")
ACCOUNT = "000000000000"  # LocalStack's default account (for the dummy key "test")
TABLE = os.environ.get("MN_SERVER_DICT_TABLE", "multinode-dicts")
BUCKET = os.environ.get("MN_SERVER_DICT_BUCKET", "multinode-dicts")
ROLE = os.environ.get("MN_SERVER_DICT_ROLE_NAME", "multinode-dicts")
ITEM_ACTIONS = [
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:BatchGetItem",
    "dynamodb:BatchWriteItem",
    "dynamodb:Query",
    "dynamodb:ConditionCheckItem",
]
OBJECT_ACTIONS = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]

session = boto3.session.Session(
    aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
)
endpoint = config.internal_service_url(host="127.0.0.1")


def client(service):
    return session.client(service, endpoint_url=endpoint)


def ensure_bucket():
    s3 = client("s3")
    try:
        s3.head_bucket(Bucket=BUCKET)
    except ClientError:
        s3.create_bucket(Bucket=BUCKET)
        log.info("created S3 bucket %s", BUCKET)


def ensure_table():
    dynamodb = client("dynamodb")
    try:
        dynamodb.describe_table(TableName=TABLE)
        return
    except dynamodb.exceptions.ResourceNotFoundException:
        pass
    dynamodb.create_table(
        TableName=TABLE,
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
    log.info("created DynamoDB table %s", TABLE)


def ensure_role():
    iam = client("iam")
    try:
        iam.get_role(RoleName=ROLE)
        return
    except iam.exceptions.NoSuchEntityException:
        pass
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    # The role may touch the whole table and bucket; each session the control plane vends
    # is narrowed to one app by its session policy.
    permissions = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ITEM_ACTIONS,
                "Resource": f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/{TABLE}",
            },
            {
                "Effect": "Allow",
                "Action": OBJECT_ACTIONS,
                "Resource": f"arn:aws:s3:::{BUCKET}/*",
            },
        ],
    }
    iam.create_role(RoleName=ROLE, AssumeRolePolicyDocument=json.dumps(trust))
    iam.put_role_policy(
        RoleName=ROLE, PolicyName="multinode-dicts", PolicyDocument=json.dumps(permissions)
    )
    log.info("created IAM role %s", ROLE)


ensure_bucket()
ensure_role()
if not os.environ.get("MN_LOCALSTACK_SKIP_DYNAMODB"):
    ensure_table()
