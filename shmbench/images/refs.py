"""Image references and pins: what names an image, and the digest that makes it trustworthy.

An experiment pins its container image by a reference *and* the sha256 digest of the image
file, so that a rerun a year later executes the same bytes or fails loudly. The forms
(:func:`parse_ref`):

- ``oras://HOST[:PORT]/REPO[:TAG|@sha256:MANIFEST]`` -- an OCI registry holding a SIF pushed
  by ``apptainer push IMAGE.sif oras://...`` (or ``shmbench push``). The pinned digest is the
  digest of the SIF file (the manifest's one layer), not of the manifest.
- ``https://...`` and ``http://...`` -- a plain download. Plain HTTP is accepted anywhere
  because the digest, not the transport, is what makes the bytes trustworthy.
- ``file:///...`` -- a file on another file system (an NFS share, a mounted bucket), copied
  into the cache like a download.
- a local path -- used in place, never copied; checked against the digest when one is given.

Turning a pin into a local file is :mod:`shmbench.images.fetch`'s job.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from shmbench.errors import ImageError

__all__ = ["ImageRef", "ImageSpec", "parse_ref", "normalize_digest", "DIGEST_RE"]

#: ``sha256:`` and 64 lower-case hex digits
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
# The OCI distribution spec's grammar for repository names and tags.
_REPO_RE = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST_RE = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?")

Scheme = Literal["oras", "https", "http", "file", "path"]


# ------------------------------------------------------------------------------- references


@dataclass(frozen=True)
class ImageRef:
    """A parsed image reference; build one with :func:`parse_ref`.

    Attributes:
        text: the reference as written.
        scheme: ``oras``, ``https``, ``http``, ``file`` or ``path`` (no scheme: a local path).
        host: ``HOST[:PORT]`` of a registry or web server (``None`` for files).
        repository: the registry repository (``oras`` only).
        tag: the tag (``oras`` only; ``latest`` when neither tag nor digest is written,
            as Apptainer does).
        manifest_digest: ``@sha256:...`` of an ``oras`` reference: the *manifest*'s digest.
        path: the file of a ``file://`` reference or a local path.
    """

    text: str
    scheme: Scheme
    host: str | None = None
    repository: str | None = None
    tag: str | None = None
    manifest_digest: str | None = None
    path: Path | None = None

    @property
    def remote(self) -> bool:
        """Whether pulling it goes through the cache (everything but a local path)."""
        return self.scheme != "path"

    @property
    def loopback(self) -> bool:
        """Whether the host is this machine (where plain HTTP is the norm for a registry)."""
        if self.host is None:
            return False
        name = _host_name(self.host)
        if name.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        return self.text


def _host_name(host: str) -> str:
    """``HOST[:PORT]`` or ``[V6]:PORT`` without the port and brackets."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.partition(":")[0]


def parse_ref(text: str) -> ImageRef:
    """Parse an image reference (see the module docstring for the forms).

    >>> parse_ref("oras://ghcr.io/shmbench/light:0.1").repository
    'shmbench/light'

    Raises:
        ImageError: the text is not a reference shmbench understands.
    """
    if not isinstance(text, str) or not text.strip():
        raise ImageError(f"an image reference must be a non-empty string, not {text!r}")
    text = text.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", text) and not text.startswith(("./", "/")):
            head = text.split(":", 1)[0].lower()
            if head in ("oras", "http", "https", "file", "docker", "library", "shub"):
                raise ImageError(f"image reference {text!r}: write {head}://..., with two slashes")
        return ImageRef(text=text, scheme="path", path=Path(text).expanduser())
    scheme = scheme.lower()
    if scheme == "oras":
        return _parse_oras(text, rest)
    if scheme in ("http", "https"):
        parts = urlsplit(text)
        if not parts.hostname or not _HOST_RE.fullmatch(parts.netloc.rpartition("@")[2]):
            raise ImageError(f"image reference {text!r}: no valid host in the URL")
        if "@" in parts.netloc:
            raise ImageError(f"image reference {text!r}: credentials in URLs are not supported")
        return ImageRef(text=text, scheme="https" if scheme == "https" else "http", host=parts.netloc)
    if scheme == "file":
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise ImageError(f"image reference {text!r}: file:// URLs must name a local file (file:///PATH)")
        if not parts.path:
            raise ImageError(f"image reference {text!r}: no path")
        return ImageRef(text=text, scheme="file", path=Path(unquote(parts.path)))
    if scheme in ("docker", "library", "shub"):
        raise ImageError(
            f"image reference {text!r}: {scheme}:// images are built or converted by Apptainer, "
            "so they cannot be pinned by a file digest; push the SIF with `apptainer push "
            "IMAGE.sif oras://...` and reference that"
        )
    raise ImageError(
        f"image reference {text!r}: unknown scheme {scheme!r} (expected oras://, https://, http://, file:// or a path)"
    )


