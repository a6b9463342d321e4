"""The wire protocol between the host and a server: opcodes, statuses, fixed reply headers.

Tiny and regular (Gymnasium's worker protocol, with PufferLib's named flags): every request
is ``opcode byte | flags byte | payload``, every reply ``status byte | ... | payload``. The
opcodes mirror ``enum sb_opcode`` in ``shmbench/_ring/ring.h`` (a test checks they agree).

The fast path never touches the codec: an action in the slab is announced by a flag byte,
and a step reply's fixed header carries the reward and done flags with *type tags*, so that
``1.0`` comes back a ``float``, ``np.float32(1.0)`` an ``np.float32`` and ``True`` a
``bool``, exactly as the env returned them. Anything that does not fit a tag travels in the
codec-encoded extras that follow the header.
"""

from __future__ import annotations

import struct
import traceback
from enum import IntEnum
from typing import Any

import numpy as np

from shmbench.errors import ProtocolError, RemoteEnvError

__all__ = [
    "Opcode",
    "Status",
    "ActionTag",
    "ObsTag",
    "ScalarTag",
    "STEP_REPLY",
    "STEP_REPLY_F",
    "STEP_REPLY_I",
    "VEC_REPLY",
    "encode_scalar",
    "decode_scalar",
    "error_payload",
    "raise_remote",
]


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


class ActionTag(IntEnum):
    """How a STEP request's action travels (the request's second byte)."""

    SLAB_ARRAY = 0    # an ndarray of exactly the slab's dtype and shape
    SLAB_INT = 1      # a Python int, in the int64 slab of a Discrete space
    SLAB_SCALAR = 2   # a numpy scalar of the slab's dtype (shape ())
    CODEC = 3         # anything else: the payload is the codec-encoded action


class ObsTag(IntEnum):
    """How an observation comes back."""

    SLAB_ARRAY = 0    # one ndarray leaf, exactly the slab's dtype and shape
    SLAB_INT = 1      # a Python int in a Discrete slab
    SLAB_SCALAR = 2   # a numpy scalar of the slab's dtype
    SLAB_TREE = 3     # Dict/Tuple whose leaves are all exact ndarrays, keys in space order
    CODEC = 255       # in the extras


class ScalarTag(IntEnum):
    """Type of the reward / terminated / truncated values in a step reply."""

    FLOAT = 0         # Python float
    INT = 1           # Python int (within int64)
    BOOL = 2          # Python bool
    NP_FLOAT64 = 3
    NP_FLOAT32 = 4
    NP_INT64 = 5
    NP_BOOL = 6
    CODEC = 255       # in the extras


# status, obs tag, reward tag, terminated flag, truncated flag, pad, reward: 8 raw bytes,
# read as f64 or i64 by its tag (STEP_REPLY_F / STEP_REPLY_I unpack it directly)
STEP_REPLY = struct.Struct("<BBBBB3x8s")
STEP_REPLY_F = struct.Struct("<BBBBB3xd")
STEP_REPLY_I = struct.Struct("<BBBBB3xq")
_F64 = struct.Struct("<d")
_I64 = struct.Struct("<q")
#: vector replies: status, obs tag (SLAB_ARRAY: obs written to the slab rows; CODEC: extras)
VEC_REPLY = struct.Struct("<BB6x")

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
    return 255


_FLAGS = (False, True, np.False_, np.True_)


def decode_flag(b: int) -> Any:
    if b < 4:
        return _FLAGS[b]
    raise ProtocolError(f"bad done-flag byte {b}")


def error_payload(exc: BaseException) -> dict:
    """What the server sends for an exception in the env: names and text, never the object."""
    return {
        "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }


def raise_remote(payload: Any) -> None:
    """Raise RemoteEnvError from an error payload (validated: it comes from the peer)."""
    if not isinstance(payload, dict):
        raise ProtocolError("malformed error reply")
    type_name = payload.get("type")
    message = payload.get("message")
    tb = payload.get("traceback", "")
    if not isinstance(type_name, str) or not isinstance(message, str) or not isinstance(tb, str):
        raise ProtocolError("malformed error reply")
    raise RemoteEnvError(type_name, message, tb)
