"""RemoteAgent: a baseline agent that lives in its own server (a container, or a process).

An agent with dependencies the trainer's environment must not see can run apart, like an
env: ``python -m shmbench.server`` builds it with :func:`shmbench.agents.make_agent` from a
plain description and answers ``act`` / ``train`` / ``end_episode`` as method calls
(``Opcode.CALL``) through the channel's codec. No slabs: an agent call is one small message
each way, and its arguments (an observation, a reward) are whatever the env returned.

>>> agent = RemoteAgent({"type": "random", "seed": 0}, action_space=env.action_space,
...                     runtime="process")                             # doctest: +SKIP
>>> action = agent.act(state, reward)                                  # doctest: +SKIP
>>> agent.close()                                                      # doctest: +SKIP

The description is data (see :func:`shmbench.agents.make_agent`): only whitelisted agent
types exist in the server, and no code travels from the host.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gymnasium import spaces

from shmbench.errors import ExperimentError, RemoteEnvError
from shmbench.host.proxy import RemoteBase
from shmbench.host.worker import START_TIMEOUT
from shmbench.wire.protocol import Opcode
from shmbench.wire.spaces import describe

__all__ = ["RemoteAgent"]


class RemoteAgent(RemoteBase):
    """DACBench's agent API (``act``, ``train``, ``end_episode``) for an agent in a server.

    Args:
        agent_spec: the agent's description, ``{"type": "random", "seed": 3}`` or
            ``{"type": "static", "action": [1, 2]}`` (or just the type, ``"random"``).
        action_space: the env's action space (required unless the description already
            holds one); it travels as :func:`shmbench.wire.spaces.describe` data.
        runtime: ``"auto"``, ``"apptainer"``, ``"bwrap"``, ``"process"`` or a Runtime.
        image: the image the agent's server runs in (None: the host's root).
        binds, environment: as for :class:`~shmbench.host.env.RemoteEnvironmentClient`.
        timeout: seconds any call may take (None: no limit; a dead server is noticed
            either way).
        start_timeout: seconds the server may take to start and build the agent.

    Raises:
        ExperimentError: a description the server refuses (unknown type, bad seed, a static
            action outside the space), raised from the server's ``make_agent``.
    """

    def __init__(
        self,
        agent_spec: Mapping[str, Any] | str,
        *,
        action_space: spaces.Space | None = None,
        runtime="auto",
        image=None,
        binds=(),
        environment=None,
        timeout: float | None = None,
        start_timeout: float = START_TIMEOUT,
        limits=None,
    ) -> None:
        spec: dict[str, Any] = {"type": agent_spec} if isinstance(agent_spec, str) else dict(agent_spec)
        if action_space is not None:
            spec["action_space"] = action_space
        if isinstance(spec.get("action_space"), spaces.Space):
            spec["action_space"] = describe(spec["action_space"])
        if spec.get("action_space") is None:
            raise ExperimentError("a remote agent needs the action space: pass action_space=env.action_space")
        self.spec = spec
        self._open(
            runtime=runtime,
            image=image,
            binds=binds,
            environment=environment,
            allow_pickle=False,
            timeout=timeout,
            limits=limits,
        )
        try:
            self._started(self._start, spec, start_timeout)
        except RemoteEnvError as exc:
            if exc.type_name.endswith("ExperimentError"):
                raise ExperimentError(f"the agent server refused {agent_spec!r}: {exc.remote_message}") from None
            raise

    def _start(self, spec: dict, start_timeout: float) -> None:
        worker = self._new_worker(0)
        worker.make(
            {
                "agent": spec,
                "env_id": None,
                "kwargs": {},
                "num_envs": 1,
                "vector": False,
                "factory": None,
                "benchmark": None,
                "allow_pickle": False,
            },
            start_timeout,
        )
        self._worker = worker
        self.server_info = worker.server_info

    # -- DACBench's agent API ------------------------------------------------------------

    def act(self, state: Any, reward: Any) -> Any:
        """The agent's action for ``state`` (the remote ``act``)."""
        return self._call("act", state, reward)

    def train(self, next_state: Any, reward: Any) -> None:
        """The remote ``train``."""
        self._call("train", next_state, reward)

    def end_episode(self, state: Any, reward: Any) -> None:
        """The remote ``end_episode``."""
        self._call("end_episode", state, reward)

    def _call(self, name: str, *args: Any) -> Any:
        return self._worker.call(Opcode.CALL, (name, list(args), {}))

    # -- lifecycle -----------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """What a run log records about this agent (plain data; no pid, no paths)."""
        spec = {k: v for k, v in self.spec.items() if k != "action_space"}
        return {
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "spec": spec,
            "runtime": self.runtime.name,
        }

    def __repr__(self) -> str:
        return f"<RemoteAgent {self.spec.get('type')!r} via {self.runtime.name}{' closed' if self.closed else ''}>"
