"""``python -m multinode_agent``: read ``MN_AGENT_*`` settings from the environment and run.

Exits 0 once the agent has stopped its workers (and run the shutdown command, if any),
2 when the settings are missing or invalid.
"""

from __future__ import annotations

import logging
import signal
import sys


def main() -> int:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s multinode-agent %(levelname)s %(message)s",
    )
    # Imported here, not at module level: worker processes never need these.
    from pydantic import ValidationError

    from multinode_agent.agent import Agent
    from multinode_agent.settings import AgentSettings

    try:
        settings = AgentSettings()
    except ValidationError as exc:
        logging.getLogger("multinode_agent").error(
            "invalid agent settings (set MN_AGENT_URL and MN_AGENT_BOOTSTRAP_TOKEN): %s", exc
        )
        return 2
    agent = Agent(settings)

    def on_signal(signum: int, _frame: object) -> None:
        logging.getLogger("multinode_agent").info("received %s", signal.Signals(signum).name)
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    reason = agent.run()
    logging.getLogger("multinode_agent").info("agent exited (%s)", reason.value)
    return 0


if __name__ == "__main__":
    sys.exit(main())
