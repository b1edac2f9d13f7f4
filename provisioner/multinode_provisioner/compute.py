"""The compute interface: what the control plane may ask of a cloud.

The control plane's provisioner loop talks only to :class:`Compute`. The EC2
implementation (:mod:`multinode_provisioner.aws`) serves real AWS, LocalStack and the local
cloud's emulator alike (boto3 honours ``AWS_ENDPOINT_URL``); a fake for capacity errors and
throttling implements the same class.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from multinode import wire
from multinode.errors import MultinodeError

# Tags every instance of ours carries. `mn:cluster` scopes one control plane's instances
# (several installs may share an account); the reconciler only ever touches those.
TAG_CLUSTER = "mn:cluster"
TAG_APP = "mn:app"
TAG_INSTANCE = "mn:instance"  # the control plane's own instance id
TAG_LAUNCHED_FOR = "mn:launched-for"  # function whose demand launched it
TAG_LAUNCH_TOKEN = "mn:launch-token"


class ComputeError(MultinodeError):
    """Base of the errors a :class:`Compute` raises."""

    code = "compute"
    status = 503


class CapacityError(ComputeError):
    """The cloud has no capacity for this instance type now. Never retried in place:
    the caller moves on to the next offer."""

    code = "capacity"


class TransientCloudError(ComputeError):
    """A retryable failure (throttling, 5xx) that outlived the retry budget."""

    code = "cloud_transient"


class CloudConfigError(ComputeError):
    """The request can never succeed as configured (bad AMI, missing permission,
    unknown instance type). Not retried."""

    code = "cloud_config"
    status = 500


@dataclass(frozen=True)
class LaunchRequest:
    """Everything needed to launch one instance.

    ``launch_token`` makes the launch idempotent: launching twice with the same token
    returns the same instance (used as EC2 ``ClientToken`` and as a tag, since not every
    emulator honours ``ClientToken``).
    """

    instance_type: str
    launch_token: str
    user_data: str
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CloudInstance:
    """An instance as the cloud reports it."""

    cloud_id: str
    instance_type: str
    state: str  # EC2 state name: pending, running, shutting-down, terminated, stopping, stopped
    tags: Mapping[str, str]
    private_ip: str | None = None


class Compute(abc.ABC):
    """A cloud that can launch, list and terminate instances.

    Implementations retry transient errors themselves (bounded in time) and raise
    :class:`CapacityError`, :class:`CloudConfigError` or :class:`TransientCloudError`.
    No method is called inside a database transaction.
    """

    @abc.abstractmethod
    def launch(self, request: LaunchRequest) -> CloudInstance:
        """Launch one instance, or return the one already launched with the same token.

        Raises:
            CapacityError: no capacity for ``request.instance_type`` now.
            CloudConfigError: the request can never succeed as configured.
            TransientCloudError: transient failures outlasted the retry budget.
        """

    @abc.abstractmethod
    def terminate(self, cloud_ids: Sequence[str]) -> None:
        """Terminate these instances. Unknown or already terminated ids are a no-op."""

    @abc.abstractmethod
    def list_instances(self) -> list[CloudInstance]:
        """All instances of this cluster that are not yet terminated."""

    def check(self) -> wire.AwsCheck:
        """What keeps this compute from launching as configured, every item at once.

        Never raises for what the cloud answers: each problem is an entry of the result.
        The default checks nothing.
        """
        return wire.AwsCheck(status="ok")
