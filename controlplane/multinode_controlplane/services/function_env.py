"""What one function's processes get on a VM, read once per function version by an agent:
its variables (``env``, then the keys of the secrets it names) and, when it has
requirements, where to download its environment."""

from __future__ import annotations

from sqlalchemy import select

from multinode import wire
from multinode.errors import NotFoundError
from multinode_controlplane import models as m
from multinode_controlplane.services import environments, secrets
from multinode_controlplane.services.auth import Principal, require_agent
from multinode_controlplane.services.context import Context


def function_env(
    ctx: Context, storage: object, principal: Principal, request: wire.FunctionEnvRequest
) -> wire.FunctionEnv:
    """The setup of one function of the agent's app (a later secret wins on a clash).

    Raises:
        ForbiddenError: the caller is not an agent.
        NotFoundError: no such function in that version, a secret it names was removed,
            or its environment is not ready.
        SecretsUnavailableError: secrets are named but cannot be decrypted here.
    """
    require_agent(principal)
    with ctx.db.read() as session:
        spec_json = session.execute(
            select(m.FunctionRow.spec)
            .join(m.DeploymentRow, m.DeploymentRow.id == m.FunctionRow.deployment_id)
            .where(
                m.DeploymentRow.app_id == principal.app_id,
                m.DeploymentRow.version == request.version,
                m.FunctionRow.name == request.function,
            )
        ).scalar()
        if spec_json is None:
            raise NotFoundError(
                f"no function {request.function!r} in version {request.version} of this app",
                details={"function": request.function, "version": request.version},
            )
        spec = wire.FunctionSpec.model_validate_json(spec_json)
        env = dict(spec.env)
        secret_keys: set[str] = set()
        for name in spec.secrets:
            found = secrets.values(ctx, session, principal.owner, name)
            if found is None:
                raise NotFoundError(
                    f"secret {name!r}, named by function {request.function}, no longer exists; "
                    f"create it again with `mn secret set {name} KEY=VALUE`",
                    details={"secret": name, "function": request.function},
                )
            env.update(found)
            secret_keys.update(found)
    environment = (
        environments.ref(ctx, storage, spec.environment) if spec.environment is not None else None
    )
    return wire.FunctionEnv(env=env, secret_keys=sorted(secret_keys), environment=environment)
