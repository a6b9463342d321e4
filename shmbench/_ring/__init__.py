"""The C extension's package: shared-memory rings with futex wake-ups (``_ring.c``, ``ring.h``).

The compiled module is ``shmbench._ring._ring``; this package re-exports its names, so the
rest of shmbench writes ``from shmbench import _ring`` and ``_ring.Channel``. The source
folder and the extension are one package on purpose: were the folder a sibling of an
extension called ``shmbench._ring``, a checkout without an in-place build would import the
folder as an empty namespace package and fail far from the cause.
"""

from __future__ import annotations

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
except ModuleNotFoundError as exc:
    if exc.name != "shmbench._ring._ring":
        raise
    import os as _os

    raise ImportError(
        "shmbench's C extension (shmbench._ring._ring) is not built: this shmbench is a source "
        f"tree ({_os.path.dirname(_os.path.dirname(__file__))}) without an in-place build. "
        "Install it (pip install -e . in the checkout, or pip install shmbench), or build it "
        "in place with: python setup.py build_ext --inplace"
    ) from None

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
