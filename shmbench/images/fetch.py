"""Pulling images: a pinned reference in, a verified local file out.

An experiment pins its container image by a reference *and* the sha256 digest of the image
file, so that a rerun a year later executes the same bytes or fails loudly. This module turns
such a pin into a local file:

- ``oras://HOST[:PORT]/REPO[:TAG|@sha256:MANIFEST]`` -- an OCI registry holding a SIF pushed
  by ``apptainer push IMAGE.sif oras://...``. Pulled through the oras SDK, so neither
  Apptainer nor Docker is needed on the host. The pinned digest is the digest of the SIF
  file (the manifest's one layer), not of the manifest.
- ``https://...`` and ``http://...`` -- a plain download (pooch's downloader). Plain HTTP is
  accepted anywhere because the digest, not the transport, is what makes the bytes
  trustworthy.
- ``file:///...`` -- a file on another file system (an NFS share, a mounted bucket), copied
  into the cache like a download.
- a local path -- used in place, never copied; checked against the digest when one is given.

The cache (``cache_subdir("images")``) holds each image once, named by its digest, so two
references to the same bytes share one file. A file appears there only complete and verified:
the bytes go to a temporary file in the same directory, are hashed while they are written,
and are renamed into place only when the digest matches. A per-image lock file serialises
concurrent pulls of one image across processes; whoever waits finds the file done and
downloads nothing.

Why not ``pooch.retrieve``: it has no inter-process lock (two processes download twice), it
re-hashes the whole cached file on every call (seconds for a large SIF), a mismatch comes back
as a bare ``ValueError`` text, and it knows neither ``oras://`` nor ``file://``. So pooch's
HTTP downloader is used for the transfer and this module owns the lock, the hashing, the
rename and the errors.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from shmbench.errors import DigestMismatch, ImageError
from shmbench.images.refs import ImageRef, ImageSpec, normalize_digest, parse_ref
from shmbench.images.store import (
    IMAGES_SUBDIR,
    cache_name,
    cache_subdir,
    cached_path,
    file_digest,
    images_dir,
    make_once,
    remember_digest,
    touch,
)

__all__ = [
    "SIF_LAYER_MEDIA_TYPE",
    "SIF_CONFIG_MEDIA_TYPE",
    "oras_target",
    "sif_layer_of",
    "NETWORK_TIMEOUT",
    "pull",
    "pull_spec",
]

#: The layer media type Apptainer (>= 1.0, Singularity >= 3.7) gives a SIF it pushes.
SIF_LAYER_MEDIA_TYPE = "application/vnd.sylabs.sif.layer.v1.sif"
#: The config media type of such a push (its config blob is the empty JSON object).
SIF_CONFIG_MEDIA_TYPE = "application/vnd.sylabs.sif.config.v1+json"
# Apptainer's own pull accepts these too: Singularity < 3.7 pushed the first one (the typo
# is theirs and lives on in old registries), and ``oras push`` of a bare file gives the
# second. Accepting exactly what Apptainer accepts keeps "it pulls with apptainer" and "it
# pulls with shmbench" the same statement.
_LAYER_MEDIA_TYPES = (
    SIF_LAYER_MEDIA_TYPE,
    "appliciation/vnd.sylabs.sif.layer.tar",
    "application/octet-stream",
)
_MANIFEST_MEDIA_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)

#: Seconds a network connection may stay silent (connect, or between two reads) before the
#: pull fails. A total deadline would fail large images on slow links; an idle deadline
#: still guarantees that no pull hangs forever.
NETWORK_TIMEOUT = 60.0
_CHUNK = 1 << 20


def pull_spec(spec: ImageSpec, **kwargs: Any) -> Path:
    """:func:`pull` a pinned :class:`~shmbench.images.refs.ImageSpec`; keyword arguments
    are passed on."""
    if spec.ref is None:
        raise ImageError(f"{spec.what} is not published anywhere: build it (shmbench build, or a run builds it)")
    return pull(spec.ref, spec.digest, **kwargs)


class _HashingWriter:
    """A write-only file object that hashes what passes through, counts it on the progress
    bar, and enforces a size cap.

    The cap comes from the registry manifest: a server that streams more than it declared
    is cut off before it can fill the disk.
    """

    def __init__(self, out: BinaryIO, bar: Any, ref: ImageRef) -> None:
        self._out = out
        self._ref = ref
        self.bar = bar
        self.limit: int | None = None
        self.hasher = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        if self.limit is not None and self.size > self.limit:
            raise ImageError(f"image {self._ref}: the server sent more than the {self.limit} bytes it declared")
        self.hasher.update(data)
        self._out.write(data)
        self.bar.update(len(data))
        return len(data)

    def flush(self) -> None:
        # pooch flushes after every chunk; the real flush (and fsync) happens once at the end.
        pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.hasher.hexdigest()


class _PassiveBar:
    """Lets pooch set our tqdm bar's total; the bytes are counted by :class:`_HashingWriter`
    (pooch counts whole chunks, which overshoots on the last one)."""

    def __init__(self, bar: Any) -> None:
        self._bar = bar

    @property
    def total(self) -> Any:
        return self._bar.total

    @total.setter
    def total(self, value: int) -> None:
        if value and not self._bar.total:
            self._bar.total = value
            self._bar.refresh()

    def update(self, n: int) -> None:
        pass

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass


def pull(
    ref: str | ImageRef,
    digest: str | None,
    *,
    offline: bool = False,
    progress: bool = True,
    insecure: bool | None = None,
) -> Path:
    """Return a local file holding the image ``ref``, whose sha256 must be ``digest``.

    Downloaded into the cache on first use; later calls (from any process) return the
    cached file without touching the network.

    Args:
        ref: an image reference (see the module docstring) or a parsed :class:`ImageRef`.
        digest: ``sha256:<hex>`` of the image *file*. Required for remote references; for a
            local path, optional (checked when given).
        offline: use the cache only; a missing image is an error instead of a download.
        progress: show a tqdm progress bar on stderr while downloading or hashing (only
            where stderr is a terminal: a log file gets no frames).
        insecure: for ``oras://`` only: talk plain HTTP to the registry. ``None`` (the
            default) does so for loopback hosts (a test or a local mirror) and HTTPS
            elsewhere; ``True`` always, ``False`` never. Integrity does not depend on it: the
            digest is checked either way.

    Returns:
        The image file: in the cache for remote references, the path itself for local ones.

    Raises:
        DigestMismatch: the bytes do not have the pinned digest (nothing is cached).
        ImageError: a bad reference, a missing digest, a missing file, a network or registry
            failure, or ``offline`` with the image not cached.
    """
    parsed = ref if isinstance(ref, ImageRef) else parse_ref(ref)
    if not parsed.remote:
        return _check_local(parsed, digest, progress)
    if digest is None:
        raise ImageError(f"image {parsed}: a remote image needs a pinned sha256 digest")
    digest = normalize_digest(digest)
    name = cache_name(digest)
    hit = cached_path(digest)
    if hit is not None:
        touch(hit)
        return hit
    if offline:
        raise ImageError(
            f"image {parsed} ({digest}) is not in the image cache {images_dir()} "
            "and offline mode is on; pull it once while online, or copy the file there "
            f"as {name}"
        )

    directory = cache_subdir(IMAGES_SUBDIR)
    final = directory / name

    def download() -> Path:
        for stale in directory.glob(f".{name}.*.part"):
            # Leftovers of a pull that was killed; we hold the lock, so nobody writes them.
            stale.unlink(missing_ok=True)
        tmp = directory / f".{name}.{os.getpid()}.{secrets.token_hex(4)}.part"
        try:
            _download(parsed, tmp, digest, progress=progress, insecure=insecure)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(directory)
        remember_digest(final, digest)
        return final

    def done() -> Path | None:
        if not final.is_file():
            return None
        touch(final)
        remember_digest(final, digest)
        return final

    # The lock is per image: pulls of different images proceed in parallel. flock(2) is
    # released by the kernel when its holder dies, so a crashed pull never blocks the next,
    # and a live holder's transfer is bounded by NETWORK_TIMEOUT, so waiting here ends.
    return make_once(directory / f".{name}.lock", done, download, timeout=None, what=f"download image {parsed}")


def _check_local(parsed: ImageRef, digest: str | None, progress: bool) -> Path:
    if parsed.path is None:  # parse_ref always sets it for paths; a hand-built ImageRef may not
        raise ImageError(f"image {parsed}: no path")
    path = parsed.path.absolute()
    if not path.exists():
        raise ImageError(f"image {parsed}: no such file or directory: {path}")
    if digest is None:
        return path
    expected = normalize_digest(digest)
    if not path.is_file():
        raise ImageError(
            f"image {parsed}: a digest was given but {path} is not a regular file "
            "(a sandbox directory has no file digest)"
        )
    try:
        actual = file_digest(path, progress=progress)
    except OSError as exc:
        raise ImageError(f"image {parsed}: cannot read {path}: {exc}") from exc
    if actual != expected:
        raise _mismatch(parsed, expected, actual, kept=True)
    return path


def _mismatch(parsed: ImageRef, expected: str, actual: str, *, kept: bool = False) -> DigestMismatch:
    what = "the file was left in place" if kept else "nothing was cached"
    error = DigestMismatch(f"image {parsed}: sha256 mismatch: expected {expected}, got {actual} ({what})")
    error.expected = expected  # type: ignore[attr-defined]
    error.actual = actual  # type: ignore[attr-defined]
    return error


def _fsync_dir(directory: Path) -> None:
    # Makes the rename durable: without it a power loss can leave a name pointing nowhere.
    try:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass  # some file systems cannot fsync a directory; the rename itself is still atomic


def _download(parsed: ImageRef, tmp: Path, digest: str, *, progress: bool, insecure: bool | None) -> None:
    """Fetch ``parsed`` into ``tmp`` and check the digest; ``tmp`` is the caller's to remove."""
    from tqdm import tqdm

    fetchers: dict[str, Callable[[ImageRef, _HashingWriter, str, bool | None], None]] = {
        "oras": _fetch_oras,
        "http": _fetch_http,
        "https": _fetch_http,
        "file": _fetch_file,
    }
    label = parsed.text.rsplit("/", 1)[-1][:40]
    with (
        open(tmp, "xb") as out,
        tqdm(unit="B", unit_scale=True, desc=label, disable=None if progress else True, leave=False) as bar,
    ):
        writer = _HashingWriter(out, bar, parsed)
        try:
            fetchers[parsed.scheme](parsed, writer, digest, insecure)
        except ImageError:
            raise
        except Exception as exc:
            if not _is_transfer_error(exc):
                raise
            # requests', oras' and the OS's errors, given the image's name and one class.
            raise ImageError(f"image {parsed}: download failed: {type(exc).__name__}: {exc}") from exc
        out.flush()
        os.fsync(out.fileno())
    if writer.digest != digest:
        raise _mismatch(parsed, digest, writer.digest)