def _parse_oras(text: str, rest: str) -> ImageRef:
    host, slash, name = rest.partition("/")
    if not slash or not host or not name:
        raise ImageError(f"image reference {text!r}: expected oras://HOST[:PORT]/REPOSITORY[:TAG]")
    if not _HOST_RE.fullmatch(host):
        raise ImageError(f"image reference {text!r}: invalid registry host {host!r}")
    manifest_digest = None
    if "@" in name:
        name, _, manifest_digest = name.partition("@")
        if not DIGEST_RE.fullmatch(manifest_digest):
            raise ImageError(f"image reference {text!r}: the part after @ must be sha256:<64 hex digits>")
    tag = None
    if ":" in name:
        name, _, tag = name.rpartition(":")
        if not _TAG_RE.fullmatch(tag):
            raise ImageError(f"image reference {text!r}: invalid tag {tag!r}")
    if not _REPO_RE.fullmatch(name):
        raise ImageError(
            f"image reference {text!r}: invalid repository {name!r} "
            "(lower-case letters, digits and . _ - separators, as OCI requires)"
        )
    if tag is None and manifest_digest is None:
        tag = "latest"
    return ImageRef(text=text, scheme="oras", host=host, repository=name, tag=tag, manifest_digest=manifest_digest)


def normalize_digest(digest: str) -> str:
    """Return ``digest`` as ``sha256:<64 lower-case hex digits>``.

    Raises:
        ImageError: not a sha256 digest (other algorithms are refused rather than guessed).
    """
    if isinstance(digest, str):
        text = digest.strip()
        if text[:7].lower() == "sha256:" and DIGEST_RE.fullmatch("sha256:" + text[7:].lower()):
            return "sha256:" + text[7:].lower()
    raise ImageError(f"an image digest must be 'sha256:' and 64 hex digits, not {digest!r}")


@dataclass(frozen=True)
class ImageSpec:
    """A pinned image: a reference and the sha256 digest of the image file -- and/or the
    recipe it is built from.

    A remote reference must carry a digest: the cache is keyed by it and nothing unverified
    may run. A local path may omit it (then the file is used as it is). A ``recipe`` (a
    shipped recipe's file name, such as ``light.def``, or a path) with its ``build_args``
    and ``lock`` (a JSON file next to the recipe: the package versions and the digest of the
    build it was written from; see :mod:`shmbench.images.pinned`) lets a run build the
    image where the reference cannot be pulled, or where there is none (``ref`` None).
    """

    ref: str | None
    digest: str | None = None
    recipe: str | None = None
    build_args: tuple[tuple[str, str], ...] = ()
    lock: str | None = None

    def __post_init__(self) -> None:
        if self.ref is None:
            if self.recipe is None:
                raise ImageError("an image needs a reference or a recipe to build it from")
        else:
            parsed = parse_ref(self.ref)
            if self.digest is None and parsed.remote:
                raise ImageError(f"image {self.ref!r}: a remote image needs a pinned sha256 digest")
        if self.digest is not None:
            object.__setattr__(self, "digest", normalize_digest(self.digest))
        object.__setattr__(
            self, "build_args", tuple(sorted((str(k), str(v)) for k, v in dict(self.build_args).items()))
        )

    @property
    def what(self) -> str:
        """How messages name it: the reference, or the recipe."""
        return self.ref if self.ref is not None else f"the image built from {self.recipe}"

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.ref is not None:
            out["ref"] = self.ref
        if self.digest is not None:
            out["digest"] = self.digest
        if self.recipe is not None:
            out["recipe"] = self.recipe
            if self.build_args:
                out["build_args"] = dict(self.build_args)
            if self.lock is not None:
                out["lock"] = self.lock
        return out
