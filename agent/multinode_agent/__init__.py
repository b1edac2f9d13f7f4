"""The on-VM runner: register with the control plane, poll for work, run it, report.

This package is imported by every worker process, so it stays free of heavy imports:
the agent itself lives in :mod:`multinode_agent.agent`, the worker side in
:mod:`multinode_agent.worker` (agent half) and :mod:`multinode_agent.runtime` (the code
that runs inside a worker process).
"""

__version__ = "0.1.0"
