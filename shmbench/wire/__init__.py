"""What crosses between host and server: the protocol, space descriptions, the codec.

Owns: :mod:`~shmbench.wire.protocol` (opcodes, statuses, every reply's shape),
:mod:`~shmbench.wire.spaces` (describe/rebuild spaces), :mod:`~shmbench.wire.slab`
(their values as slab leaves: flatten, build, lay out),
:mod:`~shmbench.wire.specs` (an env's spec as data), :mod:`~shmbench.wire.codec` (the
slow-path codec) and :mod:`~shmbench.wire.strict_json`. Imports only :mod:`shmbench.errors`,
numpy, gymnasium and msgpack: both sides, the light container one included, need it.
"""
