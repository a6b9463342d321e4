"""A server of another protocol version: the real ``shmbench.server`` with its
PROTOCOL_VERSION patched -- a test double for an image built with an older (or newer)
shmbench, whose server answers the handshake as usual but means other things by it.

    python old_server.py VERSION
"""

from __future__ import annotations

import sys

import shmbench.server.core as core

if __name__ == "__main__":
    core.PROTOCOL_VERSION = int(sys.argv[1])
    sys.exit(core.main([]))
