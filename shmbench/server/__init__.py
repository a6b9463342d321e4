"""The container side: ``python -m shmbench.server`` serves one worker's env(s) on a channel.

:mod:`~shmbench.server.core` is the server (handshake, the single env's hot path, the slow
path); :mod:`~shmbench.server.vector` its vector rows. Only numpy, gymnasium, msgpack and
shmbench itself are imported here, so a container image needs nothing else.
"""

from shmbench.server.core import RemoteEnvironmentServer, main

__all__ = ["RemoteEnvironmentServer", "main"]
