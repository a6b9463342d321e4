"""shmbench.wire.protocol: the opcodes and reply heads agree with ring.h; replies are read strictly."""

from __future__ import annotations

from shmbench import _ring
from shmbench.wire.protocol import Opcode, Status


def test_opcodes_and_statuses_agree_with_protocol():
    assert _ring.OPCODES == {op.name: op.value for op in Opcode}
    assert _ring.STATUSES == {st.name: st.value for st in Status}
    assert len(set(_ring.OPCODES.values())) == len(_ring.OPCODES)


def test_step_reply_head_agrees_with_the_protocol():
    from shmbench.wire.protocol import STEP_REPLY, STEP_REPLY_F

    assert _ring.STEP_REPLY_SIZE == STEP_REPLY.size == STEP_REPLY_F.size == 16
