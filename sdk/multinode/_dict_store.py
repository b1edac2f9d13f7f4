"""AWS access for one app's dicts: vended credentials, boto3 clients, retries, batches.

Credentials come from the control plane (``POST /v1/apps/{app}/dict-credentials``), are
cached per process and replaced :data:`REFRESH_BEFORE_S` before they expire, so a request
never goes out with credentials about to lapse. botocore's own retries are off
(``total_max_attempts=1``) so the one policy here is the only one:

- throttling and DynamoDB's transient 5xx codes are retried with full-jitter exponential
  backoff, for at most :data:`RETRY_FOR_S` seconds, then :class:`InfrastructureError`;
  those answers mean the request was not applied, so retrying cannot apply it twice;
- a conditional check that fails is an outcome and goes back to the caller unretried;
- expired credentials are replaced once and the request sent again.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from multinode import wire
from multinode.errors import ForbiddenError, InfrastructureError

T = TypeVar("T")
REFRESH_BEFORE_S = 300.0
RETRY_FOR_S = 20.0
WRITE_BATCH = 25  # BatchWriteItem's limit per request
READ_BATCH = 100  # BatchGetItem's limit per request
PARALLELISM = 16
THROTTLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
        "SlowDown",
    }
)
_EXPIRED_CODES = frozenset({"ExpiredTokenException", "ExpiredToken", "RequestExpired"})
_DENIED_CODES = frozenset({"AccessDeniedException", "AccessDenied", "UnrecognizedClientException"})


class DictStore:
    """DynamoDB and S3 clients for one app, with vended, self-refreshing credentials.

    Thread-safe; one per app, process and control plane (:func:`store_for`).
    """

    def __init__(
        self,
        app: str,
        fetch: Callable[[], wire.DictCredentials],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """No request is made until the first operation.

        Args:
            app: the app whose dicts these are.
            fetch: asks the control plane for fresh credentials.
            clock: wall-clock seconds, compared with the credentials' expiration.
        """
        self.app = app
        self._fetch = fetch
        self._clock = clock
        self._lock = threading.Lock()
        self._creds: wire.DictCredentials | None = None
        self._clients: tuple[Any, Any] | None = None
        self._pool: ThreadPoolExecutor | None = None

    # ---------------------------------------------------------------- credentials

    @property
    def credentials(self) -> wire.DictCredentials:
        """Current credentials, fetched or refreshed when within 5 minutes of expiry."""
        creds = self._creds
        if creds is None or self._expiring(creds):
            with self._lock:
                if self._creds is None or self._expiring(self._creds):
                    self._renew()
            creds = self._creds
        assert creds is not None
        return creds

    def dynamodb(self) -> Any:
        self.credentials  # noqa: B018 - refreshes the clients when due
        assert self._clients is not None
        return self._clients[0]

    def s3(self) -> Any:
        self.credentials  # noqa: B018
        assert self._clients is not None
        return self._clients[1]

    def _expiring(self, creds: wire.DictCredentials) -> bool:
        return creds.expiration.timestamp() - self._clock() < REFRESH_BEFORE_S

    def _renew(self, *, failed: wire.DictCredentials | None = None) -> None:
        if failed is not None and self._creds is not failed:
            return  # another thread renewed them already
        import boto3
        from botocore.config import Config

        creds = self._fetch()
        session = boto3.session.Session(
            aws_access_key_id=creds.access_key_id,
            aws_secret_access_key=creds.secret_access_key,
            aws_session_token=creds.session_token,
            region_name=creds.region,
        )
        # Retries are ours (module docstring); the pool allows the batch threads.
        config = Config(
            retries={"mode": "standard", "total_max_attempts": 1},
            max_pool_connections=PARALLELISM * 2,
            connect_timeout=5,
            read_timeout=30,
        )
        dynamodb = session.client(
            "dynamodb",
            endpoint_url=creds.dynamodb_endpoint_url or creds.endpoint_url,
            config=config,
        )
        s3 = session.client("s3", endpoint_url=creds.endpoint_url, config=config)
        self._clients = (dynamodb, s3)
        self._creds = creds

    # ---------------------------------------------------------------- calls

    def call(self, service: str, operation: str, **kwargs: Any) -> Any:
        """``client.<operation>(**kwargs)`` with the retry policy of this module.

        Raises:
            botocore ClientError: any error other than throttling and expired credentials
                (``ConditionalCheckFailedException`` among them: callers decide).
            ForbiddenError: the credentials do not allow this request.
            InfrastructureError: throttled for longer than :data:`RETRY_FOR_S`.
        """
        from botocore.exceptions import ClientError

        try:
            return self._call_once(service, operation, kwargs)
        except ClientError as exc:
            if error_code(exc) not in THROTTLE_CODES:
                raise
        try:
            for attempt in _retrying(ClientError, is_throttle):
                with attempt:
                    return self._call_once(service, operation, kwargs)
        except ClientError as exc:
            if error_code(exc) not in THROTTLE_CODES:
                raise
            raise InfrastructureError(
                f"{service} kept answering {error_code(exc)} to {operation} for "
                f"{RETRY_FOR_S:.0f}s; the table is over its capacity: spread the load or "
                "raise its limits",
                details={"operation": operation, "code": error_code(exc)},
            ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _call_once(self, service: str, operation: str, kwargs: dict[str, Any]) -> Any:
        from botocore.exceptions import ClientError

        creds = self.credentials
        for renewed in (False, True):
            clients = self._clients
            assert clients is not None
            client = clients[0] if service == "dynamodb" else clients[1]
            try:
                return getattr(client, operation)(**kwargs)
            except ClientError as exc:
                code = error_code(exc)
                if code in _EXPIRED_CODES and not renewed:
                    with self._lock:
                        self._renew(failed=creds)
                    creds = self.credentials
                    continue
                if code in _DENIED_CODES:
                    raise ForbiddenError(
                        f"AWS refused {operation} on the dicts of app {self.app!r}: {exc}",
                        details={"app": self.app, "operation": operation, "code": code},
                    ) from exc
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def map(self, func: Callable[[T], Any], chunks: Sequence[T]) -> list[Any]:
        """``func`` over ``chunks`` on the store's threads (inline for a single chunk)."""
        if len(chunks) <= 1:
            return [func(chunk) for chunk in chunks]
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(PARALLELISM, thread_name_prefix="mn-dict")
        return list(self._pool.map(func, chunks))

    # ---------------------------------------------------------------- batches

    def batch_write(self, requests: Sequence[dict[str, Any]]) -> None:
        """Apply ``PutRequest``/``DeleteRequest`` entries, 25 per request, in parallel.

        Unprocessed items are sent again with backoff until none are left or
        :data:`RETRY_FOR_S` has passed (then :class:`InfrastructureError`). Keys must be
        unique within ``requests``.
        """
        table = self.credentials.table
        chunks = [requests[i : i + WRITE_BATCH] for i in range(0, len(requests), WRITE_BATCH)]

        def write(chunk: Sequence[dict[str, Any]]) -> None:
            pending: dict[str, Any] = {table: list(chunk)}
            try:
                for attempt in _retrying(_Unprocessed):
                    with attempt:
                        response = self.call("dynamodb", "batch_write_item", RequestItems=pending)
                        pending = response.get("UnprocessedItems") or {}
                        if pending:
                            raise _Unprocessed
            except _Unprocessed:
                raise _unprocessed_error("batch_write_item") from None

        self.map(write, chunks)

    def batch_get(
        self, keys: Sequence[dict[str, Any]], *, projection: str | None = None
    ) -> list[dict[str, Any]]:
        """The items found for ``keys``, 100 per request, in parallel, strongly consistent.

        Items come back in no particular order; missing keys are simply absent.
        """
        table = self.credentials.table
        chunks = [keys[i : i + READ_BATCH] for i in range(0, len(keys), READ_BATCH)]

        def read(chunk: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
            request: dict[str, Any] = {"Keys": list(chunk), "ConsistentRead": True}
            if projection:
                request["ProjectionExpression"] = projection
            pending: dict[str, Any] = {table: request}
            found: list[dict[str, Any]] = []
            try:
                for attempt in _retrying(_Unprocessed):
                    with attempt:
                        response = self.call("dynamodb", "batch_get_item", RequestItems=pending)
                        found.extend(response.get("Responses", {}).get(table, []))
                        pending = response.get("UnprocessedKeys") or {}
                        if pending:
                            raise _Unprocessed
            except _Unprocessed:
                raise _unprocessed_error("batch_get_item") from None
            return found

        return [item for part in self.map(read, chunks) for item in part]

    def query(
        self, pk: str, *, projection: str | None = None, count: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Every item of partition ``pk`` (strongly consistent), page by page.

        With ``count``, yields one ``{"Count": n}`` per page instead of items.
        """
        request: dict[str, Any] = {
            "TableName": self.credentials.table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": pk}},
            "ConsistentRead": True,
        }
        if count:
            request["Select"] = "COUNT"
        elif projection:
            request["ProjectionExpression"] = projection
        while True:
            page = self.call("dynamodb", "query", **request)
            if count:
                yield {"Count": page.get("Count", 0)}
            else:
                yield from page.get("Items", [])
            last = page.get("LastEvaluatedKey")
            if not last:
                return
            request["ExclusiveStartKey"] = last

    # ---------------------------------------------------------------- S3

    def put_object(self, key: str, data: bytes) -> None:
        self.call("s3", "put_object", Bucket=self.credentials.bucket, Key=key, Body=data)

    def get_object(self, key: str) -> bytes | None:
        """The object's bytes, or None when it no longer exists."""
        from botocore.exceptions import ClientError

        try:
            response = self.call("s3", "get_object", Bucket=self.credentials.bucket, Key=key)
        except ClientError as exc:
            if error_code(exc) in ("NoSuchKey", "404"):
                return None
            raise
        return response["Body"].read()

    def delete_objects(self, keys: Sequence[str]) -> None:
        """Delete S3 objects, one request each in parallel (missing ones are fine)."""
        bucket = self.credentials.bucket
        self.map(lambda key: self.call("s3", "delete_object", Bucket=bucket, Key=key), keys)


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def is_throttle(exc: BaseException) -> bool:
    return error_code(exc) in THROTTLE_CODES


class _Unprocessed(Exception):
    """A batch request left items unprocessed (DynamoDB was at capacity)."""


def _retrying(
    kind: type[BaseException], check: Callable[[BaseException], bool] | None = None
) -> Any:
    """The one retry policy: full-jitter exponential backoff, bounded by RETRY_FOR_S."""
    import tenacity

    predicate = (
        tenacity.retry_if_exception(lambda e: isinstance(e, kind) and check(e))
        if check is not None
        else tenacity.retry_if_exception_type(kind)
    )
    return tenacity.Retrying(
        retry=predicate,
        wait=tenacity.wait_random_exponential(multiplier=0.025, max=1.0),
        stop=tenacity.stop_after_delay(RETRY_FOR_S),
        reraise=True,
    )


def _unprocessed_error(operation: str) -> InfrastructureError:
    return InfrastructureError(
        f"DynamoDB left items unprocessed by {operation} for {RETRY_FOR_S:.0f}s; "
        "the table is over its capacity: spread the load or raise its limits",
        details={"operation": operation},
    )


_stores_lock = threading.Lock()
_stores: dict[tuple[int, str, str | None, str], DictStore] = {}


def store_for(app: str) -> DictStore:
    """The process's store for ``app`` on the configured control plane (made lazily)."""
    from multinode._client import get_client

    client = get_client()
    key = (os.getpid(), client.connection.url, client.connection.api_key, app)
    store = _stores.get(key)
    if store is None:
        with _stores_lock:
            store = _stores.get(key)
            if store is None:
                store = DictStore(app, lambda: client.dict_credentials(app))
                _stores[key] = store
    return store
