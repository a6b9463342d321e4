"""The vector server's two C kernels (``wire.slab.fill_rows`` and ``store_step``): each
must do exactly what the numpy code it replaces does, or decline and leave its output
untouched so that the numpy code runs instead."""

from __future__ import annotations

import numpy as np
import pytest

from shmbench.wire.slab import fill_rows, store_step


def test_fill_rows_copies_exact_rows_like_np_stack():
    items = [np.arange(6, dtype=np.float32).reshape(2, 3) + i for i in range(4)]
    dst = np.zeros((4, 2, 3), np.float32)
    assert fill_rows(dst, items) is True
    np.testing.assert_array_equal(dst, np.stack(items))


def test_fill_rows_reads_fresh_arrays_without_a_buffer_export_and_equal_dtypes_with_one():
    """Fresh arrays of the very dtype object (what envs return each step) are read from
    numpy's fields; an equal dtype that is another object (here: with metadata) takes the
    buffer protocol: both copy exactly. Rows that are already the slab's are left alone."""
    dst = np.zeros((3, 4), np.float32)
    fresh = [np.array([i, i + 0.5, -i, 7], dtype=np.float32) for i in range(3)]
    assert fill_rows(dst, fresh) is True
    np.testing.assert_array_equal(dst, np.stack(fresh))
    tagged = np.dtype(np.float32, metadata={"unit": "m"})
    assert tagged == dst.dtype and tagged is not dst.dtype
    others = [np.full(4, i + 10, dtype=tagged) for i in range(3)]
    assert fill_rows(dst, others) is True
    np.testing.assert_array_equal(dst, np.stack(others).astype(np.float32))
    before = dst.copy()
    assert fill_rows(dst, [dst[0], dst[1], dst[2]]) is True  # an env writing into its row
    np.testing.assert_array_equal(dst, before)
    swapped = [np.ones(4, dtype=">f4")] * 3  # same shape and size, another byte order
    assert fill_rows(dst, swapped) is False
    np.testing.assert_array_equal(dst, before)


@pytest.mark.parametrize(
    "misfit",
    [
        np.zeros((2, 3), np.float64),  # another dtype
        np.zeros((3, 2), np.float32),  # another shape, same size
        np.zeros((2, 4), np.float32)[:, :3],  # not contiguous
        [[0.0] * 3] * 2,  # not an array
        np.float32(0),  # a scalar
    ],
)
def test_fill_rows_declines_a_misfit_and_writes_nothing(misfit):
    items = [np.ones((2, 3), np.float32) for _ in range(3)] + [misfit]
    dst = np.full((4, 2, 3), 7, np.float32)
    assert fill_rows(dst, items) is False
    assert (dst == 7).all()  # the misfit is last: the checks ran before any copy


def test_fill_rows_declines_a_count_mismatch_and_needs_a_list():
    dst = np.zeros((2, 3), np.int64)
    assert fill_rows(dst, [np.zeros(3, np.int64)]) is False
    assert fill_rows(dst, []) is False
    with pytest.raises(TypeError):
        fill_rows(dst, (np.zeros(3, np.int64),) * 2)
    with pytest.raises(ValueError):
        fill_rows(np.zeros((2, 3), np.int64)[::-1], [np.zeros(3, np.int64)] * 2)  # dst not C-contiguous


def _numpy_store(rewards, terms, truncs, r, t, u):
    rewards[:] = r
    terms[:] = t
    truncs[:] = u
    return list(np.logical_or(terms, truncs))


@pytest.mark.parametrize(
    "r, t, u",
    [
        ([1.0, -2.5, 0.0], [False, True, False], [False, False, True]),
        ([1, np.float32(0.1), np.int64(3)], [np.bool_(True), 0, 1], [False, np.bool_(False), True]),
        ([True, 2**53, -0.0], [1, 0, 0], [0, 0, 0]),
    ],
)
def test_store_step_matches_numpy_item_assignment(r, t, u):
    got = np.zeros(3), np.zeros(3, bool), np.zeros(3, bool)
    ref = np.zeros(3), np.zeros(3, bool), np.zeros(3, bool)
    autoreset = store_step(*got, list(r), list(t), list(u))
    assert autoreset == _numpy_store(*ref, r, t, u)
    assert all(type(x) is bool for x in autoreset)
    for a, b in zip(got, ref, strict=True):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize(
    "r, t, u",
    [
        (["1.0", 0.0], [False, False], [False, False]),  # a string is not a plain number
        ([1.0, np.zeros(2)], [False, False], [False, False]),  # an array is not either
        ([1.0, 0.0], [False, None], [False, False]),  # nor is None
        ([1.0, 2**1100], [False, False], [False, False]),  # overflows float()
        ([1.0], [False, False], [False, False]),  # lengths differ
    ],
)
def test_store_step_declines_anything_else_and_writes_nothing(r, t, u):
    arrays = np.full(2, 9.0), np.ones(2, bool), np.ones(2, bool)
    assert store_step(*arrays, r, t, u) is None
    assert (arrays[0] == 9.0).all() and arrays[1].all() and arrays[2].all()


def test_store_step_declines_arrays_of_other_kinds():
    lists = [0.0, 1.0], [False, True], [False, False]
    assert store_step(np.zeros(2, np.float32), np.zeros(2, bool), np.zeros(2, bool), *lists) is None
    assert store_step(np.zeros(2), np.zeros(2, np.uint8), np.zeros(2, bool), *lists) is None
    assert store_step(np.zeros(3), np.zeros(2, bool), np.zeros(2, bool), *lists) is None
