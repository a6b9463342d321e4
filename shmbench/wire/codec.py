"""The wire codec for everything irregular: info dicts, render frames, call results, errors.

Version-independent and safe to decode from an untrusted peer. The envelope is MessagePack
(the ``msgpack`` C extension: a few hundred ns for a small info dict where a hand-written
Python encoder takes microseconds, and its unpacker bounds every length by the input size).
MessagePack cannot tell a tuple from a list or ``np.float32`` from ``float``, so every type
it would blur travels as an extension record instead (``strict_types=True`` routes exact
subclasses such as ``np.float64`` to our hook rather than silently as ``float``):

=====  ====================================================================
ext    payload
=====  ====================================================================
1      tuple: a packed list of its items
2      ndarray: ``[dtype, shape, offset, nbytes]``; the raw bytes follow the document
3      numpy scalar: ``[dtype, raw bytes]``
4      int beyond 64 bits: its decimal digits
5      gymnasium ``GraphInstance``: a packed list ``[nodes, edges, edge_links]``
6      pickle (only when both sides opted in with ``allow_pickle=True``)
=====  ====================================================================

(``bytearray`` and ``memoryview`` arrive as ``bytes``: MessagePack packs them natively.)

A message is ``u32 document length | document | padding | array bytes``; each array's
bytes start 16-byte aligned, so decoding can hand out zero-copy ``np.frombuffer`` views of
the buffer it was given (``copy=False``). No pickle is ever used for data unless asked for:
decoding untrusted pickle would let the container run code in the host.
"""

from __future__ import annotations

import re
import struct
import threading
from typing import Any

import msgpack
import numpy as np
from gymnasium.spaces.graph import GraphInstance

from shmbench import _ring
from shmbench.errors import DecodeError, EncodeError

__all__ = ["encode", "decode", "Codec", "MAX_DEPTH"]

EXT_TUPLE = 1
EXT_NDARRAY = 2
EXT_NPSCALAR = 3
EXT_BIGINT = 4
EXT_GRAPH = 5  # gymnasium's GraphInstance(nodes, edges, edge_links): a Graph space's value
EXT_PICKLE = 6

MAX_DEPTH = 64  # nesting of tuples/arrays decoded through extension records
# documents up to this size are not costed before decoding: at about a hundred bytes of
# objects per MessagePack byte at most, they stay within the budget's fixed allowance
_SCAN_ABOVE = 16 << 10
#: the allowance of one array or numpy-scalar record's payload, beyond twice its size
_RECORD_EXTRA = 1 << 20
MAX_NDIM = 64
_ALIGN = 16
_HEAD = struct.Struct("<I")
_INT64_MIN, _UINT64_MAX = -(1 << 63), (1 << 64) - 1

# dtype strings we accept from a peer: byte order, kind, size, optional datetime unit.
# Never "O" (object): a view of raw bytes as object pointers would crash the host.
_DTYPE_RE = re.compile(r"^[<>|=]?(?:[biufcSUV]\d{1,6}|[mM]8(?:\[\d{0,6}[a-zA-Zμ]{1,3}\])?|b1|\?)$")


def _dtype_to_wire(dtype: np.dtype) -> Any:
    if dtype.hasobject:
        raise EncodeError(f"arrays of dtype {dtype} hold Python objects and cannot be sent")
    if dtype.fields is not None or dtype.subdtype is not None:
        # structured dtypes: numpy's own .npy description, as nested lists
        return _lists(np.lib.format.dtype_to_descr(dtype))
    return dtype.str


def _lists(x: Any) -> Any:
    if isinstance(x, (list, tuple)):
        return [_lists(i) for i in x]
    return x


def _tuples(x: Any, depth: int = 0) -> Any:
    if depth > 8:
        raise DecodeError("structured dtype nested too deeply")
    if isinstance(x, list):
        out = []
        for field in x:
            if isinstance(field, list):
                items = [_tuples(i, depth + 1) for i in field]
                if items and isinstance(items[0], list):
                    items[0] = tuple(items[0])  # a titled field's (title, name)
                field = tuple(items)
            out.append(field)
        return out
    return x


_DTYPE_CACHE: dict[str, np.dtype] = {}