def _is_transfer_error(exc: BaseException) -> bool:
    if isinstance(exc, OSError):  # includes requests.RequestException
        return True
    return type(exc).__module__.split(".")[0] in ("requests", "urllib3", "oras")


def _fetch_file(parsed: ImageRef, writer: _HashingWriter, digest: str, insecure: bool | None) -> None:
    source = parsed.path
    if source is None or not source.is_file():
        raise ImageError(f"image {parsed}: no such file: {source}")
    with open(source, "rb") as src:
        writer.bar.total = os.fstat(src.fileno()).st_size
        writer.bar.refresh()
        while chunk := src.read(_CHUNK):
            writer.write(chunk)


def _fetch_http(parsed: ImageRef, writer: _HashingWriter, digest: str, insecure: bool | None) -> None:
    import pooch

    downloader = pooch.HTTPDownloader(progressbar=_PassiveBar(writer.bar), chunk_size=_CHUNK, timeout=NETWORK_TIMEOUT)
    downloader(parsed.text, writer, None)


# ---------------------------------------------------------------------------------- oras://


def _oras_registry(host: str, plain_http: bool) -> Any:
    """An oras-py ``Registry`` that fails fast instead of retrying for minutes.

    oras-py wraps every request in a retry loop that sleeps 3, 5, 11, 29 and 83 seconds on
    any exception, and sends requests without a timeout. For a pull that should either work
    or say clearly why not, both are wrong: we call the undecorated request method (its
    token-auth handshake, which is why we use the SDK, is unchanged) and give the shared
    session a default timeout, which its auth backend uses too.
    """
    import oras.provider
    import requests.adapters

    base = oras.provider.Registry
    single_try = getattr(base.do_request, "__wrapped__", None)

    class _TimeoutAdapter(requests.adapters.HTTPAdapter):
        def send(self, request: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            if kwargs.get("timeout") is None:
                kwargs["timeout"] = NETWORK_TIMEOUT
            return super().send(request, **kwargs)

    class _Registry(base):  # type: ignore[misc, valid-type]
        if single_try is not None:

            def do_request(self, *args: Any, **kwargs: Any) -> Any:
                return single_try(self, *args, **kwargs)

    registry = _Registry(hostname=host, insecure=plain_http)
    registry.session.mount("http://", _TimeoutAdapter())
    registry.session.mount("https://", _TimeoutAdapter())
    return registry


def _sif_layer(parsed: ImageRef, body: bytes) -> tuple[str, int]:
    """The (digest, size) of the SIF layer of a manifest; the same rule as ``apptainer pull
    oras://``: exactly one layer, of a SIF media type."""
    import json

    try:
        manifest = json.loads(body)
    except ValueError as exc:
        raise ImageError(f"image {parsed}: the registry sent a manifest that is not JSON: {exc}") from exc
    layers = manifest.get("layers") if isinstance(manifest, dict) else None
    if not isinstance(layers, list) or len(layers) != 1 or not isinstance(layers[0], dict):
        count = len(layers) if isinstance(layers, list) else "no"
        raise ImageError(
            f"image {parsed}: an oras SIF image has exactly one layer, this manifest has "
            f"{count} (an image index or a multi-file artifact is not a SIF push)"
        )
    layer = layers[0]
    if layer.get("mediaType") not in _LAYER_MEDIA_TYPES:
        raise ImageError(
            f"image {parsed}: layer media type {layer.get('mediaType')!r} is not a SIF "
            f"(expected {SIF_LAYER_MEDIA_TYPE})"
        )
    digest, size = layer.get("digest"), layer.get("size")
    if not isinstance(digest, str) or type(size) is not int or size < 0:
        raise ImageError(f"image {parsed}: malformed layer descriptor {layer!r}")
    return digest.lower(), size


def oras_target(parsed: ImageRef, insecure: bool | None) -> tuple[Any, Any]:
    """The oras-py client (single-try, with timeouts) and container for an ``oras://``
    reference, with credentials from ``~/.docker/config.json`` when there are any.

    ``insecure``: plain HTTP; None means "only on loopback"."""
    import oras.container

    host, repository = parsed.host, parsed.repository
    if host is None or repository is None:
        raise ImageError(f"image {parsed}: not an oras reference")
    plain_http = parsed.loopback if insecure is None else bool(insecure)
    registry = _oras_registry(host, plain_http)
    # Build the container by hand: oras-py's own parser takes "localhost/x" for a namespace.
    container = oras.container.Container(f"{host}/{repository}:latest")
    namespace, _, name = repository.rpartition("/")
    container.registry = host
    container.namespace = namespace or None
    container.repository = name
    container.tag = parsed.tag or "latest"
    container.digest = parsed.manifest_digest
    registry.auth.load_configs(container)  # credentials from ~/.docker/config.json, if any
    return registry, container


def sif_layer_of(parsed: ImageRef, registry: Any, container: Any) -> tuple[str, int]:
    """The (digest, size) of the SIF layer the registry's manifest for ``parsed`` names."""
    url = f"{registry.prefix}://{container.manifest_url()}"
    response = registry.do_request(url, "GET", headers={"Accept": ", ".join(_MANIFEST_MEDIA_TYPES)})
    if response.status_code != 200:
        raise ImageError(
            f"image {parsed}: the registry answered {response.status_code} {response.reason} for the manifest ({url})"
        )
    body = response.content
    if parsed.manifest_digest and "sha256:" + hashlib.sha256(body).hexdigest() != parsed.manifest_digest:
        raise ImageError(f"image {parsed}: the registry sent a manifest whose digest is not {parsed.manifest_digest}")
    return _sif_layer(parsed, body)


def _fetch_oras(parsed: ImageRef, writer: _HashingWriter, digest: str, insecure: bool | None) -> None:

    registry, container = oras_target(parsed, insecure)
    layer_digest, size = sif_layer_of(parsed, registry, container)
    if layer_digest != digest:
        # The registry's own content address already says these are other bytes: refuse
        # before downloading a single byte of them.
        raise _mismatch(parsed, digest, layer_digest)
    writer.bar.total = size
    writer.bar.refresh()
    writer.limit = size
    with registry.get_blob(container, layer_digest, stream=True) as blob:
        if blob.status_code != 200:
            raise ImageError(
                f"image {parsed}: the registry answered {blob.status_code} {blob.reason} for blob {layer_digest}"
            )
        for chunk in blob.iter_content(chunk_size=_CHUNK):
            writer.write(chunk)
