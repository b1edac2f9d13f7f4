"""The local cloud's AWS emulator applies DynamoDB requests atomically, as DynamoDB does."""

from __future__ import annotations

import threading
import uuid

import boto3


def test_concurrent_adds_to_one_counter_are_all_applied(aws_endpoint: str) -> None:
    client = boto3.client("dynamodb", endpoint_url=aws_endpoint, region_name="us-east-1")
    table = "emulator-" + uuid.uuid4().hex[:8]
    client.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    threads, adds = 8, 50
    barrier = threading.Barrier(threads)

    def add() -> None:
        own = boto3.client("dynamodb", endpoint_url=aws_endpoint, region_name="us-east-1")
        barrier.wait(timeout=30)
        for _ in range(adds):
            own.update_item(
                TableName=table,
                Key={"pk": {"S": "counter"}},
                UpdateExpression="ADD v :one",
                ExpressionAttributeValues={":one": {"N": "1"}},
            )

    workers = [threading.Thread(target=add) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    item = client.get_item(TableName=table, Key={"pk": {"S": "counter"}}, ConsistentRead=True)
    assert int(item["Item"]["v"]["N"]) == threads * adds