def _dtype_from_wire(desc: Any) -> np.dtype:
    if isinstance(desc, str):
        dtype = _DTYPE_CACHE.get(desc)
        if dtype is not None:
            return dtype
        if not _DTYPE_RE.match(desc):
            raise DecodeError(f"refusing dtype {desc!r}")
        dtype = np.dtype(desc)
        if len(_DTYPE_CACHE) < 256:
            _DTYPE_CACHE[desc] = dtype
    elif isinstance(desc, list) and 0 < len(desc) <= 256:
        try:
            dtype = np.lib.format.descr_to_dtype(_tuples(desc))
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(f"bad structured dtype: {exc}") from None
    else:
        raise DecodeError("bad dtype description")
    if dtype.hasobject:
        raise DecodeError("refusing an object dtype from the peer")
    return dtype


class Codec:
    """Encoder/decoder pair; ``allow_pickle`` opts into pickling what nothing else covers.

    Decoding is budgeted: a message can never decode into more than ``2 x its size +
    max_decoded_extra`` bytes of Python objects. Array records each copy bytes of their own
    (the out-of-band ranges may not overlap: one buffer cannot be copied a thousand times),
    and a document larger than a few KiB is costed before it is decoded, by one pass of
    ``shmbench._ring.decode_cost`` over its bytes (a few ms for megabytes). A smaller one
    cannot cost more than the allowance anyway (no MessagePack byte decodes into more than
    about a hundred bytes of objects).

    Args:
        allow_pickle: encode unsupported objects with cloudpickle, and decode pickles.
            Only for peers you trust (the host trusts its own code; it never trusts a
            container's output by default).
        max_message: largest message :meth:`decode` accepts.
        max_decoded_extra: the fixed allowance of the decoding budget (bytes).
    """

    def __init__(
        self, *, allow_pickle: bool = False, max_message: int = 256 << 20, max_decoded_extra: int = 64 << 20
    ) -> None:
        self.allow_pickle = allow_pickle
        self.max_message = max_message
        self.max_decoded_extra = max_decoded_extra

    # -- encoding -------------------------------------------------------------------------

    def encode(self, obj: Any) -> bytes | bytearray:
        """Encode ``obj`` (a bytes-like message); raises EncodeError for what it does not cover."""
        buffers: list[np.ndarray] = []
        offset = [0]
        # Packers are reused (one per nesting depth, per thread): building one allocates a
        # large buffer, and a nested build inside the hook costs ~10 us.
        packers, hooks = _packers()
        depth = [0]

        def pack(x: Any) -> bytes:
            d = depth[0]
            if d >= MAX_DEPTH:
                raise EncodeError("value nested too deeply")
            while len(packers) <= d:
                packers.append(
                    msgpack.Packer(
                        strict_types=True, use_bin_type=True, datetime=False, autoreset=True, default=_trampoline
                    )
                )
            depth[0] = d + 1
            hooks.append(default)
            try:
                return packers[d].pack(x)
            finally:
                hooks.pop()
                depth[0] = d

        def default(x: Any) -> Any:
            t = type(x)
            if t is tuple:
                return msgpack.ExtType(EXT_TUPLE, pack(list(x)))
            if t is GraphInstance:
                return msgpack.ExtType(EXT_GRAPH, pack([x.nodes, x.edges, x.edge_links]))
            if t is np.ndarray:
                dt = _dtype_to_wire(x.dtype)
                arr = np.ascontiguousarray(x)
                start = offset[0]
                buffers.append(arr)
                offset[0] = start + (arr.nbytes + _ALIGN - 1) // _ALIGN * _ALIGN
                return msgpack.ExtType(EXT_NDARRAY, pack([dt, list(x.shape), start, arr.nbytes]))
            if isinstance(x, np.generic) and t.__module__ == "numpy":
                return msgpack.ExtType(EXT_NPSCALAR, pack([_dtype_to_wire(x.dtype), x.tobytes()]))
            if t is int:
                return msgpack.ExtType(EXT_BIGINT, str(x).encode())
            if self.allow_pickle:
                import cloudpickle

                return msgpack.ExtType(EXT_PICKLE, cloudpickle.dumps(x))
            raise EncodeError(
                f"cannot send a {t.__module__}.{t.__qualname__} across the process boundary "
                f"(supported: None, bool, int, float, str, bytes, list, tuple, dict, numpy arrays "
                f"and scalars, gymnasium GraphInstances); opt in to pickle with allow_pickle=True if you trust both sides"
            )

        try:
            doc = pack(obj)
        except EncodeError:
            raise
        except OverflowError:
            # an int beyond 64 bits somewhere: rebuild the value with those marked (rare)
            buffers.clear()
            offset[0] = 0
            doc = pack(_mark_bigints(obj, pack, 0))
        except (TypeError, ValueError, UnicodeError) as exc:
            raise EncodeError(f"cannot encode value: {exc}") from None
        if not buffers:
            return _HEAD.pack(len(doc)) + doc
        base = (_HEAD.size + len(doc) + _ALIGN - 1) // _ALIGN * _ALIGN
        out = bytearray(base + offset[0])
        out[: _HEAD.size] = _HEAD.pack(len(doc))
        out[_HEAD.size : _HEAD.size + len(doc)] = doc
        dst = np.frombuffer(out, dtype=np.uint8)
        pos = base
        for arr in buffers:
            n = arr.nbytes
            if n:
                dst[pos : pos + n] = arr.reshape(-1).view(np.uint8)
            pos += (n + _ALIGN - 1) // _ALIGN * _ALIGN
        del dst
        return out

    # -- decoding -------------------------------------------------------------------------

    def decode(self, data: bytes | bytearray | memoryview, *, copy: bool = True) -> Any:
        """Decode a message. ``copy=False`` returns arrays as read-only views of ``data``.

        Raises DecodeError (a ProtocolError) for anything malformed, oversized or refused;
        never anything else, whatever the bytes.
        """
        mv = memoryview(data).cast("B") if not isinstance(data, memoryview) or data.format != "B" else data
        if len(mv) > self.max_message:
            raise DecodeError(f"message of {len(mv)} bytes exceeds max_message={self.max_message}")
        if len(mv) < _HEAD.size:
            raise DecodeError("message shorter than its header")
        (doc_len,) = _HEAD.unpack_from(mv)
        if doc_len > len(mv) - _HEAD.size:
            raise DecodeError("document length overruns the message")
        base = (_HEAD.size + doc_len + _ALIGN - 1) // _ALIGN * _ALIGN
        # the document is copied: a hostile peer may rewrite shared memory while we parse
        doc = bytes(mv[_HEAD.size : _HEAD.size + doc_len])
        if doc_len > _SCAN_ABOVE:
            budget = 2 * len(mv) + self.max_decoded_extra
            cost = _ring.decode_cost(doc, budget)
            if cost > budget:
                raise DecodeError(
                    f"a {len(mv)}-byte message would decode into more than {budget} bytes of "
                    f"objects (2 x its size + {self.max_decoded_extra}); refused"
                )
        try:
            return self._unpack(doc, mv, base, copy, 0)
        except DecodeError:
            raise
        except RecursionError:
            raise DecodeError("message nested too deeply") from None
        except Exception as exc:  # msgpack and numpy errors on garbage: all become DecodeError
            raise DecodeError(f"malformed message: {type(exc).__name__}: {exc}") from None

    def _unpack(self, doc: bytes, mv: memoryview, base: int, copy: bool, depth: int) -> Any:
        depth_left = [MAX_DEPTH]
        # the end of the last array's bytes: the encoder lays arrays out one after the other
        # in the order the decoder meets them, so each must start where the last one ended
        # or later -- no two records share (and so copy twice) the same bytes
        array_end = [0]

        def unpack(payload: bytes) -> Any:
            # unpackb bounds every length inside by the payload's own size
            depth_left[0] -= 1
            if depth_left[0] < 0:
                raise DecodeError("message nested too deeply")
            try:
                # timestamp=2: msgpack turns its own ext -1 (a timestamp) into an object
                # without asking ext_hook; we never send one, and as an int (nanoseconds) a
                # peer's forged timestamp is at least a type this codec promises
                return msgpack.unpackb(
                    payload, raw=False, strict_map_key=False, ext_hook=ext_hook, use_list=True, timestamp=2
                )
            finally:
                depth_left[0] += 1

        def ext_hook(code: int, payload: bytes) -> Any:
            if code == EXT_TUPLE:
                items = unpack(payload)
                if type(items) is not list:
                    raise DecodeError("bad tuple record")
                return tuple(items)
            if code in (EXT_NDARRAY, EXT_NPSCALAR) and len(payload) > _SCAN_ABOVE:
                # the document's cost counts these records by what stays (an array object,
                # a scalar), not by what their payload decodes into on the way: a payload
                # large enough to hide a bomb is costed on its own before it is unpacked
                if _ring.decode_cost(payload, 2 * len(payload) + _RECORD_EXTRA) > 2 * len(payload) + _RECORD_EXTRA:
                    raise DecodeError("an array or scalar record would decode into too much")
            if code == EXT_GRAPH:
                items = unpack(payload)
                if type(items) is not list or len(items) != 3:
                    raise DecodeError("bad graph record")
                return GraphInstance(*items)
            if code == EXT_NDARRAY:
                return self._array(unpack(payload), mv, base, copy, array_end)
            if code == EXT_NPSCALAR:
                spec = unpack(payload)
                if type(spec) is not list or len(spec) != 2 or type(spec[1]) is not bytes:
                    raise DecodeError("bad numpy scalar record")
                dtype = _dtype_from_wire(spec[0])
                if dtype.itemsize == 0:
                    # np.str_(''), np.bytes_(b''), np.void(b''): their dtype has no size, but
                    # tobytes() still gives a NUL character (frombuffer refuses size 0)
                    if len(spec[1]) > 4:
                        raise DecodeError("numpy scalar size does not match its dtype")
                    return np.zeros((), dtype=dtype)[()]
                if dtype.itemsize != len(spec[1]):
                    raise DecodeError("numpy scalar size does not match its dtype")
                return np.frombuffer(spec[1], dtype=dtype)[0]
            if code == EXT_BIGINT:
                if len(payload) > 4400 or not re.fullmatch(rb"-?\d+", payload):
                    raise DecodeError("bad big-int record")
                return int(payload)
            if code == EXT_PICKLE:
                if not self.allow_pickle:
                    raise DecodeError(
                        "the peer sent a pickle; refusing to unpickle it (unpickling runs "
                        "arbitrary code). Pass allow_pickle=True only if you trust the peer."
                    )
                import pickle

                return pickle.loads(payload)
            raise DecodeError(f"unknown extension type {code}")

        return unpack(doc)

    def _array(self, spec: Any, mv: memoryview, base: int, copy: bool, array_end: list[int]) -> np.ndarray:
        if type(spec) is not list or len(spec) != 4:
            raise DecodeError("bad array record")
        desc, shape, offset, nbytes = spec
        dtype = _dtype_from_wire(desc)
        if type(shape) is not list or len(shape) > MAX_NDIM or any(type(d) is not int or d < 0 for d in shape):
            raise DecodeError("bad array shape")
        if type(offset) is not int or type(nbytes) is not int or offset < 0 or nbytes < 0:
            raise DecodeError("bad array extent")
        count = 1
        for d in shape:
            count *= d
        if count * dtype.itemsize != nbytes:
            raise DecodeError("array size does not match its shape and dtype")
        start = base + offset
        if start + nbytes > len(mv):
            raise DecodeError("array bytes overrun the message")
        if offset < array_end[0]:
            raise DecodeError("array records overlap (two arrays claim the same bytes)")
        array_end[0] = offset + nbytes
        if dtype.itemsize == 0:
            # no bytes bound the element count here: a peer could otherwise hand us an
            # array of 2**124 empty elements that hangs whoever iterates over it
            if count > self.max_message:
                raise DecodeError("too many elements in an array of zero-size items")
            return np.empty(shape, dtype=dtype)
        arr = np.frombuffer(mv[start : start + nbytes], dtype=dtype).reshape(shape)
        return arr.copy() if copy else arr


