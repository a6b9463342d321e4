"""The host's proxies of servers: one server's handle, the env, the vector env, the agent.

Owns: :mod:`~shmbench.host.worker` (one server process and its channel, seen from the
host), :mod:`~shmbench.host.proxy` (the lifecycle every proxy shares),
:mod:`~shmbench.host.env` (``make``), :mod:`~shmbench.host.vector` (``make_vec``) and
:mod:`~shmbench.host.agent` (``RemoteAgent``). Imports wire, transport and runtimes.
"""
