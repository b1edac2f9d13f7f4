"""The EC2 implementation of :class:`~multinode_provisioner.compute.Compute`.

One code path serves real AWS, LocalStack and the local cloud's emulator: boto3 resolves
the endpoint itself (``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_EC2``) unless the settings
name one explicitly.

Retry policy, defined here once:
- botocore's own retries are off (``max_attempts=1``) so the two layers do not multiply;
- transient EC2 codes and connection errors are retried with full-jitter exponential
  backoff until :attr:`AwsSettings.retry_budget_s` is spent, then
  :class:`TransientCloudError` is raised;
- capacity codes raise :class:`CapacityError` at once: the caller moves on to the next
  offer instead of hammering a full AZ;
- everything else that EC2 rejects raises :class:`CloudConfigError`, never retried.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_before_delay,
    wait_random_exponential,
)

from multinode import wire
from multinode_provisioner.compute import (
    TAG_APP,
    TAG_CLUSTER,
    TAG_LAUNCH_TOKEN,
    CapacityError,
    CloudConfigError,
    CloudInstance,
    Compute,
    ComputeError,
    LaunchRequest,
    TransientCloudError,
)
from multinode_provisioner.settings import LOCAL_AMI, AwsSettings

__all__ = ["LOCAL_AMI", "EC2Compute", "classify_error", "make_ec2_client"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html
TRANSIENT_CODES = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "InternalError",
        "ServiceUnavailable",
        "Unavailable",
    }
)
# "Unsupported" is what RunInstances answers when the type is not offered in the chosen
# AZ: for the caller that is the same as no capacity there.
CAPACITY_CODES = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientHostCapacity",
        "InsufficientCapacity",
        "InstanceLimitExceeded",
        "VcpuLimitExceeded",
        "Unsupported",
    }
)
_NOT_FOUND_CODES = frozenset({"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"})

# Every state before "terminated". A shutting-down instance still exists (and still
# bills); the reconciler must see it.
LIVE_STATES = ("pending", "running", "shutting-down", "stopping", "stopped")

# TerminateInstances takes many ids per call; keep each request well inside URL limits.
_TERMINATE_CHUNK = 500


def make_ec2_client(*, region: str | None = None, endpoint_url: str | None = None) -> Any:
    """A boto3 EC2 client with botocore's own retries switched off.

    Args:
        region: region name; ``None`` means boto3's resolution, falling back to us-east-1.
        endpoint_url: explicit endpoint; ``None`` lets boto3 honour ``AWS_ENDPOINT_URL``.
    """
    session = boto3.session.Session()
    config = Config(
        retries={"mode": "standard", "max_attempts": 1}, connect_timeout=5, read_timeout=60
    )
    kwargs: dict[str, Any] = {
        "region_name": region or session.region_name or "us-east-1",
        "config": config,
    }
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
    return session.client("ec2", **kwargs)


def classify_error(exc: BaseException) -> str | None:
    """``"transient"``, ``"capacity"``, ``"config"`` or ``None`` (not an EC2 error).

    Unknown EC2 error codes count as transient when the HTTP status is 5xx and as
    configuration errors otherwise.
    """
    if isinstance(exc, BotoConnectionError | HTTPClientError):
        return "transient"
    if not isinstance(exc, ClientError):
        return None
    code = _code(exc)
    if code in TRANSIENT_CODES:
        return "transient"
    if code in CAPACITY_CODES:
        return "capacity"
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 400)
    return "transient" if isinstance(status, int) and status >= 500 else "config"


class EC2Compute(Compute):
    """EC2 instances of one cluster (the ``mn:cluster`` tag).

    Thread-safe as far as boto3 clients are: methods share one client and keep no state.
    """

    def __init__(
        self,
        settings: AwsSettings,
        *,
        client: Any | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Build the compute.

        Args:
            settings: where and how to launch.
            client: a ready EC2 client (tests pass a stubbed one); by default one is made
                by :func:`make_ec2_client` from the settings.
            sleep: how to wait between retries (tests pass a no-op).
        """
        self.settings = settings
        self.client = client or make_ec2_client(
            region=settings.region, endpoint_url=settings.endpoint_url
        )
        self._sleep = sleep

    # -- Compute ---------------------------------------------------------------------

    def launch(self, request: LaunchRequest) -> CloudInstance:
        """Launch one instance, or return the live one already tagged with this token.

        The token is sent as ``ClientToken`` and also looked up as a tag before every
        attempt, because emulators ignore ``ClientToken`` and a retried ``RunInstances``
        after a lost response must not launch twice.
        """
        params = self.run_params(request)

        def attempt() -> CloudInstance:
            existing = self._find_by_token(request.launch_token)
            if existing is not None:
                return existing
            response = self.client.run_instances(**params)
            return _to_instance(response["Instances"][0])

        return self._call(
            f"launch {request.instance_type}", attempt, instance_type=request.instance_type
        )

    def terminate(self, cloud_ids: Sequence[str]) -> None:
        """Terminate these instances; unknown or already terminated ids are a no-op."""
        ids = sorted({i for i in cloud_ids if i})
        for start in range(0, len(ids), _TERMINATE_CHUNK):
            chunk = ids[start : start + _TERMINATE_CHUNK]
            self._call("terminate instances", functools.partial(self._terminate_chunk, chunk))

    def list_instances(self) -> list[CloudInstance]:
        """All instances tagged with this cluster that are not yet terminated."""
        filters = [
            {"Name": f"tag:{TAG_CLUSTER}", "Values": [self.settings.cluster]},
            {"Name": "instance-state-name", "Values": list(LIVE_STATES)},
        ]
        return self._call("list instances", lambda: self._describe(filters))

    def check(self) -> wire.AwsCheck:
        """The settings' AMI, subnet, groups, profile and template exist, and a dry-run
        launch and listing are allowed (see :func:`multinode_provisioner.aws_check.check_ec2`)."""
        from multinode_provisioner.aws_check import check_ec2

        return check_ec2(self)

    # -- helpers -----------------------------------------------------------------------

    def run_params(self, request: LaunchRequest) -> dict[str, Any]:
        """The ``RunInstances`` arguments of ``request`` (also used for dry-run checks)."""
        s = self.settings
        tags = {**s.extra_tags, **request.tags}
        tags.setdefault("Name", _name(s.cluster, request.tags.get(TAG_APP)))
        tags[TAG_CLUSTER] = s.cluster
        tags[TAG_LAUNCH_TOKEN] = request.launch_token
        tag_list = [{"Key": k, "Value": str(v)} for k, v in tags.items()]
        params: dict[str, Any] = {
            "ImageId": s.ami_id,
            "InstanceType": request.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "ClientToken": request.launch_token,
            "UserData": request.user_data,  # botocore base64-encodes it for RunInstances
            "InstanceInitiatedShutdownBehavior": "terminate",
            # IMDSv2 only: a payload that can be tricked into a GET cannot read the role.
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tag_list},
                {"ResourceType": "volume", "Tags": tag_list},
            ],
        }
        if s.subnet_id:
            params["SubnetId"] = s.subnet_id
        if s.security_group_ids:
            params["SecurityGroupIds"] = list(s.security_group_ids)
        if s.instance_profile_arn:
            params["IamInstanceProfile"] = {"Arn": s.instance_profile_arn}
        if s.launch_template_id:
            params["LaunchTemplate"] = {
                "LaunchTemplateId": s.launch_template_id,
                "Version": s.launch_template_version,
            }
        return params

    def _find_by_token(self, token: str) -> CloudInstance | None:
        filters = [
            {"Name": f"tag:{TAG_LAUNCH_TOKEN}", "Values": [token]},
            {"Name": f"tag:{TAG_CLUSTER}", "Values": [self.settings.cluster]},
            {"Name": "instance-state-name", "Values": list(LIVE_STATES)},
        ]
        found = self._describe(filters)
        # Should an emulator ever have launched twice, always answer with the same one.
        return min(found, key=lambda i: i.cloud_id) if found else None

    def _describe(self, filters: list[dict[str, Any]]) -> list[CloudInstance]:
        paginator = self.client.get_paginator("describe_instances")
        out: list[CloudInstance] = []
        for page in paginator.paginate(Filters=filters):
            for reservation in page.get("Reservations", []):
                out.extend(_to_instance(raw) for raw in reservation.get("Instances", []))
        return out

    def _terminate_chunk(self, ids: list[str]) -> None:
        try:
            self.client.terminate_instances(InstanceIds=ids)
            return
        except ClientError as exc:
            if _code(exc) not in _NOT_FOUND_CODES:
                raise
        # EC2 rejects the whole batch when one id is unknown; its message is not a
        # stable format to parse, so end the known ones one at a time instead.
        for one in ids if len(ids) > 1 else ():
            try:
                self.client.terminate_instances(InstanceIds=[one])
            except ClientError as exc:
                if _code(exc) not in _NOT_FOUND_CODES:
                    raise

    def _call(self, what: str, fn: Callable[[], T], *, instance_type: str | None = None) -> T:
        """Run ``fn`` under the retry policy and translate EC2 errors to ComputeErrors."""
        s = self.settings
        retrying = Retrying(
            retry=retry_if_exception(lambda e: classify_error(e) == "transient"),
            wait=wait_random_exponential(multiplier=s.retry_base_s, max=s.retry_max_backoff_s),
            stop=stop_before_delay(s.retry_budget_s),
            sleep=self._sleep,
            before_sleep=_log_retry(what),
            reraise=True,
        )
        try:
            return retrying(fn)
        except (ClientError, BotoConnectionError, HTTPClientError) as exc:
            raise _translate(exc, what, instance_type) from exc


