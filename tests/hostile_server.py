"""A hostile image's server: run in place of ``python -m shmbench.server`` inside a real bwrap
sandbox, attached to the real inherited channel, answering the host with crafted replies.

    python hostile_server.py ATTACK

ATTACKs (each a finding of the sealed-containers review):

* ``alias``  -- a MAKE reply of 4,000 array records that all point at the same 1 MiB of bytes
  (decoded naively: 4 GiB of copies);
* ``maps``   -- a MAKE reply of 3 MB of empty MessagePack maps (decoded: 200+ MiB of dicts);
* ``boxes``  -- a MAKE reply whose observation space is a Dict of 16 Boxes, each bound aliasing
  one 16 MiB array;
* ``vec_obs`` -- a well-behaved vector handshake, then replies whose observations do not fit
  the observation space.
"""

from __future__ import annotations

import os
import sys

import gymnasium
import msgpack
import numpy as np

from shmbench.transport.channel import Channel
from shmbench.wire.codec import _HEAD, EXT_NDARRAY, Codec
from shmbench.wire.protocol import PROTOCOL_VERSION, VEC_REPLY, ObsTag, Opcode, Status
from shmbench.wire.spaces import describe

OK = bytes([Status.OK])


def raw_message(doc: bytes, tail: bytes = b"") -> bytes:
    """A codec message by hand: header, document, padding, out-of-band bytes."""
    head = _HEAD.pack(len(doc)) + doc
    return head + b"\0" * ((-len(head)) % 16) + tail


def array_record(dtype: str, shape: list[int], offset: int, nbytes: int) -> msgpack.ExtType:
    return msgpack.ExtType(EXT_NDARRAY, msgpack.packb([dtype, shape, offset, nbytes]))


def info_for(obs_desc, act_desc) -> dict:
    return {
        "observation_space": obs_desc,
        "action_space": act_desc,
        "metadata": {},
        "render_mode": None,
        "spec": None,
        # claims the host's protocol: a hostile server would, to get past the handshake
        "server": {"pid": os.getpid(), "shmbench": "hostile", "protocol": PROTOCOL_VERSION},
    }


def main(attack: str) -> None:
    ch = Channel.attach(int(os.environ["SHMBENCH_CHANNEL_FD"]))
    codec = Codec()
    request = ch.recv(timeout=60)
    assert request[0] == Opcode.MAKE
    if attack == "alias":
        data = np.zeros(1 << 18, np.float32).tobytes()  # 1 MiB
        doc = msgpack.packb([array_record("<f4", [1 << 18], 0, len(data))] * 4000)
        ch.send(OK + raw_message(doc, data), timeout=60)
    elif attack == "maps":
        ch.send(OK + raw_message(msgpack.packb([{}] * (3 << 20))), timeout=60)
    elif attack == "boxes":
        data = np.zeros(1 << 22, np.float32).tobytes()  # 16 MiB
        box = {
            "type": "Box",
            "low": array_record("<f4", [1 << 22], 0, len(data)),
            "high": array_record("<f4", [1 << 22], 0, len(data)),
            "dtype": "<f4",
        }
        obs = {"type": "Dict", "spaces": [[f"k{i}", box] for i in range(16)]}
        act = {"type": "Discrete", "n": 2, "start": 0}
        doc = msgpack.packb(info_for(obs, act))
        ch.send(OK + raw_message(doc, data), timeout=60)
    elif attack == "vec_obs":
        env = gymnasium.make("CartPole-v1")
        ch.send(OK + codec.encode(info_for(describe(env.observation_space), describe(env.action_space))), timeout=60)
        ch.recv(timeout=60)  # CONFIGURE
        ch.send(OK, timeout=60)
        while True:
            request = ch.recv(timeout=60)
            if request[0] == Opcode.CLOSE:
                ch.send(OK, timeout=5)
                break
            rows = 2
            bad = [np.zeros(7, np.float32)] * rows  # CartPole observations have 4 numbers
            ch.send(VEC_REPLY.pack(Status.OK, ObsTag.CODEC) + codec.encode({"infos": [], "obs": bad}), timeout=60)
    ch.close()


if __name__ == "__main__":
    main(sys.argv[1])
