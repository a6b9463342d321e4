"""exp:0.01 in its pinned image: built from recipes/light.def where it is not published,
compared with its lock, run in a real bwrap sandbox; the host only when allowed.

Real runs (``shmbench run`` subprocesses and RemoteRunner), real debootstrap builds into a
fresh cache (slow), and a real unprivileged user who cannot build.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest_images import RECIPES
from run_helpers import shmbench
from unprivileged import run_unprivileged

from shmbench.errors import ExperimentError, ImageError
from shmbench.experiments import resolve
from shmbench.experiments.records import parse_record
from shmbench.images.manifest import difference, read_manifest
from shmbench.images.pinned import find_recipe, lock_path, read_lock
from shmbench.images.refs import ImageSpec
from shmbench.images.reproducible import DEFAULT_EPOCH
from shmbench.images.store import file_digest
from shmbench.logs import episode_returns, read_log


def test_exp_0_01_pins_the_light_recipe_and_its_lock() -> None:
    image = resolve("exp:0.01").image
    assert image == ImageSpec(None, recipe="light.def", lock="light.lock.json")
    recipe = find_recipe(image.recipe)
    assert recipe.name == "light.def" and recipe.read_text().startswith("Bootstrap: debootstrap")
    lock = read_lock(lock_path(recipe, image.lock))
    assert lock["digest"].startswith("sha256:") and lock["python_packages"]["numpy"] == "2.2.6"
    assert "shmbench" not in lock["python_packages"]  # the host's serves the image
    with pytest.raises(ImageError, match="recipe 'nope.def' not found"):
        find_recipe("nope.def")


@pytest.mark.parametrize(
    "table, field, words",
    [
        ("recipe = 3", "image.recipe", "must be a string"),
        ('lock = "x.json"', "image.ref", "give 'recipe'"),
        ('recipe = "light.def"\nbuild_args = {n = 3}', "image.build_args", "table of strings"),
        ('recipe = "light.def"\nsize = 3', "image.size", "unknown field"),
    ],
)
def test_bad_image_tables_are_refused(table: str, field: str, words: str) -> None:
    text = f'identifier = "exp:x"\nbenchmark = "shmbench/Sigmoid-v0"\n[image]\n{table}\n'
    with pytest.raises(ExperimentError, match=field) as info:
        import tomllib

        parse_record(tomllib.loads(text), source="x.toml")
    assert words in str(info.value)


def test_the_process_runtime_builds_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHMBENCH_CACHE_DIR", str(tmp_path / "cache"))
    out = shmbench("run", "--experiment", "exp:0.01", "--runtime", "process", "--episodes", "1", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "building" not in out.stderr and not (tmp_path / "cache" / "built").exists()
    (log,) = tmp_path.glob("*.jsonl")
    header = read_log(log).header
    assert header["runtime"]["image_used"] is False
    assert "the image's recipe was not built" in header["image_build"]["skipped"]


@pytest.mark.skipif(os.geteuid() != 0, reason="the unprivileged case is the suite's own user here")
def test_an_unprivileged_user_is_told_and_runs_on_the_host_only_when_allowed() -> None:
    shutil.which("bwrap") or pytest.skip("bwrap not installed (apt-get install bubblewrap)")
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="shmbench-unprivileged-"))  # pytest's tmp is root's own
    try:
        _unprivileged_run(top)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _unprivileged_run(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    os.chmod(tmp_path, 0o777)
    os.chmod(cache, 0o777)
    script = f"""
import os
os.environ["SHMBENCH_CACHE_DIR"] = {str(cache)!r}
from shmbench.agents import RandomAgent
from shmbench.errors import RuntimeUnavailable
from shmbench.experiments.runner import RemoteRunner
try:
    RemoteRunner(experiment_identifier="exp:0.01", log_dir={str(tmp_path)!r}, progress=False)
except RuntimeUnavailable as exc:
    print("REFUSED", exc)
with RemoteRunner(experiment_identifier="exp:0.01", log_dir={str(tmp_path)!r}, progress=False, allow_host=True) as r:
    r.run(RandomAgent(r.get_environment()), 1)
    print("RAN", r.header()["runtime"], r.image_build["skipped"][:60])