def _translate(exc: Exception, what: str, instance_type: str | None) -> ComputeError:
    kind = classify_error(exc)
    code = _code(exc) if isinstance(exc, ClientError) else type(exc).__name__
    details: dict[str, Any] = {"aws_code": code}
    if instance_type:
        details["instance_type"] = instance_type
    if kind == "capacity":
        return CapacityError(f"{what}: no capacity now ({code}): {_message(exc)}", details=details)
    if kind == "transient":
        return TransientCloudError(
            f"{what}: EC2 kept failing transiently ({code}) past the retry budget: {_message(exc)}",
            details=details,
        )
    return CloudConfigError(
        f"{what}: EC2 rejected the request ({code}): {_message(exc)}. Check the MN_AWS_* settings "
        "(AMI, subnet, security groups, instance profile) and the credentials' permissions.",
        details=details,
    )


def _log_retry(what: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "%s: transient EC2 error (%s), attempt %d, retrying in %.2fs",
            what,
            exc,
            state.attempt_number,
            wait,
        )

    return before_sleep


def _to_instance(raw: dict[str, Any]) -> CloudInstance:
    return CloudInstance(
        cloud_id=raw["InstanceId"],
        instance_type=raw.get("InstanceType", ""),
        state=raw.get("State", {}).get("Name", "pending"),
        tags=_tag_dict(raw.get("Tags", [])),
        private_ip=raw.get("PrivateIpAddress"),
    )


def _tag_dict(tags: Iterable[dict[str, str]]) -> dict[str, str]:
    return {t["Key"]: t.get("Value", "") for t in tags}


def _name(cluster: str, app: str | None) -> str:
    return f"multinode-{cluster}-{app}" if app else f"multinode-{cluster}"


def _code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def _message(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Message", "")) or str(exc)
    return str(exc)
