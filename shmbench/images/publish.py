"""Publishing an image: ``shmbench push IMAGE.sif oras://HOST[:PORT]/REPO:TAG``.

The push is what ``apptainer push FILE oras://...`` sends -- one layer with the SIF media
type, an empty ``{}`` config with the SIF config media type -- so Apptainer pulls it as its
own, and so does :func:`shmbench.images.fetch.pull`. After the upload the registry's
manifest is read back and its layer must be the file's sha256: the digest printed (and
written into a record by ``--record``) is the one every later pull is verified against.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from shmbench.errors import ImageError
from shmbench.images.fetch import SIF_CONFIG_MEDIA_TYPE, SIF_LAYER_MEDIA_TYPE, oras_target, sif_layer_of
from shmbench.images.refs import parse_ref
from shmbench.images.sif import read_sif
from shmbench.images.store import file_digest

__all__ = ["push"]


def push(path: str | os.PathLike[str], ref: str, *, insecure: bool | None = None, progress: bool = False) -> str:
    """Push the SIF file ``path`` to the registry as ``ref`` (``oras://HOST/REPO:TAG``);
    return its sha256 digest, as verified in the registry's manifest.

    ``insecure``: plain HTTP (None: only to a loopback registry). Credentials come from
    ``~/.docker/config.json`` (``docker login`` / ``oras login`` write it).

    Raises:
        ImageError: not a SIF file, not an oras reference, or the registry refused or
            stored something else.
    """
    parsed = parse_ref(ref)
    if parsed.scheme != "oras":
        raise ImageError(f"{ref}: shmbench push publishes to an OCI registry: oras://HOST[:PORT]/REPO:TAG")
    if parsed.manifest_digest:
        raise ImageError(f"{ref}: push to a tag, not a digest (the registry names the manifest)")
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    read_sif(path)  # a SIF, or a clear error -- before anything is uploaded
    digest = file_digest(path, progress=progress)
    registry, container = oras_target(parsed, insecure)
    target = f"{parsed.host}/{parsed.repository}:{parsed.tag or 'latest'}"
    with tempfile.TemporaryDirectory(prefix="shmbench-push-") as tmp:
        config = Path(tmp) / "config.json"
        config.write_text("{}")
        # oras names the layer by the file's base name (its title annotation) and splits
        # "path:media-type" at the last colon: a link with a plain name keeps both sane
        layer = Path(tmp) / (path.name.replace(":", "_") or "image.sif")
        os.symlink(path.absolute(), layer)
        try:
            response = registry.push(
                target=target,
                files=[f"{layer}:{SIF_LAYER_MEDIA_TYPE}"],
                manifest_config=f"{config}:{SIF_CONFIG_MEDIA_TYPE}",
                disable_path_validation=True,
                quiet=True,
            )
        except Exception as exc:  # oras-py raises ValueError, requests errors, ...
            raise ImageError(f"push {path} to {ref}: {type(exc).__name__}: {exc}") from None
        finally:
            registry.session.close()
    if getattr(response, "status_code", None) not in (200, 201):
        raise ImageError(
            f"push {path} to {ref}: the registry answered {response.status_code} {getattr(response, 'text', '')[:500]}"
        )
    registry, container = oras_target(parsed, insecure)
    try:
        layer_digest, _ = sif_layer_of(parsed, registry, container)
    finally:
        registry.session.close()
    if layer_digest != digest:
        raise ImageError(f"push {path} to {ref}: the registry's manifest names {layer_digest}, the file is {digest}")
    return digest