"""
    out = run_unprivileged(script)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "REFUSED the image built from light.def cannot be had or run here: it must be built from" in out.stdout
    assert "needs root" in out.stdout and "--allow-host" in out.stdout
    assert "RAN {'name': 'process', 'isolated': False, 'image_used': False}" in out.stdout
    assert "running on the host (allowed)" in out.stderr


def _header(out_dir: Path) -> dict:
    (log,) = out_dir.glob("*.jsonl")
    return read_log(log).header


@pytest.mark.slow
def test_exp_0_01_builds_its_image_once_checks_it_and_runs_in_it(light_sif: Path, tmp_path: Path) -> None:
    """On a machine with no cached image: built (with stage lines), compared with the lock,
    run in bwrap; the log header records the digest and the manifest; the second run finds
    it. The fresh build is also the second build of recipes/light.def in this suite (the
    reference build being the first, minutes or -- with a kept cache -- days earlier): the
    same bytes when the packages are the same; when the mirror moved in between, the
    manifests say which packages, and a third build must match the fresh one."""
    shutil.which("bwrap") or pytest.skip("bwrap not installed (apt-get install bubblewrap)")
    if os.geteuid() != 0:
        pytest.skip("building without Apptainer needs root (debootstrap)")
    env = {**os.environ, "SHMBENCH_CACHE_DIR": str(tmp_path / "cache")}
    args = ("run", "--experiment", "exp:0.01", "--runtime", "bwrap", "--episodes", "2", "--seed", "1")
    first = shmbench(*args, "--out", str(tmp_path / "one"), env=env, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "building the pinned image from" in first.stderr and "debootstrap ... done" in first.stderr
    header = _header(tmp_path / "one")
    lock = read_lock(RECIPES / "light.lock.json")
    build = header["image_build"]
    assert build["how"] == "built" and build["pinned_digest"] == lock["digest"]
    assert header["image_digest"] == build["digest"]
    if build["matches_pin"]:
        assert build["digest"] == lock["digest"] and build["difference"] == {}
    else:  # the Debian mirror moved since the lock was written: which packages, said and logged
        assert build["difference"], build
        assert "is not the pinned one" in first.stderr
    assert header["runtime"] == {"name": "bwrap", "isolated": True, "image_used": True}
    manifest = header["image_manifest"]
    assert manifest["recipe"]["name"] == "light.def" and manifest["python_packages"]["numpy"] == "2.2.6"
    assert header["server"]["numpy"] == "2.2.6" and header["server"]["shmbench"] == header["shmbench"]
    reference = read_manifest(light_sif)
    assert reference is not None
    if difference(reference, manifest):  # the mirror moved between the two builds
        from shmbench.images.build import build

        third = build(RECIPES / "light.def", tmp_path / "third.sif", quiet=True)
        assert file_digest(third) == header["image_digest"]
    else:
        assert file_digest(light_sif) == header["image_digest"]  # byte for byte
    assert "/tmp" not in json.dumps(manifest) and manifest["source_date_epoch"] == DEFAULT_EPOCH
    pulled = shmbench("pull", "exp:0.01", env=env, timeout=300)  # found, not rebuilt
    assert pulled.returncode == 0 and f"built: {header['image_digest']}" in pulled.stderr, pulled.stderr
    assert "building" not in pulled.stderr and file_digest(pulled.stdout.strip()) == header["image_digest"]
    second = shmbench(*args, "--out", str(tmp_path / "two"), env=env, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "building" not in second.stderr
    assert _header(tmp_path / "two")["image_digest"] == header["image_digest"]
    one, two = (episode_returns(next((tmp_path / d).glob("*.jsonl"))) for d in ("one", "two"))
    assert [e["return"] for e in one] == [e["return"] for e in two] and len(one) == 2


@pytest.mark.slow
def test_a_build_that_differs_from_its_lock_is_said_and_refused_on_request(light_sif: Path, tmp_path: Path) -> None:
    """A user record whose lock pins other versions (as after a Debian update): the run says
    which packages moved and logs it; --require-pinned refuses to run."""
    lock = read_lock(RECIPES / "light.lock.json")
    lock["digest"] = "sha256:" + "0" * 64
    lock["python_packages"]["numpy"] = "2.2.5"
    lock["debian_packages"]["libc6:amd64"] = "2.36-9+deb12u1"
    (tmp_path / "drift.lock.json").write_text(json.dumps(lock))
    records = tmp_path / "records"
    records.mkdir()
    (records / "drift.toml").write_text(
        'identifier = "exp:drift"\nbenchmark = "shmbench/Sigmoid-v0"\n[image]\n'
        f'recipe = "{RECIPES / "light.def"}"\nlock = "{tmp_path / "drift.lock.json"}"\n'
    )
    env = {**os.environ, "SHMBENCH_EXPERIMENTS": str(records)}
    args = ("run", "--experiment", "exp:drift", "--runtime", "bwrap", "--episodes", "1")
    ran = shmbench(*args, "--out", str(tmp_path / "out"), env=env, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "is not the pinned one" in ran.stderr and "pip numpy: 2.2.5 -> 2.2.6" in ran.stderr
    build = _header(tmp_path / "out")["image_build"]
    assert build["matches_pin"] is False and build["difference"]["python_packages"]["numpy"] == ["2.2.5", "2.2.6"]
    assert "libc6:amd64" in build["difference"]["debian_packages"]
    refused = shmbench(*args, "--require-pinned", "--out", str(tmp_path / "no"), env=env, timeout=300)
    assert refused.returncode != 0 and "refused: --require-pinned" in refused.stderr
    assert not list((tmp_path / "no").glob("*.jsonl"))
