"""shmbench's exceptions, defined once.

One root, :class:`ShmbenchError`; every leaf also inherits the standard exception a caller
would naturally catch, so ``except TimeoutError`` keeps working around shmbench calls.
The C extension raises these same classes (it imports this module at load time).
"""

from __future__ import annotations

import re

__all__ = [
    "ShmbenchError",
    "ProtocolError",
    "ChannelMismatch",
    "ChannelTimeout",
    "ChannelClosed",
    "ChannelFull",
    "PeerDied",
    "PeerStalled",
    "RequestPending",
    "RemoteEnvError",
    "SpaceNotSupported",
    "EncodeError",
    "DecodeError",
    "RuntimeUnavailable",
    "ImageError",
    "DigestMismatch",
    "ExperimentError",
]


# terminal control sequences (CSI, OSC) and other control characters, which text from a
# peer must not carry into the host's terminal; tab and newline stay
_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|[\x00-\x08\x0b-\x1f\x7f-\x9f]")


_COLOR = re.compile(r"\x1b\[[0-9;]*m")


def sanitize(text: str, *, keep_colors: bool = False) -> str:
    """``text`` without terminal escape sequences and control characters (a peer wrote it).

    ``keep_colors`` keeps SGR colour sequences (``ESC [ ... m``), which only colour text:
    gymnasium's own warnings are coloured that way, and come back exactly as written."""
    if not keep_colors:
        return _CONTROL.sub("", text)
    return _CONTROL.sub(lambda m: m.group(0) if _COLOR.fullmatch(m.group(0)) else "", text)


class ShmbenchError(Exception):
    """Root of every error shmbench raises on purpose."""


class ProtocolError(ShmbenchError, ValueError):
    """The peer wrote something into shared memory that breaks the protocol.

    The peer is untrusted: garbage in the rings or the header ends here, never in a crash.
    The channel is unusable afterwards.
    """


class ChannelMismatch(ProtocolError):
    """A channel file has the wrong magic, layout version or geometry."""


class ChannelTimeout(ShmbenchError, TimeoutError):
    """A wait ran past its timeout while the peer was still alive."""


class ChannelClosed(ShmbenchError, BrokenPipeError):
    """The channel was closed, by this side or (cleanly) by the peer."""


class ChannelFull(ShmbenchError, OSError):
    """Space for a channel could not be reserved (for example a full tmpfs)."""


class PeerDied(ShmbenchError, ConnectionError):
    """The process on the other side of a channel is gone.

    Attributes:
        peer: a name for the peer (the worker and its runtime).
        exit_status: its exit status when known (negative: killed by that signal).
        log_tail: the last lines of its log when known.
    """

    def __init__(
        self,
        message: str = "peer died",
        *,
        peer: str | None = None,
        exit_status: int | None = None,
        log_tail: str | None = None,
    ) -> None:
        self.peer = peer
        self.exit_status = exit_status
        self.log_tail = log_tail = sanitize(log_tail) if log_tail else log_tail
        parts = [message]
        if peer:
            parts.append(f"peer: {peer}")
        if exit_status is not None:
            if exit_status < 0:
                parts.append(f"killed by signal {-exit_status}")
            else:
                parts.append(f"exit status {exit_status}")
        text = "; ".join(parts)
        if log_tail:
            text += "\n--- last lines of its log ---\n" + log_tail.rstrip()
        super().__init__(text)


class PeerStalled(ChannelTimeout):
    """The peer process lives but its heartbeat stopped: it is stopped (SIGSTOP, Ctrl-Z) or
    frozen. Noticed with ``timeout=None`` too; a peer busy in a long step keeps beating."""


class RequestPending(ShmbenchError, RuntimeError):
    """A request was made while an earlier one still waits for its reply (``step_async``
    without ``step_wait``): the replies would be read out of order."""


class RemoteEnvError(ShmbenchError, RuntimeError):
    """An exception raised inside the remote environment.

    The remote exception class is deliberately not rebuilt on the host (its module may not
    exist here, and rebuilding loses the traceback). Its name, message and formatted
    traceback are kept as attributes and shown in the message.
    """

    def __init__(self, type_name: str, message: str, traceback_text: str = "") -> None:
        # the peer wrote all three: no escape sequence reaches the host's terminal
        type_name, message, traceback_text = sanitize(type_name), sanitize(message), sanitize(traceback_text)
        self.type_name = type_name
        self.remote_message = message
        self.remote_traceback = traceback_text
        text = f"{type_name}: {message}"
        if traceback_text:
            text += "\n--- remote traceback ---\n" + traceback_text.rstrip()
        super().__init__(text)


class SpaceNotSupported(ShmbenchError, TypeError):
    """A gymnasium space that shmbench cannot describe or lay out."""


class EncodeError(ShmbenchError, TypeError):
    """A value that the wire codec cannot encode."""


class DecodeError(ProtocolError):
    """Bytes that are not a valid (or are an oversized) wire-codec message."""


class RuntimeUnavailable(ShmbenchError, RuntimeError):
    """A container runtime that is not installed or does not work on this machine."""


class ImageError(ShmbenchError, OSError):
    """A container image that cannot be found, fetched, unpacked or built."""


class DigestMismatch(ImageError):
    """A downloaded image whose sha256 differs from the pinned digest."""


class ExperimentError(ShmbenchError, ValueError):
    """An unknown or malformed experiment record or benchmark description."""