_local = threading.local()


def _packers() -> tuple[list, list]:
    """This thread's packers and the stack of active encode() hooks they call."""
    try:
        return _local.packers, _local.hooks
    except AttributeError:
        _local.packers, _local.hooks = [], []
        return _local.packers, _local.hooks


def _trampoline(x: Any) -> Any:
    return _local.hooks[-1](x)


def _mark_bigints(obj: Any, pack, depth: int) -> Any:
    if depth > 512:
        raise EncodeError("value nested too deeply")
    t = type(obj)
    if t is int and not _INT64_MIN <= obj <= _UINT64_MAX:
        return msgpack.ExtType(EXT_BIGINT, str(obj).encode())
    if t is list:
        return [_mark_bigints(x, pack, depth + 1) for x in obj]
    if t is dict:
        return {_mark_bigints(k, pack, depth + 1): _mark_bigints(v, pack, depth + 1) for k, v in obj.items()}
    if t is tuple:
        items = [_mark_bigints(x, pack, depth + 1) for x in obj]
        return msgpack.ExtType(EXT_TUPLE, pack(items))
    return obj


_default_codec = Codec()


def encode(obj: Any) -> bytes | bytearray:
    """Encode with the default (no-pickle) codec."""
    return _default_codec.encode(obj)


def decode(data: bytes | bytearray | memoryview, *, copy: bool = True) -> Any:
    """Decode with the default (no-pickle) codec."""
    return _default_codec.decode(data, copy=copy)
