"""shmbench.wire.codec: exact round trips (hypothesis), zero-copy decoding, and hostile input.

"Exact" means: the same Python types all the way down (a tuple stays a tuple, np.float32
stays np.float32, True stays a bool), the same dtypes including byte order, and floats
equal bit for bit (nan payloads and -0.0 included).
"""

from __future__ import annotations

import math
import struct
import time
import tracemalloc

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from shmbench import _ring
from shmbench.errors import DecodeError, EncodeError, ProtocolError, ShmbenchError
from shmbench.wire import codec
from shmbench.wire.codec import Codec, decode, encode

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


# ======================================================================================
# Exact comparison
# ======================================================================================


def same(a, b, path="x") -> None:
    """Asserts that b is exactly a: types, dtypes, shapes and bits."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} came back as {type(b).__name__}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.dtype.str == b.dtype.str, f"{path}: dtype {a.dtype} -> {b.dtype}"
        assert a.shape == b.shape, f"{path}: shape {a.shape} -> {b.shape}"
        assert a.tobytes() == b.tobytes(), f"{path}: array bytes differ"
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype, f"{path}: dtype {a.dtype} -> {b.dtype}"
        assert a.tobytes() == b.tobytes(), f"{path}: scalar bytes differ"
    elif isinstance(a, float):
        assert struct.pack("<d", a) == struct.pack("<d", b), f"{path}: {a!r} -> {b!r}"
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: length {len(a)} -> {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{path}[{i}]")
    elif isinstance(a, dict):
        assert len(a) == len(b), f"{path}: {len(a)} keys -> {len(b)}"
        for (ka, va), (kb, vb) in zip(a.items(), b.items()):
            same(ka, kb, f"{path} key")
            same(va, vb, f"{path}[{ka!r}]")
    else:
        assert a == b, f"{path}: {a!r} -> {b!r}"


def test_same_detects_differences():
    """The comparison these tests rely on does fail when it should."""
    for a, b in [
        ((1,), [1]),
        (1, True),
        (0.0, -0.0),
        (float("nan"), struct.unpack("<d", b"\x01\0\0\0\0\0\xf8\x7f")[0]),
        (np.float32(1), np.float64(1)),
        (np.zeros(2, "<i4"), np.zeros(2, ">i4")),
        (np.zeros((2, 1)), np.zeros((1, 2))),
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}),
    ]:
        with pytest.raises(AssertionError):
            same(a, b)


# ======================================================================================
# Strategies
# ======================================================================================


def _dtypes(void: bool = True):
    scalar = (
        hnp.boolean_dtypes()
        | hnp.integer_dtypes(endianness="?")
        | hnp.unsigned_integer_dtypes(endianness="?")
        | hnp.floating_dtypes(endianness="?")
        | hnp.complex_number_dtypes(endianness="?")
        | hnp.datetime64_dtypes(endianness="?")
        | hnp.timedelta64_dtypes(endianness="?")
        | hnp.byte_string_dtypes(endianness="?", min_len=1, max_len=8)
        | hnp.unicode_string_dtypes(endianness="?", min_len=1, max_len=8)
    )
    structured = hnp.array_dtypes(subtype_strategy=scalar, min_size=1, max_size=4, allow_subarrays=True)
    nested = hnp.nested_dtypes(subtype_strategy=scalar, max_leaves=5, max_itemsize=64)
    raw = st.sampled_from([np.dtype("V1"), np.dtype("V3"), np.dtype("V16")])
    return scalar | structured | nested | raw if void else scalar | structured | nested


def _values_of(dtype: np.dtype, shape: tuple):
    if dtype.kind == "V" and dtype.fields is None:  # raw void: any bytes (no inference)
        n = dtype.itemsize * math.prod(shape)
        return st.binary(min_size=n, max_size=n).map(lambda b: np.frombuffer(b, dtype).reshape(shape))
    return hnp.arrays(dtype, shape)


@st.composite
def arrays(draw):
    dtype = draw(_dtypes())
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4))
    arr = draw(_values_of(dtype, shape))
    how = draw(st.sampled_from(["as-is", "strided", "transposed", "fortran", "readonly"]))
    if how == "strided" and arr.ndim:
        arr = arr[tuple(slice(None, None, draw(st.sampled_from([-1, 2, -2]))) for _ in range(arr.ndim))]
    elif how == "transposed":
        arr = arr.T
    elif how == "fortran":
        arr = np.asfortranarray(arr)
    elif how == "readonly":
        arr = arr.copy()
        arr.flags.writeable = False
    return arr


@st.composite
def numpy_scalars(draw):
    dtype = draw(_dtypes())
    return draw(_values_of(dtype, ()))[()]


floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [
        -0.0,
        0.0,
        math.inf,
        -math.inf,
        struct.unpack("<d", b"\x01\0\0\0\0\0\xf8\x7f")[0],
        struct.unpack("<d", b"\xff\xff\xff\xff\xff\xff\xff\xff")[0],
        5e-324,
    ]
)
ints = st.integers() | st.sampled_from(
    [-(1 << 63), (1 << 63) - 1, 1 << 63, (1 << 64) - 1, 1 << 64, -(1 << 63) - 1, 10**40, -(10**40)]
)
leaves = (
    st.none()
    | st.booleans()
    | ints
    | floats
    | st.text(max_size=30)
    | st.binary(max_size=30)
    | numpy_scalars()
    | arrays()
)
keys = (
    st.text(max_size=10)
    | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.binary(max_size=10)
    | st.none()
    | st.tuples(st.text(max_size=3), st.integers(0, 9))
)
values = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=5)
        | st.lists(children, max_size=5).map(tuple)
        | st.dictionaries(keys, children, max_size=5)
    ),
    max_leaves=16,
)


# ======================================================================================
# Round trips
# ======================================================================================


@SETTINGS
@given(values)
def test_round_trip_is_exact(value):
    data = encode(value)
    same(value, decode(data))
    same(value, decode(bytes(data)))
    same(value, decode(memoryview(data)))


@SETTINGS
@given(arrays())
def test_arrays_round_trip_with_their_dtype_and_shape(arr):
    out = decode(encode(arr))
    same(np.ascontiguousarray(arr) if arr.ndim else arr, out)
    assert out.flags.c_contiguous and out.flags.writeable and out.flags.owndata


@SETTINGS
@given(numpy_scalars())
def test_numpy_scalars_round_trip(x):
    same(x, decode(encode(x)))


KNOWN = [
    None,
    True,
    False,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    2**64,
    -(2**64),
    10**100,
    -(10**100),
    0.0,
    -0.0,
    float("nan"),
    float("inf"),
    -float("inf"),
    "",
    "ü€😀",
    b"",
    b"\0" * 5,
    [],
    (),
    {},
    [()],
    ((),),
    {(): ()},
    {1: "a", "1": b"a", b"1": None, None: 1, (1, "a"): [1]},
    np.float32(1.5),
    np.float16(-0.0),
    np.int8(-1),
    np.uint64(2**64 - 1),
    np.bool_(True),
    np.complex64(1 + 2j),
    np.datetime64("2024-01-01T12:00", "ms"),
    np.timedelta64("NaT"),
    np.str_(""),
    np.str_("ab"),
    np.bytes_(b""),
    np.void(b"xy"),
    np.zeros((0, 3), np.float32),
    np.zeros((2, 0), "<U3"),
    np.array(3.5),
    np.array("x"),
    np.arange(12, dtype=">i8").reshape(3, 4)[:, ::2],
    np.zeros((3,), "V0"),
    np.array([(1, 2.0)], dtype=[("a", "<i2"), ("b", ">f8")]),
    np.array([("2024-01-01", b"ab")], dtype=[("t", "M8[D]"), ("s", "S2")]),
    np.array([[1, 2], [3, 4]], dtype=np.uint8).T,
]


def test_known_values_round_trip():
    for value in KNOWN:
        expected = np.ascontiguousarray(value) if isinstance(value, np.ndarray) and value.ndim else value
        same(expected, decode(encode(value)), repr(value))


def test_nan_payloads_and_negative_zero_are_bit_exact():
    odd_nan = struct.unpack("<d", b"\x01\x02\x03\x04\x05\x06\xf8\x7f")[0]
    out = decode(encode([odd_nan, -0.0, np.float32(-0.0), np.array([odd_nan, -0.0])]))
    assert struct.pack("<d", out[0]) == b"\x01\x02\x03\x04\x05\x06\xf8\x7f"
    assert math.copysign(1, out[1]) == -1 and math.copysign(1, out[2]) == -1
    assert out[3].tobytes() == np.array([odd_nan, -0.0]).tobytes()


def test_copy_false_gives_read_only_views_of_the_message():
    arrays_in = [np.arange(1000, dtype=np.float64), np.ones((3, 4), dtype=">i2"), np.zeros(0)]
    data = bytes(encode({"a": arrays_in, "b": ("x", arrays_in[1])}))
    lo = np.frombuffer(data, np.uint8).ctypes.data
    out = decode(data, copy=False)
    for arr in (*out["a"], out["b"][1]):
        if arr.size:
            assert lo <= arr.ctypes.data < lo + len(data), "not a view of the message"
            assert arr.ctypes.data % 16 == (lo % 16)  # aligned as encoded
        assert not arr.flags.writeable and not arr.flags.owndata
    same(arrays_in, [np.asarray(a) for a in out["a"]])
    copied = decode(data, copy=True)
    for arr in copied["a"]:
        assert arr.flags.owndata and arr.flags.writeable
        if arr.size:
            assert not (lo <= arr.ctypes.data < lo + len(data))


def test_copy_false_from_a_bytearray_sees_later_writes():
    data = encode(np.zeros(4, np.uint8))
    view = decode(data, copy=False)
    data[-16] = 7  # first array byte: the array section is the last 16 bytes here
    assert view[0] == 7


# ======================================================================================
# Refusals
# ======================================================================================


class Custom:
    def __init__(self, x):
        self.x = x

    def __eq__(self, other):
        return type(other) is Custom and other.x == self.x


def test_unsupported_values_raise_encode_error():
    for value in [
        object(),
        {1, 2},
        1 + 2j,
        Custom(1),
        [Custom(2)],
        {"k": frozenset()},
        np.array([1, "a"], dtype=object),
        np.zeros(2, dtype=[("a", "O"), ("b", "<i4")]),
        {"deep": [np.array([None])]},
        10**5000,
    ]:
        with pytest.raises(EncodeError):
            encode(value)


def test_object_arrays_are_refused_with_a_clear_message():
    with pytest.raises(EncodeError, match="Python objects"):
        encode(np.array([{}], dtype=object))
    with pytest.raises(EncodeError, match="Python objects"):
        Codec(allow_pickle=True).encode(np.array([{}], dtype=object))


def test_pickle_only_when_both_sides_opt_in():
    trusted = Codec(allow_pickle=True)
    value = {"s": {1, 2, 3}, "c": Custom(5), "arr": np.arange(3)}
    data = trusted.encode(value)
    out = trusted.decode(data)
    assert out["s"] == {1, 2, 3} and out["c"] == Custom(5)
    same(value["arr"], out["arr"])
    with pytest.raises(DecodeError, match="refusing to unpickle"):
        decode(data)
    with pytest.raises(EncodeError, match="allow_pickle"):
        encode(value)


def test_hostile_pickle_is_never_run(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    data = Codec(allow_pickle=True).encode(Evil())
    with pytest.raises(DecodeError):
        decode(data)
    assert not marker.exists()


def test_too_deep_values():
    deep = ()
    for _ in range(200):
        deep = (deep,)
    with pytest.raises(EncodeError):
        encode(deep)
    lst = []
    for _ in range(5000):
        lst = [lst]
    with pytest.raises(EncodeError):
        encode(lst)


def test_max_message_is_enforced():
    small = Codec(max_message=100)
    with pytest.raises(DecodeError, match="max_message"):
        small.decode(encode(bytes(200)))


# ======================================================================================
# Hostile bytes: only DecodeError, bounded time and memory
# ======================================================================================


def _decode_only_decode_error(data: bytes, copy: bool) -> None:
    t = time.perf_counter()
    try:
        decode(data, copy=copy)
    except DecodeError:
        pass
    took = time.perf_counter() - t
    assert took < 2.0, f"decoding {len(data)} bytes took {took:.1f} s"


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_random_bytes_only_raise_decode_error(data, copy):
    _decode_only_decode_error(data, copy)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values, st.data())
def test_mutated_messages_only_raise_decode_error(value, data):
    msg = bytearray(encode(value))
    for _ in range(data.draw(st.integers(1, 8))):
        kind = data.draw(st.sampled_from(["flip", "set", "cut", "grow", "splice"]))
        if kind == "flip" and msg:
            i = data.draw(st.integers(0, len(msg) - 1))
            msg[i] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "set" and msg:
            i = data.draw(st.integers(0, len(msg) - 1))
            msg[i] = data.draw(
                st.sampled_from([0, 0x7F, 0x80, 0xC1, 0xC7, 0xC9, 0xD4, 0xD8, 0xDC, 0xDD, 0xDF, 0xFF, 2, 4, 6])
            )
        elif kind == "cut":
            msg = msg[: data.draw(st.integers(0, len(msg)))]
        elif kind == "grow":
            msg += data.draw(st.binary(max_size=40))
        elif kind == "splice" and len(msg) > 8:
            i = data.draw(st.integers(4, len(msg) - 4))
            msg[i : i + 4] = struct.pack("<I", data.draw(st.sampled_from([0, 1, 2**31, 2**32 - 1])))
    _decode_only_decode_error(bytes(msg), data.draw(st.booleans()))


def _message(doc_obj, tail: bytes = bytes(64)) -> bytes:
    doc = msgpack.packb(doc_obj, use_bin_type=True)
    return struct.pack("<I", len(doc)) + doc + tail


def _ext(code: int, obj) -> msgpack.ExtType:
    return msgpack.ExtType(code, msgpack.packb(obj, use_bin_type=True))


HOSTILE = {
    "huge doc length": struct.pack("<I", 2**32 - 1) + b"\x90",
    "huge array count": struct.pack("<I", 5) + b"\xdd\xff\xff\xff\xff",
    "huge map count": struct.pack("<I", 5) + b"\xdf\xff\xff\xff\xff",
    "huge bin length": struct.pack("<I", 5) + b"\xc6\xff\xff\xff\xff",
    "object dtype": _message(_ext(2, ["|O8", [1], 0, 8])),
    "object field": _message(_ext(2, [[["a", "|O"]], [1], 0, 8])),
    "python object dtype str": _message(_ext(2, ["object", [1], 0, 8])),
    "array past the end": _message(_ext(2, ["<f8", [1000], 0, 8000])),
    "negative offset": _message(_ext(2, ["<f8", [1], -16, 8])),
    "size mismatch": _message(_ext(2, ["<f8", [2], 0, 8])),
    "huge shape": _message(_ext(2, ["<f8", [2**62, 2**62], 0, 0])),
    "many empty items": _message(_ext(2, ["|V0", [2**62, 2**62], 0, 0])),
    "bigint shape": _message(_ext(2, ["|V0", [msgpack.ExtType(4, b"9" * 40)], 0, 0])),
    "too many dims": _message(_ext(2, ["<f8", [1] * 100, 0, 8])),
    "bad dtype": _message(_ext(2, ["<f8; import os", [1], 0, 8])),
    "nested subarray": _message(_ext(2, [[["a", "<f8", [2**40]]], [1], 0, 8])),
    "deep tuples": _message(msgpack.ExtType(1, b"\x91" * 3000 + b"\xc0")),
    "bad scalar": _message(_ext(3, ["<f8", b"\0" * 7])),
    "bad bigint": _message(msgpack.ExtType(4, b"12a")),
    "long bigint": _message(msgpack.ExtType(4, b"9" * 5000)),
    "pickle": _message(msgpack.ExtType(6, b"cos\nsystem\n(S'true'\ntR.")),
    "unknown ext": _message(msgpack.ExtType(99, b"")),
    "bad timestamp ext": struct.pack("<I", 5) + b"\xd5\xff\0\0\0",  # msgpack's ext -1
    "unhashable key": struct.pack("<I", 3) + b"\x81\x90\x01",  # {[]: 1}
    "short": b"\x01\0",
}


def test_hostile_messages_raise_decode_error():
    assert issubclass(DecodeError, ProtocolError) and issubclass(DecodeError, ShmbenchError)
    for name, data in HOSTILE.items():
        try:
            value = decode(data)
        except DecodeError:
            continue
        raise AssertionError(f"{name}: decoded to {value!r:.100} instead of raising DecodeError")


def test_hostile_messages_allocate_little():
    tracemalloc.start()
    try:
        for name, data in HOSTILE.items():
            tracemalloc.reset_peak()
            with pytest.raises(DecodeError):
                decode(data)
            peak = tracemalloc.get_traced_memory()[1]
            assert peak < 1 << 20, f"{name}: decoding {len(data)} bytes peaked at {peak} bytes"
    finally:
        tracemalloc.stop()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_random_bytes_allocate_little(data):
    tracemalloc.start()
    try:
        try:
            decode(data)
        except DecodeError:
            pass
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()


def test_forged_msgpack_timestamps_come_back_as_ints():
    """msgpack decodes its ext -1 itself; it must not smuggle a foreign type into the host."""
    assert decode(struct.pack("<I", 6) + b"\xd6\xff\0\0\0\x05") == 5 * 10**9


def test_decoder_state_is_not_shared_between_messages():
    """A failed decode leaves nothing behind that changes the next one."""
    good = encode({"a": (1, np.arange(3))})
    for bad in HOSTILE.values():
        with pytest.raises(DecodeError):
            decode(bad)
        same({"a": (1, np.arange(3))}, decode(good))


def test_module_constants():
    assert codec.MAX_DEPTH >= 16


# ------------------------------------------------------------------ the decoding budget


def _measured(doc: bytes) -> int:
    """What decoding ``doc`` with the codec allocates at its peak (tracemalloc)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        value = Codec().decode(codec._HEAD.pack(len(doc)) + doc)
        peak = tracemalloc.get_traced_memory()[1] - base
        del value
    finally:
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize(
    "value",
    [
        [{}] * 20000,
        [[]] * 20000,
        [f"abc{i}" for i in range(20000)],
        {f"k{i}": i * 1000 for i in range(5000)},
        [1.5] * 20000,
        [(1, 2.5, "x")] * 3000,
        [np.float32(1.5)] * 3000,
    ],
)
def test_decode_cost_bounds_what_decoding_allocates(value):
    """The C cost scanner's estimate is within a small factor of what decoding really takes
    (never far below: the budget would not hold; never far above: honest messages pass)."""
    message = Codec().encode(value)
    doc = bytes(memoryview(message)[codec._HEAD.size :])[: codec._HEAD.unpack_from(message)[0]]
    estimate = _ring.decode_cost(doc, 1 << 40)
    real = _measured(doc)
    assert 0.5 * real <= estimate <= 3 * real + 4096, (estimate, real)


