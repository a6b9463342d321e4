"""The wire protocol between the host and a server: opcodes, statuses, and every reply's shape.

Tiny and regular (Gymnasium's worker protocol, with PufferLib's named flags): every request
is ``opcode byte | flags byte | payload``, every reply ``status byte | ... | payload``. The
opcodes mirror ``enum sb_opcode`` in ``shmbench/_ring/ring.h`` (a test checks they agree).

The fast path never touches the codec: an action in the slab is announced by a flag byte,
and a step reply's fixed header carries the reward and done flags with *type tags*, so that
``1.0`` comes back a ``float``, ``np.float32(1.0)`` an ``np.float32`` and ``True`` a
``bool``, exactly as the env returned them. Anything that does not fit a tag travels in the
codec-encoded extras that follow the header.

The replies are built and read here and nowhere else (:func:`step_reply`,
:func:`reset_reply`, :func:`read_step_reply`, :func:`vector_reply`,
:func:`read_vector_reply`); the C fast paths (``Channel.reply_step``/``call_step``) write
and read only the common case of the same fixed head, ``sb_step_reply`` in ``ring.h``.
Everything read from a reply is validated: a malformed one is a
:class:`~shmbench.errors.ProtocolError`, whatever the bytes.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Any

import numpy as np

from shmbench.errors import ProtocolError
from shmbench.wire.codec import Codec

__all__ = [
    "PROTOCOL_VERSION",
    "Opcode",
    "Status",
    "ActionTag",
    "ObsTag",
    "ScalarTag",
    "STEP_REPLY",
    "STEP_REPLY_F",
    "STEP_REPLY_I",
    "VEC_REPLY",
    "VEC_REPLY_IN_SLAB",
    "FLAGS",
    "FLAG_CODEC",
    "encode_scalar",
    "decode_scalar",
    "encode_flag",
    "decode_flag",
    "step_reply",
    "reset_reply",
    "read_step_reply",
    "vector_reply",
    "read_vector_reply",
    "codec_obs",
    "with_notes",
    "split_notes",
]


#: The version of what the messages mean (opcodes, tags, reply layouts, MAKE's keys). A
#: server reports it in its MAKE reply and the host refuses any other at once (a server in
#: an image built with another shmbench): bump it with any change a peer would misread. 1
#: is every shmbench before the field existed. The channel's memory layout has its own
#: version, checked when the server attaches (``_ring.LAYOUT_VERSION``).
PROTOCOL_VERSION = 2


class Opcode(IntEnum):
    MAKE = 1
    CONFIGURE = 2
    RESET = 3
    STEP = 4
    RENDER = 5
    CALL = 6
    GET_ATTR = 7
    SET_ATTR = 8
    CLOSE = 9
    PING = 10
    ECHO = 11


class Status(IntEnum):
    OK = 0
    ERROR = 1
    NOTES = 2  # the reply follows, prefixed with notes (with_notes)


class ActionTag(IntEnum):
    """How a STEP request's action travels (the request's second byte)."""

    SLAB_ARRAY = 0  # an ndarray of exactly the slab's dtype and shape
    SLAB_INT = 1  # a Python int, in the int64 slab of a Discrete space
    SLAB_SCALAR = 2  # a numpy scalar of the slab's dtype (shape ())
    CODEC = 3  # anything else: the payload is the codec-encoded action


class ObsTag(IntEnum):
    """How an observation comes back."""

    SLAB_ARRAY = 0  # one ndarray leaf, exactly the slab's dtype and shape
    SLAB_INT = 1  # a Python int in a Discrete slab
    SLAB_SCALAR = 2  # a numpy scalar of the slab's dtype
    SLAB_TREE = 3  # Dict/Tuple whose leaves are all exact ndarrays, keys in space order
    CODEC = 255  # in the extras


class ScalarTag(IntEnum):
    """Type of the reward / terminated / truncated values in a step reply."""

    FLOAT = 0  # Python float
    INT = 1  # Python int (within int64)
    BOOL = 2  # Python bool
    NP_FLOAT64 = 3
    NP_FLOAT32 = 4
    NP_INT64 = 5
    NP_BOOL = 6
    CODEC = 255  # in the extras


# status, obs tag, reward tag, terminated flag, truncated flag, pad, reward: 8 raw bytes,
# read as f64 or i64 by its tag (STEP_REPLY_F / STEP_REPLY_I unpack it directly)
STEP_REPLY = struct.Struct("<BBBBB3x8s")
STEP_REPLY_F = struct.Struct("<BBBBB3xd")
STEP_REPLY_I = struct.Struct("<BBBBB3xq")
_F64 = struct.Struct("<d")
_I64 = struct.Struct("<q")
#: a NOTES reply's head: status, the notes document's length
NOTES_HEAD = struct.Struct("<B3xI")
#: vector replies: status, obs tag (SLAB_ARRAY: obs written to the slab rows; CODEC: extras)
VEC_REPLY = struct.Struct("<BB6x")
#: the vector reply with every observation in the slab and no infos (also what the host
#: compares a reply with to take its fast path)
VEC_REPLY_IN_SLAB = VEC_REPLY.pack(Status.OK, ObsTag.SLAB_ARRAY)
_VEC_REPLY_CODEC = VEC_REPLY.pack(Status.OK, ObsTag.CODEC)
_NO_REWARD = b"\0" * 8

_SCALAR_ENCODERS = {
    float: (ScalarTag.FLOAT, _F64.pack),
    int: (ScalarTag.INT, _I64.pack),
    bool: (ScalarTag.BOOL, _I64.pack),
    np.float64: (ScalarTag.NP_FLOAT64, _F64.pack),
    np.float32: (ScalarTag.NP_FLOAT32, lambda v: _F64.pack(float(v))),
    np.int64: (ScalarTag.NP_INT64, lambda v: _I64.pack(int(v))),
    np.bool_: (ScalarTag.NP_BOOL, lambda v: _I64.pack(int(v))),
}


def encode_scalar(value: Any) -> tuple[int, bytes]:
    """(tag, 8 raw bytes) for a reward-like scalar; tag CODEC when it has no tag."""
    enc = _SCALAR_ENCODERS.get(type(value))
    if enc is None:
        return ScalarTag.CODEC, b"\0" * 8
    tag, pack = enc
    if tag is ScalarTag.INT and not -(1 << 63) <= value < (1 << 63):
        return ScalarTag.CODEC, b"\0" * 8
    return tag, pack(value)


def decode_scalar(tag: int, raw: bytes) -> Any:
    if tag == ScalarTag.FLOAT:
        return _F64.unpack(raw)[0]
    if tag == ScalarTag.BOOL:
        return _I64.unpack(raw)[0] != 0
    if tag == ScalarTag.INT:
        return _I64.unpack(raw)[0]
    if tag == ScalarTag.NP_FLOAT64:
        return np.float64(_F64.unpack(raw)[0])
    if tag == ScalarTag.NP_FLOAT32:
        return np.float32(_F64.unpack(raw)[0])
    if tag == ScalarTag.NP_INT64:
        return np.int64(_I64.unpack(raw)[0])
    if tag == ScalarTag.NP_BOOL:
        return np.bool_(_I64.unpack(raw)[0] != 0)
    raise ProtocolError(f"unknown scalar tag {tag}")


def encode_flag(value: Any) -> int:
    """terminated/truncated as one byte: 0/1 Python bool, 2/3 numpy bool, 255 otherwise."""
    t = type(value)
    if t is bool:
        return int(value)
    if t is np.bool_:
        return 2 + int(value)
    return FLAG_CODEC


#: the done flags a byte 0..3 stands for
FLAGS = (False, True, np.False_, np.True_)
#: the done-flag byte of a value that travels in the extras
FLAG_CODEC = 255


def decode_flag(b: int) -> Any:
    if b < 4:
        return FLAGS[b]
    raise ProtocolError(f"bad done-flag byte {b}")


def with_notes(reply: bytes | bytearray | memoryview, notes: dict, codec: Codec) -> bytes:
    """``reply`` prefixed with ``notes`` (what happened on the way: the env's warnings).

    ``NOTES | 3 pad | u32 length | codec(notes) | pad to 16 | reply``: the reply itself, its
    own status byte first, follows unchanged (aligned, so its arrays stay aligned).
    """
    doc = codec.encode(notes)
    head = NOTES_HEAD.pack(Status.NOTES, len(doc)) + doc
    return head + b"\0" * ((-len(head)) % 16) + bytes(reply)


def split_notes(mv: memoryview, codec: Codec) -> tuple[Any, memoryview]:
    """``(notes, the reply)`` of a NOTES reply (validated: the peer wrote it)."""
    if len(mv) < NOTES_HEAD.size:
        raise ProtocolError("short notes reply")
    _, n = NOTES_HEAD.unpack_from(mv)
    start = NOTES_HEAD.size + n + ((-(NOTES_HEAD.size + n)) % 16)
    if start >= len(mv):
        raise ProtocolError("notes reply without its reply")
    inner = mv[start:]
    if inner[0] == Status.NOTES:
        raise ProtocolError("notes inside notes")
    return codec.decode(mv[NOTES_HEAD.size : NOTES_HEAD.size + n]), inner


# ------------------------------------------------------------------------------------------
# single-env replies: STEP and RESET share the fixed head (RESET leaves reward and flags 0)
# ------------------------------------------------------------------------------------------


def step_reply(otag: int, obs: Any, reward: Any, terminated: Any, truncated: Any, info: Any, codec: Codec) -> bytes:
    """A STEP reply: the fixed head, and extras for whatever the head cannot carry.

    ``otag`` says where the observation is (:class:`ObsTag`); with ``ObsTag.CODEC`` it
    travels in the extras. The extras, when present, always hold the info.
    """
    rtag, raw = encode_scalar(reward)
    tflag = encode_flag(terminated)
    uflag = encode_flag(truncated)
    head = STEP_REPLY.pack(Status.OK, otag, rtag, tflag, uflag, raw)
    if (
        otag != ObsTag.CODEC
        and rtag != ScalarTag.CODEC
        and tflag != FLAG_CODEC
        and uflag != FLAG_CODEC
        and type(info) is dict
        and not info
    ):
        return head
    extras: dict[str, Any] = {"info": info}
    if otag == ObsTag.CODEC:
        extras["obs"] = obs
    if rtag == ScalarTag.CODEC:
        extras["reward"] = reward
    if tflag == FLAG_CODEC:
        extras["terminated"] = terminated
    if uflag == FLAG_CODEC:
        extras["truncated"] = truncated
    return head + codec.encode(extras)


def reset_reply(otag: int, obs: Any, info: Any, codec: Codec) -> bytes:
    """A RESET reply: the fixed head (reward and flags unused), the info in the extras."""
    extras: dict[str, Any] = {"info": info}
    if otag == ObsTag.CODEC:
        extras["obs"] = obs
    return STEP_REPLY.pack(Status.OK, otag, 0, 0, 0, _NO_REWARD) + codec.encode(extras)


def _extra(extras: Any, key: str) -> Any:
    if not isinstance(extras, dict) or key not in extras:
        raise ProtocolError(f"reply lacks {key!r}")
    return extras[key]


def _read_flag(flag: int, extras: Any, key: str) -> Any:
    if flag < 4:
        return FLAGS[flag]
    if flag == FLAG_CODEC:
        return _extra(extras, key)
    raise ProtocolError(f"bad done-flag byte {flag}")


def read_step_reply(mv: memoryview, codec: Codec) -> tuple[int, Any, Any, Any, Any, Any]:
    """``(obs tag, reward, terminated, truncated, info, extras)`` of an OK STEP or RESET reply.

    The observation itself is the caller's to read (from its slab, or ``extras["obs"]``
    for ``ObsTag.CODEC``: see :func:`codec_obs`).
    """
    if len(mv) < STEP_REPLY.size:
        raise ProtocolError("short step reply")
    _status, otag, rtag, tflag, uflag, raw = STEP_REPLY.unpack_from(mv)
    extras = codec.decode(mv[STEP_REPLY.size :]) if len(mv) > STEP_REPLY.size else None
    if rtag == ScalarTag.FLOAT:
        reward = _F64.unpack(raw)[0]
    elif rtag == ScalarTag.CODEC:
        reward = _extra(extras, "reward")
    else:
        reward = decode_scalar(rtag, raw)
    terminated = _read_flag(tflag, extras, "terminated")
    truncated = _read_flag(uflag, extras, "truncated")
    info = {} if extras is None else _extra(extras, "info")
    return otag, reward, terminated, truncated, info, extras


def codec_obs(extras: Any) -> Any:
    """The observation a reply carried in its extras (``ObsTag.CODEC``)."""
    return _extra(extras, "obs")


# ------------------------------------------------------------------------------------------
# vector replies: one worker's rows
# ------------------------------------------------------------------------------------------


def vector_reply(obs_in_slab: bool, infos: list, env_obs: list, codec: Codec) -> bytes:
    """A worker's reply to a vector STEP or RESET: its rows' observations are in the slab
    (``obs_in_slab``) or in the extras, with the infos as ``[(row, info), ...]``."""
    if obs_in_slab and not infos:
        return VEC_REPLY_IN_SLAB  # a vector server's every step, mostly: packed once
    head = VEC_REPLY_IN_SLAB if obs_in_slab else _VEC_REPLY_CODEC
    extras: dict[str, Any] = {"infos": infos}
    if not obs_in_slab:
        extras["obs"] = list(env_obs)
    return head + codec.encode(extras)


def read_vector_reply(mv: memoryview, codec: Codec, rows: int) -> tuple[list | None, list[tuple[int, dict]]]:
    """``(observations or None, [(row, info), ...])`` of a worker's OK vector reply.

    The observations are None when they are in the slab, else a list of ``rows`` values.
    """
    if len(mv) < VEC_REPLY.size:
        raise ProtocolError("short vector reply")
    otag = VEC_REPLY.unpack_from(mv)[1]
    extras = codec.decode(mv[VEC_REPLY.size :]) if len(mv) > VEC_REPLY.size else None
    infos: list[tuple[int, dict]] = []
    if extras is not None:
        if not isinstance(extras, dict):
            raise ProtocolError("malformed vector extras")
        raw = extras.get("infos", ())
        if not isinstance(raw, (list, tuple)):
            raise ProtocolError("malformed vector infos")
        for entry in raw:
            if (
                not isinstance(entry, (list, tuple))
                or len(entry) != 2
                or type(entry[0]) is not int
                or not 0 <= entry[0] < rows
                or not isinstance(entry[1], dict)
            ):
                raise ProtocolError("malformed vector info entry")
            infos.append((entry[0], entry[1]))
    if otag == ObsTag.SLAB_ARRAY:
        return None, infos
    if otag != ObsTag.CODEC:
        raise ProtocolError(f"bad vector observation tag {otag}")
    obs = extras.get("obs") if isinstance(extras, dict) else None
    if not isinstance(obs, list) or len(obs) != rows:
        raise ProtocolError("vector reply without one observation per row")
    return obs, infos
