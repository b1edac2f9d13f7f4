"""Multinode's control plane: stores deployments, queues calls, hands them to agents and
launches and terminates the instances they run on. It never unpickles user data."""

__version__ = "0.1.0"
