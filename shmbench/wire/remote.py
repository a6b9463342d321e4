"""What the server reports besides results -- the env's exceptions and warnings -- and how the
host raises and re-emits them as its own classes.

The server names a class by its MRO (``[[module, qualname], ...]``), never by an object.
The host looks each name up, in order, among classes already loaded in a few modules it
trusts (``builtins``, ``gymnasium.error``, ``numpy.exceptions``): nothing the server says
is imported or executed. So an env's ``ValueError`` -- or its own subclass of it -- is
raised on the host as a class that is both ``ValueError`` and
:class:`~shmbench.errors.RemoteEnvError` (the remote traceback kept), an unknown id as
gymnasium's ``NameNotFound``; and a warning comes back with its category (gymnasium's,
numpy's or a builtin one), its message and where it was raised, filtered by the host's
own warning filters and registries, so it shows once per occurrence as it would natively.
"""

from __future__ import annotations

import sys
import traceback
import warnings
from typing import Any

from shmbench.errors import ProtocolError, RemoteEnvError, sanitize

__all__ = ["error_payload", "raise_remote", "remote_class", "WarningCollector", "emit_warnings"]

#: modules whose already-loaded classes may stand for a remote class, looked up by name
TRUSTED_MODULES = ("builtins", "gymnasium.error", "numpy.exceptions")
#: warnings one reply may carry (an env warning on every step of a long call: the rest are counted)
MAX_WARNINGS = 64


def _mro(cls: type) -> list[list[str]]:
    return [[c.__module__, c.__qualname__] for c in cls.__mro__ if c is not object]


def remote_class(mro: Any, base: type) -> type | None:
    """The first class of a remote MRO that this process has loaded in a trusted module and
    that subclasses ``base``; None when there is none."""
    if not isinstance(mro, list):
        return None
    for entry in mro[:64]:
        if not (isinstance(entry, list) and len(entry) == 2 and all(type(x) is str for x in entry)):
            continue
        module, name = entry
        if module not in TRUSTED_MODULES or "." in name:
            continue
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and issubclass(cls, base):
            return cls
    return None


# ------------------------------------------------------------------------------------------
# exceptions
# ------------------------------------------------------------------------------------------


def error_payload(exc: BaseException) -> dict:
    """What the server sends for an exception in the env: names and text, never the object."""
    return {
        "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "mro": _mro(type(exc)),
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }


_DUALS: dict[type, type] = {}


def _dual(base: type) -> type:
    """A class that is both ``base`` and RemoteEnvError (made once per base)."""
    cls = _DUALS.get(base)
    if cls is None:

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            # built on the host as the base class would be (code that re-raises
            # ``type(e)(message)``, as gymnasium.make does): a RemoteEnvError of that text
            base.__init__(self, *args, **kwargs)  # type: ignore[misc]  # the base's own constructor, on purpose
            self.type_name = f"{base.__module__}.{base.__qualname__}"
            self.remote_message = str(args[0]) if args else ""
            self.remote_traceback = ""

        def __new__(cls: type, *args: Any, **kwargs: Any) -> Any:
            return base.__new__(cls, *args, **kwargs)  # the base's memory layout (OSError's...)

        cls = type(
            f"Remote{base.__name__}",
            (RemoteEnvError, base),
            {
                "__module__": "shmbench.errors",
                "__doc__": f"A {base.__name__} raised inside the remote env (also a RemoteEnvError).",
                "__new__": __new__,
                "__init__": __init__,
                "__str__": BaseException.__str__,  # not KeyError's quoting of its argument
            },
        )
        _DUALS[base] = cls
    return cls


def _remote_error(payload: dict, type_name: str, message: str, tb: str) -> RemoteEnvError:
    base = remote_class(payload.get("mro"), Exception)
    if base is not None and not issubclass(base, RemoteEnvError):
        try:
            cls = _dual(base)
            exc: RemoteEnvError = base.__new__(cls)
            RemoteEnvError.__init__(exc, type_name, message, tb)
            return exc
        except TypeError:
            pass  # a layout or constructor that refuses a second base: the plain error
    return RemoteEnvError(type_name, message, tb)


