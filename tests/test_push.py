"""shmbench push: a SIF published to a real OCI registry on 127.0.0.1 (Debian's
docker-registry), pulled back and verified, pinned in a record by --record, and run from
that record in bwrap with a fresh cache; a tag moved to other bytes is refused."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from registry import sha256_of
from run_helpers import BWRAP_SKIP, shmbench

from shmbench.errors import ImageError
from shmbench.images.fetch import SIF_LAYER_MEDIA_TYPE, pull
from shmbench.images.publish import push

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def manifest(registry, repository: str, tag: str) -> dict:
    request = urllib.request.Request(
        f"http://{registry.host}/v2/{repository}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read())


def test_a_pushed_sif_is_what_apptainer_pushes_and_pull_verifies(registry, small_sif, cache_dir):
    ref = f"oras://{registry.host}/shmbench/pushed-small:1"
    digest = push(small_sif, ref)
    assert digest == sha256_of(small_sif.read_bytes())
    (layer,) = manifest(registry, "shmbench/pushed-small", "1")["layers"]
    assert layer["mediaType"] == SIF_LAYER_MEDIA_TYPE and layer["digest"] == digest
    assert layer["annotations"]["org.opencontainers.image.title"] == "small.sif"
    path = pull(ref, digest)
    assert path.read_bytes() == small_sif.read_bytes()


def test_push_refuses_what_it_cannot_publish_before_uploading(registry, tmp_path):
    not_sif = tmp_path / "x.sif"
    not_sif.write_bytes(b"\0" * 4096)
    with pytest.raises(ImageError, match="SIF"):
        push(not_sif, f"oras://{registry.host}/shmbench/nope:1")
    with pytest.raises(ImageError, match="no such image file"):
        push(tmp_path / "missing.sif", f"oras://{registry.host}/shmbench/nope:1")
    with pytest.raises(ImageError, match="OCI registry"):
        push(not_sif, "https://example.org/x.sif")
    p = shmbench("push", str(not_sif), f"oras://{registry.host}/shmbench/nope:1")
    assert p.returncode == 1 and p.stderr.startswith("shmbench push: error:") and "Traceback" not in p.stderr


@pytest.mark.slow  # the light reference image
@pytest.mark.skipif(BWRAP_SKIP is not None, reason=str(BWRAP_SKIP))
def test_push_record_then_run_from_a_fresh_cache_and_a_moved_tag_is_refused(
    registry, light_sif, small_sif, tmp_path, monkeypatch
):
    records = tmp_path / "records"
    ref = f"oras://{registry.host}/shmbench/light-pushed:1"
    p = shmbench(
        "push", str(light_sif), ref, "--record", "exp:pushed", "--from", "exp:0.01",
        "--records-dir", str(records), "--recipe", str(RECIPES / "light.def"), timeout=600,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    digest = sha256_of(light_sif.read_bytes())
    assert f"digest {digest}" in p.stdout
    (written,) = records.glob("*.json")
    record = json.loads(written.read_text())
    # pinned: where it is published, and the recipe a run builds it from where it cannot be pulled
    assert record["identifier"] == "exp:pushed"
    assert record["image"] == {"ref": ref, "digest": digest, "recipe": str(RECIPES / "light.def")}
    assert "built from light.def" in record["description"] and record["benchmark"] == "shmbench/Sigmoid-v0"
    p = shmbench(
        "push", str(light_sif), ref, "--record", "exp:pushed", "--from", "exp:0.01", "--records-dir", str(records)
    )
    assert p.returncode == 1 and "exists" in p.stderr  # no silent overwrite

    env = {
        "SHMBENCH_EXPERIMENTS": str(records),
        "SHMBENCH_CACHE_DIR": str(tmp_path / "fresh-cache"),
        "NO_PROXY": "127.0.0.1,localhost",
    }
    run = ["run", "--experiment", "exp:pushed", "--runtime", "bwrap", "--episodes", "2", "--quiet"]
    p = shmbench(*run, "--out", str(tmp_path / "logs"), env=env, timeout=600)
    assert p.returncode == 0, p.stderr
    (log,) = (tmp_path / "logs").glob("*.jsonl")
    header = json.loads(log.read_text().splitlines()[0])
    assert header["image_digest"] == digest and header["runtime"]["image_used"] is True
    assert header["image_build"]["how"] == "pulled" and header["image_manifest"]["recipe"]["name"] == "light.def"

    # the tag now names other bytes: the record's digest refuses them
    push(small_sif, ref)
    env["SHMBENCH_CACHE_DIR"] = str(tmp_path / "another-cache")
    p = shmbench(*run, "--out", str(tmp_path / "logs2"), env=env, timeout=600)
    assert p.returncode != 0 and digest in p.stderr and "Traceback" not in p.stderr, p.stderr
