"""shmbench.images.build and shmbench.images.native: building SIF images, with Apptainer or without.

The Apptainer builder is exercised end to end through spython against ``fake_apptainer``, a
test double standing in for the apptainer binary (Apptainer cannot be installed here): it
records its argv and writes a real SIF. It shows what shmbench hands Apptainer, never that
Apptainer accepts it. The native builder runs for real (debootstrap, bubblewrap,
mksquashfs, siftool; root and network needed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest_images import make_sif, make_squashfs, make_tree, require_tool

from shmbench.errors import ImageError, RuntimeUnavailable
from shmbench.images import native as buildmod
from shmbench.images.build import build, build_cached, recipe_digest
from shmbench.images.sif import find_squashfs, read_sif, unpack_sif

DOCKER_RECIPE = "Bootstrap: docker\nFrom: {{ base }}\n%files\n    payload.txt /opt/payload.txt\n"


@pytest.fixture
def no_apptainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PATH without apptainer or singularity (but with everything else)."""
    for name in ("apptainer", "singularity"):
        found = buildmod.shutil.which(name)
        if found:
            pytest.skip(f"{found} is installed; this test needs a machine without it")


def test_other_bootstrap_agents_need_apptainer(tmp_path: Path, no_apptainer: None) -> None:
    recipe = tmp_path / "docker.def"
    recipe.write_text(DOCKER_RECIPE)
    (tmp_path / "payload.txt").write_text("x")
    with pytest.raises(RuntimeUnavailable, match="'Bootstrap: docker' needs Apptainer"):
        build(recipe, tmp_path / "out.sif", build_args={"base": "debian:12"})
    with pytest.raises(RuntimeUnavailable, match="neither apptainer nor singularity"):
        build(recipe, tmp_path / "out.sif", build_args={"base": "debian:12"}, builder="apptainer")
    assert not (tmp_path / "out.sif").exists()