def raise_remote(payload: Any) -> None:
    """Raise the env's exception from an error payload (validated: it comes from the peer)."""
    if not isinstance(payload, dict):
        raise ProtocolError("malformed error reply")
    type_name = payload.get("type")
    message = payload.get("message")
    tb = payload.get("traceback", "")
    if not isinstance(type_name, str) or not isinstance(message, str) or not isinstance(tb, str):
        raise ProtocolError("malformed error reply")
    raise _remote_error(payload, type_name, message, tb)


# ------------------------------------------------------------------------------------------
# warnings
# ------------------------------------------------------------------------------------------


class WarningCollector:
    """The server's side: every warning raised in it is noted (``warnings.showwarning``),
    none is shown there, and the host decides with its own filters.

    :meth:`install` makes every warning reach the collector (the ``always`` action: the
    host's filters and registries do the de-duplication natively done here); ``pending``
    is empty unless something warned, so checking it costs the hot path nothing.
    """

    def __init__(self) -> None:
        self.pending: list[dict] = []
        self.dropped = 0

    def install(self) -> None:
        warnings.simplefilter("always")
        warnings.showwarning = self._note

    def _note(
        self, message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None
    ) -> None:
        if len(self.pending) >= MAX_WARNINGS:
            self.dropped += 1
            return
        self.pending.append(
            {
                "mro": _mro(category),
                "category": f"{category.__module__}.{category.__qualname__}",
                "message": str(message),
                "filename": str(filename),
                "lineno": int(lineno),
                "module": _module_of(filename, lineno),
            }
        )

    def take(self) -> dict:
        """The notes for the next reply (and forget them)."""
        notes: dict = {"warnings": list(self.pending)}
        if self.dropped:
            notes["dropped"] = self.dropped
        self.pending.clear()  # in place: the server's hot path holds this list
        self.dropped = 0
        return notes


def _module_of(filename: str, lineno: int) -> str | None:
    """The ``__name__`` of the module that warned (the frame at ``filename:lineno``), which
    the host's filters match; None when no frame on the stack is it."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename == filename and frame.f_lineno == lineno:
            name = frame.f_globals.get("__name__")
            return name if isinstance(name, str) else None
        frame = frame.f_back  # type: ignore[assignment]
    return None


#: per remote module, the registry that stands for its __warningregistry__ on the host
_REGISTRIES: dict[str, dict] = {}


def emit_warnings(notes: Any) -> None:
    """Re-emit the warnings of a reply's notes on the host (validated: the peer wrote them).

    Each goes through ``warnings.warn_explicit`` with its category, message, location and
    a registry per remote module, so the host's filters decide: shown once per location
    with the default action, raised with ``error``, ignored with ``ignore``.
    """
    if not isinstance(notes, dict):
        raise ProtocolError("malformed reply notes")
    entries = notes.get("warnings", ())
    if not isinstance(entries, list):
        raise ProtocolError("malformed warnings in reply notes")
    for w in entries:
        if not isinstance(w, dict):
            raise ProtocolError("malformed warning in reply notes")
        message, filename, lineno = w.get("message"), w.get("filename"), w.get("lineno")
        module = w.get("module")
        if type(message) is not str or type(filename) is not str or type(lineno) is not int:
            raise ProtocolError("malformed warning in reply notes")
        if module is not None and type(module) is not str:
            raise ProtocolError("malformed warning in reply notes")
        category = remote_class(w.get("mro"), Warning) or UserWarning
        module = sanitize(module) if module else sanitize(filename).rsplit("/", 1)[-1].removesuffix(".py")
        registry = _REGISTRIES.setdefault(module, {})
        warnings.warn_explicit(
            sanitize(message, keep_colors=True), category, sanitize(filename), lineno, module=module, registry=registry
        )
    dropped = notes.get("dropped")
    if type(dropped) is int and dropped > 0:
        warnings.warn(
            f"the env server raised {dropped} more warning(s) in one call; not shown", RuntimeWarning, stacklevel=2
        )
