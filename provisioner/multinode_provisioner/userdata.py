"""The user-data script that turns a fresh VM into a Multinode agent.

The same script boots a real EC2 instance (cloud-init runs it as root) and a local-cloud
VM (the VM runner runs it as a plain process with the project's Python first on ``PATH``
and ``MN_PYTHON`` set). Its format is versioned by the ``FORMAT_LINE`` comment so that a
reader can tell which contract a stored script follows.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping

from multinode.errors import InvalidRequestError

FORMAT = 1
FORMAT_LINE = f"# multinode-agent user-data format {FORMAT}"

# EC2 refuses user-data above 16 KiB before base64 encoding.
# https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/user-data.html
MAX_BYTES = 16 * 1024

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED = frozenset({"MN_AGENT_URL", "MN_AGENT_BOOTSTRAP_TOKEN", "MN_PYTHON"})


def render(
    *,
    control_plane_url: str,
    bootstrap_token: str,
    install_command: str | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> str:
    """Render the bash user-data for one instance.

    The script exports ``MN_AGENT_URL`` and ``MN_AGENT_BOOTSTRAP_TOKEN`` and then
    ``extra_env``, every value shell-quoted; runs ``install_command`` if given (verbatim:
    it is operator configuration, not user input); and finally replaces itself with
    ``"${MN_PYTHON:-python3}" -m multinode_agent``. ``set -euo pipefail`` makes a failed
    install end the script, which on EC2 (shutdown behaviour "terminate") and on the
    local cloud ends the instance instead of leaving it idle and billed.

    Raises:
        InvalidRequestError: an ``extra_env`` name is not a shell identifier or would
            override one of the variables set here, or the script exceeds EC2's 16 KiB.
    """
    env = dict(extra_env or {})
    for name in env:
        if not _ENV_NAME.match(name):
            raise InvalidRequestError(
                f"environment variable name {name!r} is not a valid shell identifier",
                details={"name": name},
            )
        if name in _RESERVED:
            raise InvalidRequestError(
                f"environment variable {name!r} is set by the user-data itself and cannot be overridden",
                details={"name": name},
            )
    lines = [
        "#!/bin/bash",
        FORMAT_LINE,
        "set -euo pipefail",
        f"export MN_AGENT_URL={shlex.quote(control_plane_url)}",
        f"export MN_AGENT_BOOTSTRAP_TOKEN={shlex.quote(bootstrap_token)}",
    ]
    lines += [f"export {name}={shlex.quote(str(value))}" for name, value in sorted(env.items())]
    if install_command and install_command.strip():
        lines.append(install_command.strip())
    lines.append('exec "${MN_PYTHON:-python3}" -m multinode_agent')
    script = "\n".join(lines) + "\n"
    size = len(script.encode("utf-8"))
    if size > MAX_BYTES:
        raise InvalidRequestError(
            f"user-data is {size} bytes, over EC2's limit of {MAX_BYTES}; trim extra_env or the install command",
            details={"size": size, "limit": MAX_BYTES},
        )
    return script
