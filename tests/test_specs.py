"""shmbench.wire.specs: an env's EnvSpec described as plain data and rebuilt on the host."""

from __future__ import annotations

import gymnasium
from gymnasium.envs.registration import EnvSpec

from shmbench.wire.codec import Codec
from shmbench.wire.specs import describe_spec, rebuild_spec


def test_a_registered_spec_round_trips():
    env = gymnasium.make("CartPole-v1", max_episode_steps=77)
    codec = Codec()
    fields = codec.decode(codec.encode(describe_spec(env, codec)))
    spec = rebuild_spec(fields)
    native = env.spec
    for name in (
        "id",
        "entry_point",
        "reward_threshold",
        "nondeterministic",
        "max_episode_steps",
        "order_enforce",
        "disable_env_checker",
        "kwargs",
    ):
        assert getattr(spec, name) == getattr(native, name), name
    assert [w.name for w in spec.additional_wrappers] == [w.name for w in native.additional_wrappers]
    env.close()


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