def test_native_build_needs_root(tmp_path: Path, no_apptainer: None, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = tmp_path / "r.def"
    recipe.write_text("Bootstrap: debootstrap\nOSVersion: bookworm\nMirrorURL: http://deb.debian.org/debian\n")
    monkeypatch.setattr(buildmod.os, "geteuid", lambda: 1000)  # pretend: not root
    with pytest.raises(ImageError, match="needs root.*apptainer build --fakeroot"):
        build(recipe, tmp_path / "out.sif")


FAKE_APPTAINER = """#!{python}
# fake_apptainer: a test double for the apptainer binary. It records how it was called
# and what recipe it got, then writes a prepared SIF where the image should go.
import json, os, shutil, sys
args = sys.argv[1:]
record = {{"argv": sys.argv, "recipe": open(args[-1]).read() if args[:1] == ["build"] else None}}
with open({log!r}, "a") as f:
    f.write(json.dumps(record) + "\\n")
if args[:1] == ["--version"]:
    print("apptainer version 1.3.0-fake")
elif os.environ.get("FAKE_APPTAINER_FAIL"):
    print("FATAL: fake failure", file=sys.stderr)
    sys.exit(255)
else:
    shutil.copy({sif!r}, args[-2])
"""


@pytest.fixture
def fake_apptainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Installs the fake_apptainer test double first on PATH; returns its call log."""
    squash = make_squashfs(make_tree(tmp_path / "tree"), tmp_path / "fs.squashfs")
    prepared = make_sif(tmp_path / "prepared.sif", squash)
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    log = tmp_path / "fake_apptainer.jsonl"
    exe = bindir / "apptainer"
    exe.write_text(FAKE_APPTAINER.format(python=sys.executable, log=str(log), sif=str(prepared)))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return log


def _calls(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [c for c in map(json.loads, log.read_text().splitlines()) if c["recipe"] is not None]


def test_apptainer_build_argv_through_spython(
    tmp_path: Path, fake_apptainer: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    recipe_dir = tmp_path / "recipes"
    recipe_dir.mkdir()
    (recipe_dir / "payload.txt").write_text("payload")
    recipe = recipe_dir / "docker.def"
    recipe.write_text(DOCKER_RECIPE)
    out = build(recipe, tmp_path / "images" / "out.sif", build_args={"base": "debian:12"}, fakeroot=True)
    assert out == tmp_path / "images" / "out.sif"
    assert find_squashfs(out)  # the SIF the double wrote, moved in place
    (call,) = _calls(fake_apptainer)
    argv = call["argv"]
    assert argv[0] == str(tmp_path / "fakebin" / "apptainer")  # not "singularity", no sudo
    assert argv[1:3] == ["build", "--fakeroot"] and len(argv) == 5
    image_arg, recipe_arg = argv[3:]
    assert Path(image_arg).parent.parent == out.parent  # built beside, then renamed
    assert Path(image_arg).name == "image.sif" and Path(recipe_arg).name == "recipe.def"
    assert "From: debian:12" in call["recipe"]  # rendered by shmbench
    assert f"{recipe_dir / 'payload.txt'} /opt/payload.txt" in call["recipe"]
    assert [p.name for p in out.parent.iterdir()] == ["out.sif"]  # temporaries gone
    capfd.readouterr()


def test_apptainer_build_without_fakeroot_and_failure(
    tmp_path: Path, fake_apptainer: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "r.def"
    recipe.write_text("Bootstrap: docker\nFrom: debian:12\n")
    build(recipe, tmp_path / "a.sif", fakeroot=False, quiet=True)
    argv = _calls(fake_apptainer)[-1]["argv"]
    assert argv[1] == "build" and len(argv) == 4 and "--fakeroot" not in argv
    monkeypatch.setenv("FAKE_APPTAINER_FAIL", "1")
    with pytest.raises(ImageError, match="build failed: no image was written"):
        build(recipe, tmp_path / "b.sif", quiet=True)
    assert not (tmp_path / "b.sif").exists()
    capfd.readouterr()


def test_recipe_digest_tracks_every_input(tmp_path: Path) -> None:
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "f").write_text("1")
    recipe = tmp_path / "r.def"
    recipe.write_text("Bootstrap: docker\nFrom: {{ base }}\n%files\n    tree /opt/tree\n")
    base = recipe_digest(recipe, {"base": "a"})
    assert recipe_digest(recipe, {"base": "a"}) == base
    assert recipe_digest(recipe, {"base": "b"}) != base
    (tmp_path / "tree" / "f").write_text("2")
    changed_file = recipe_digest(recipe, {"base": "a"})
    assert changed_file != base
    (tmp_path / "tree" / "g").write_text("")
    assert recipe_digest(recipe, {"base": "a"}) != changed_file
    recipe.write_text(recipe.read_text() + "%post\n    true\n")
    assert recipe_digest(recipe, {"base": "a"}) not in (base, changed_file)


def test_build_cached_builds_once(tmp_path: Path, fake_apptainer: Path, capfd: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "r.def"
    recipe.write_text("Bootstrap: docker\nFrom: {{ base }}\n")
    first = build_cached(recipe, tmp_path / "cache", {"base": "debian:12"})
    second = build_cached(recipe, tmp_path / "cache", {"base": "debian:12"})
    assert first == second == tmp_path / "cache" / f"{recipe_digest(recipe, {'base': 'debian:12'})}.sif"
    assert len(_calls(fake_apptainer)) == 1
    build_cached(recipe, tmp_path / "cache", {"base": "debian:13"})
    assert len(_calls(fake_apptainer)) == 2
    capfd.readouterr()


def _native_ready() -> None:
    if os.geteuid() != 0:
        pytest.skip("the native builder needs root (debootstrap)")
    for tool in ("debootstrap", "bwrap", "mksquashfs", "siftool"):
        require_tool(tool)


def test_native_build_failure_shows_the_log(tmp_path: Path, no_apptainer: None, capfd) -> None:
    _native_ready()
    recipe = tmp_path / "r.def"
    recipe.write_text(
        "Bootstrap: debootstrap\nOSVersion: bookworm\nMirrorURL: http://127.0.0.1:9/debian\n"
    )  # nothing listens there
    log = tmp_path / "out.sif.build.log"
    with pytest.raises(ImageError, match=r"(?s)debootstrap failed.*full log: .*out\.sif\.build\.log.*127\.0\.0\.1"):
        build(recipe, tmp_path / "out.sif", quiet=True)
    # no output, no build directory left; the whole log is kept
    assert sorted(os.listdir(tmp_path)) == ["out.sif.build.log", "r.def"]
    assert "==> debootstrap" in log.read_text() and capfd.readouterr().err == ""

    # from the command line (not quiet): one line per stage, the log in the file
    with pytest.raises(ImageError):
        build(recipe, tmp_path / "out.sif")
    err = capfd.readouterr().err
    assert f"building out.sif (log: {log}; -v streams it)" in err
    assert "  debootstrap ... FAILED (" in err and "127.0.0.1" not in err.split("FAILED")[0]


@pytest.mark.slow
def test_native_build_sections(tmp_path: Path, no_apptainer: None) -> None:
    """%setup, %files (file, directory, glob, into a directory), %post, %environment,
    %runscript, %labels, %help and %test, on a minimal Debian."""
    _native_ready()
    (tmp_path / "ctx" / "conf").mkdir(parents=True)
    (tmp_path / "ctx" / "conf" / "a.cfg").write_text("a")
    (tmp_path / "ctx" / "conf" / "b.cfg").write_text("b")
    (tmp_path / "ctx" / "single.txt").write_text("single")
    recipe = tmp_path / "ctx" / "r.def"
    recipe.write_text("""\
Bootstrap: debootstrap
OSVersion: bookworm
MirrorURL: http://deb.debian.org/debian

%setup
    echo setup > "$SINGULARITY_ROOTFS/from-setup"
%files
    single.txt /opt/copied/single.txt
    conf /etc/myconf
    conf/*.cfg /opt/cfgs/
%post
    test "$(cat /from-setup)" = setup
    test "$(cat /opt/copied/single.txt)" = single
    test "$(cat /etc/myconf/a.cfg)" = a
    test "$(cat /opt/cfgs/b.cfg)" = b
    echo 'export FROM_POST={{ value }}' >> "$SINGULARITY_ENVIRONMENT"
%environment
    export FROM_ENV=env
%runscript
    echo "run: $FROM_ENV $FROM_POST $*"
%test
    test "$FROM_ENV" = env
%labels
    Maintainer tests
%help
    Helpful.
""")
    out = build(recipe, tmp_path / "out" / "t.sif", build_args={"value": "post"}, quiet=True)
    rootfs = unpack_sif(out, tmp_path / "unpacked")
    labels = json.loads((rootfs / ".singularity.d" / "labels.json").read_text())
    assert labels["Maintainer"] == "tests"
    assert labels["org.label-schema.usage.singularity.deffile.bootstrap"] == "debootstrap"
    assert (rootfs / ".singularity.d" / "runscript.help").read_text().strip() == "Helpful."
    assert "export FROM_POST=post" in (rootfs / ".singularity.d/env/91-environment.sh").read_text()
    assert not (rootfs / ".shmbench-build").exists()
    assert (rootfs / "etc" / "resolv.conf").read_text() == ""
    bwrap = require_tool("bwrap")
    run = subprocess.run(
        [
            bwrap,
            "--ro-bind",
            str(rootfs),
            "/",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--unshare-all",
            "/.singularity.d/actions/run",
            "x",
            "y",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert run.stdout == "run: env post x y\n"


@pytest.mark.slow
def test_bookworm_numpy124_image(bookworm_sif: Path, tmp_path: Path) -> None:
    image = read_sif(bookworm_sif)
    assert image.header.launch == "#!/usr/bin/env run-singularity\n"
    assert "Bootstrap: debootstrap" in image.read_object(image.descriptors[0]).decode()
    rootfs = unpack_sif(bookworm_sif)
    assert (rootfs / "usr" / "bin" / "python3").exists()
    assert (rootfs / "shmbench").is_dir()
    assert "exec python3 -I -m shmbench.server" in (rootfs / ".singularity.d" / "runscript").read_text()
    labels = json.loads((rootfs / ".singularity.d" / "labels.json").read_text())
    assert labels["org.shmbench.recipe"] == "bookworm-numpy124"
    bwrap = require_tool("bwrap")
    proc = subprocess.run(
        [
            bwrap,
            "--ro-bind",
            str(rootfs),
            "/",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--unshare-all",
            "python3",
            "-c",
            "import numpy, gymnasium, shmbench; print(numpy.__version__)",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("1.24."), proc.stdout


def test_a_missing_files_source_is_refused_before_any_build_step(tmp_path):
    """Checked when the recipe is read, not after minutes of debootstrap."""
    from shmbench.images.build import build

    recipe = tmp_path / "r.def"
    recipe.write_text("Bootstrap: debootstrap\nOSVersion: bookworm\n%files\n    missing.whl /x/\n%post\n    true\n")
    t0 = time.monotonic()
    with pytest.raises(ImageError, match="%files source 'missing.whl' matches nothing"):
        build(recipe, tmp_path / "r.sif", builder="native")
    assert time.monotonic() - t0 < 10 and not (tmp_path / "r.sif").exists()
