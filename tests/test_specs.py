"""shmbench.wire.specs: an env's EnvSpec described as plain data and rebuilt on the host."""

from __future__ import annotations

import gymnasium
from gymnasium.envs.registration import EnvSpec

from shmbench.wire.codec import Codec
from shmbench.wire.specs import describe_spec, rebuild_spec


def test_a_registered_spec_reads_like_native_but_runs_the_hosts_entry_point():
    env = gymnasium.make("CartPole-v1", max_episode_steps=77)
    codec = Codec()
    fields = codec.decode(codec.encode(describe_spec(env, codec)))
    made = []

    def host_entry_point(**kwargs):
        made.append(kwargs)
        return gymnasium.make("CartPole-v1")

    spec = rebuild_spec(fields, host_entry_point)
    native = env.spec
    for name in (
        "id",
        "reward_threshold",
        "nondeterministic",
        "max_episode_steps",
        "order_enforce",
        "disable_env_checker",
        "kwargs",
    ):
        assert getattr(spec, name) == getattr(native, name), name
    # nothing the server named runs on the host: not its entry point, not its wrappers'
    assert spec.entry_point is host_entry_point and spec.additional_wrappers == ()
    with gymnasium.make(spec) as again:
        assert again.spec.max_episode_steps == 77
    assert made == [{}]
    env.close()


def test_a_hostile_description_names_nothing_that_runs():
    fields = {
        "id": "Evil-v0",
        "entry_point": "subprocess:getoutput",
        "kwargs": {"cmd": "touch /tmp/pwned", "f": {1, 2}},
        "additional_wrappers": [["W", "os:system", {"command": "id"}]],
        "max_episode_steps": "lots",
        "vector_entry_point": "os:system",
    }
    spec = rebuild_spec(fields, None)
    assert spec.entry_point is None and spec.additional_wrappers == () and spec.vector_entry_point is None
    assert spec.kwargs == {"cmd": "touch /tmp/pwned"}  # strict JSON only (a set is dropped)
    assert spec.max_episode_steps is None


def test_values_the_codec_cannot_carry_are_dropped():
    class Unsendable:
        pass

    class Holder:
        spec = EnvSpec("Odd-v0", entry_point="odd:Env", kwargs={"plain": 3, "odd": Unsendable(), "none": None})

    fields = describe_spec(Holder(), Codec())
    assert fields["kwargs"] == {"plain": 3, "none": None}
    assert fields["entry_point"] == "odd:Env"


def test_no_spec_and_malformed_descriptions():
    assert describe_spec(object(), Codec()) is None
    assert rebuild_spec(None) is None
    assert rebuild_spec({"entry_point": "x:y"}) is None  # no id: not a spec
    assert rebuild_spec("CartPole-v1") is None
