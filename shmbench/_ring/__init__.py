"""The C extension's package: shared-memory rings with futex wake-ups (``_ring.c``, ``ring.h``).

The compiled module is ``shmbench._ring._ring`` (or, in an image whose Python is not the
host's, its stable-ABI build ``_ring_abi3``); this package re-exports its names, so the
rest of shmbench writes ``from shmbench import _ring`` and ``_ring.Channel``. The source
folder and the extension are one package on purpose: were the folder a sibling of an
extension called ``shmbench._ring``, a checkout without an in-place build would import the
folder as an empty namespace package and fail far from the cause.
"""

from __future__ import annotations


def _stable_abi_build() -> None:
    """Stand the stable-ABI build in for the full one: a server the host injects into an
    image whose Python is another CPython >= 3.11 loads ``_ring_abi3`` (the same C source,
    on Py_LIMITED_API 3.11), not ``_ring`` (built for the host's Python only)."""
    import importlib
    import os
    import sys

    try:
        sys.modules["shmbench._ring._ring"] = importlib.import_module("shmbench._ring._ring_abi3")
    except ModuleNotFoundError as exc:
        if exc.name != "shmbench._ring._ring_abi3":
            raise
        raise ImportError(
            "shmbench's C extension (shmbench._ring._ring) is not built: this shmbench is a source "
            f"tree ({os.path.dirname(os.path.dirname(__file__))}) without an in-place build. "
            "Install it (pip install -e . in the checkout, or pip install shmbench), or build it "
            "in place with: python setup.py build_ext --inplace"
        ) from None


for _attempt in ("full", "stable ABI"):
    try:
        from shmbench._ring._ring import (
            HEADER_SIZE,
            HOST,
            LAYOUT_VERSION,
            OPCODES,
            RECORD_HEADER,
            SERVER,
            STATUSES,
            STEP_REPLY_SIZE,
            Channel,
            Mapping,
            decode_cost,
            fill_rows,
            layout_size,
            store_step,
            wait_any,
        )

        break
    except ModuleNotFoundError as exc:
        if exc.name != "shmbench._ring._ring" or _attempt != "full":
            raise
        _stable_abi_build()

__all__ = [
    "HEADER_SIZE",
    "HOST",
    "LAYOUT_VERSION",
    "OPCODES",
    "RECORD_HEADER",
    "SERVER",
    "STATUSES",
    "STEP_REPLY_SIZE",
    "Channel",
    "Mapping",
    "decode_cost",
    "fill_rows",
    "layout_size",
    "store_step",
    "wait_any",
]