def test_decode_cost_stops_at_the_limit_and_refuses_garbage():
    doc = msgpack.packb([{}] * 100000)
    assert _ring.decode_cost(doc, 1000) == 1001  # stops early, once over
    assert _ring.decode_cost(doc[:-1], 1 << 40) == -1  # truncated
    assert _ring.decode_cost(b"\xc1", 1 << 40) == -1  # a byte MessagePack never uses
    assert _ring.decode_cost(b"\x91" * 100000 + b"\xc0", 1 << 40) == -1  # deeper than its stack
    assert _ring.decode_cost(b"", 1 << 40) == -1


@given(st.binary(max_size=4096))
@SETTINGS
def test_decode_cost_of_random_bytes_never_crashes(data):
    cost = _ring.decode_cost(data, 1 << 30)
    assert cost == -1 or cost >= 0


def test_a_large_document_over_budget_is_refused_before_decoding():
    doc = msgpack.packb([{}] * (1 << 20))  # 1 MiB of bytes, ~100 MiB of dicts
    with pytest.raises(DecodeError, match="would decode into more than"):
        Codec(max_decoded_extra=1 << 20).decode(codec._HEAD.pack(len(doc)) + doc)


@pytest.mark.parametrize("ext", [codec.EXT_NDARRAY, codec.EXT_NPSCALAR])
def test_a_bomb_inside_an_array_or_scalar_record_is_refused(ext):
    doc = msgpack.packb([msgpack.ExtType(ext, msgpack.packb([{}] * (1 << 20)))])
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError, match="would decode into too much"):
            Codec().decode(codec._HEAD.pack(len(doc)) + doc)
        assert tracemalloc.get_traced_memory()[1] < 16 << 20
    finally:
        tracemalloc.stop()
