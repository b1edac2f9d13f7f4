"""Helpers of the control-plane tests: a settable clock, a fake cloud, shortcuts."""

from __future__ import annotations

import hashlib
import platform
import threading
from collections.abc import Sequence

from sqlalchemy import select

from multinode import wire
from multinode_controlplane import models as m
from multinode_controlplane.domain.tokens import hash_token, new_token
from multinode_controlplane.services import agents, blobs, calls, deployments
from multinode_controlplane.services.auth import Principal, authenticate
from multinode_controlplane.services.context import Context
from multinode_provisioner.compute import (
    TAG_INSTANCE,
    CapacityError,
    CloudInstance,
    Compute,
    LaunchRequest,
)

T0 = 1_700_000_000.0


class ManualClock:
    """A clock tests move by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


class FakeCompute(Compute):
    """An in-memory cloud that can refuse capacity on demand (the emulator cannot)."""

    def __init__(self, *, no_capacity: Sequence[str] = ()) -> None:
        self.no_capacity = set(no_capacity)
        self.instances: dict[str, CloudInstance] = {}
        self.by_token: dict[str, str] = {}
        self.launches: list[LaunchRequest] = []
        self.terminated: list[str] = []
        self._lock = threading.Lock()

    def launch(self, request: LaunchRequest) -> CloudInstance:
        with self._lock:
            self.launches.append(request)
            if request.instance_type in self.no_capacity:
                raise CapacityError(f"InsufficientInstanceCapacity for {request.instance_type}")
            if request.launch_token in self.by_token:
                return self.instances[self.by_token[request.launch_token]]
            cloud_id = f"i-{len(self.launches):08x}"
            instance = CloudInstance(cloud_id, request.instance_type, "running", dict(request.tags))
            self.instances[cloud_id] = instance
            self.by_token[request.launch_token] = cloud_id
            return instance

    def terminate(self, cloud_ids: Sequence[str]) -> None:
        with self._lock:
            for cloud_id in cloud_ids:
                if self.instances.pop(cloud_id, None) is not None:
                    self.terminated.append(cloud_id)

    def list_instances(self) -> list[CloudInstance]:
        with self._lock:
            return list(self.instances.values())

    def user_data_token(self, cloud_id: str) -> str:
        """The bootstrap token written into the user-data of an instance."""
        request = next(
            r
            for r in self.launches
            if r.tags.get(TAG_INSTANCE) == self.instances[cloud_id].tags[TAG_INSTANCE]
        )
        line = next(x for x in request.user_data.splitlines() if "MN_AGENT_BOOTSTRAP_TOKEN=" in x)
        return line.split("=", 1)[1].strip("'\"")


def upload(ctx: Context, data: bytes = b"function-bytes") -> str:
    sha = hashlib.sha256(data).hexdigest()
    blobs.put_blob(ctx, sha, data)
    return sha


def deploy(
    ctx: Context, principal: Principal, app: str = "demo", **specs: wire.FunctionSpec
) -> wire.DeploymentInfo:
    """Deploy ``app`` with one function per keyword (default: ``f`` with cpu=1)."""
    specs = specs or {"f": wire.FunctionSpec()}
    sha = upload(ctx, f"blob-of-{app}".encode())
    req = wire.DeployRequest(
        functions=[wire.FunctionUpload(name=n, spec=s, blob_hash=sha) for n, s in specs.items()],
        python_version=platform.python_version(),
        cloudpickle_version="3.1.2",
    )
    return deployments.deploy(ctx, principal, app, req)


def submit(
    ctx: Context, principal: Principal, n: int, *, app: str = "demo", function: str = "f"
) -> list[str]:
    created = calls.create_calls(
        ctx,
        principal,
        wire.CallsCreate.model_construct(
            app=app,
            function=function,
            version=None,
            inputs=[b"in-%d" % i for i in range(n)],
            parent_call_id=None,
        ),
    )
    return created.call_ids


def add_instance(ctx: Context, principal: Principal, **kw) -> Principal:  # type: ignore[no-untyped-def]
    """An instance row as the provisioner writes it, registered through the agent protocol;
    returns its agent's principal."""
    return new_agent(ctx, principal, **kw)[0]


def new_agent(
    ctx: Context,
    principal: Principal,
    *,
    app: str = "demo",
    vcpus: float = 2,
    memory_mib: int = 8192,
    launched_for: str = "f",
    cooldown_s: float = 60.0,
    dedicated: bool = False,
) -> tuple[Principal, str]:
    """Like :func:`add_instance`, also returning the agent token."""
    bootstrap = new_token("bootstrap")
    with ctx.db.write() as session:
        app_id = session.execute(select(m.apps.c.id).where(m.apps.c.name == app)).scalar_one()
        count = session.execute(select(m.instances.c.id)).all()
        session.add(
            m.InstanceRow(
                id=f"mi-test{len(count)}",
                app_id=app_id,
                instance_type="test.large",
                vcpus=vcpus,
                memory_mib=memory_mib,
                price_per_hour=0.1,
                launched_for=launched_for,
                dedicated=dedicated,
                launch_token=f"token{len(count)}",
                bootstrap_token_hash=hash_token(bootstrap),
                cooldown_s=cooldown_s,
                launched_at=ctx.clock(),
                state="booting",
            )
        )
    reply = agents.register(
        ctx,
        wire.RegisterRequest(
            bootstrap_token=bootstrap,
            python_version=platform.python_version(),
            cloudpickle_version="3.1.2",
            hostname="vm",
            agent_version="test",
        ),
    )
    return authenticate(ctx, f"Bearer {reply.agent_token}"), reply.agent_token


def call_row(ctx: Context, call_id: str) -> m.CallRow:
    with ctx.db.read() as session:
        return session.get(m.CallRow, call_id)


def result(assignment: wire.Assignment, status: str = "succeeded", **kw) -> wire.AttemptResult:  # type: ignore[no-untyped-def]
    return wire.AttemptResult.model_construct(
        attempt_id=assignment.attempt_id,
        fence=assignment.fence,
        status=status,
        output=kw.pop("output", b"out" if status == "succeeded" else None),
        error=kw.pop("error", None),
        reason=kw.pop("reason", None),
        final=kw.pop("final", False),
    )
