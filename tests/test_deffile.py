"""shmbench.images.deffile: definition files parsed, templated and written back."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest_images import RECIPES

from shmbench.errors import ImageError
from shmbench.images.deffile import parse_definition, read_definition, render_template

FULL = """\
# a comment before the header
Bootstrap: debootstrap
OSVersion: {{ release }}
MirrorURL: http://deb.debian.org/debian   # trailing comment
Include: python3 \\
    python3-numpy

%arguments
    release=bookworm
    greeting="hello world"

%setup
    touch ${SINGULARITY_ROOTFS}/from-setup

%files
    data/input.txt /opt/input.txt
    "dir with space/f.txt" /opt/
    /etc/hostname

%post -c /bin/bash
    echo {{ greeting }} > /greeting
    # a commented {{ undefined_is_fine_here }}

%environment
    export A=1

%post
    echo second post

%runscript
    exec python3 -I -m shmbench.server "$@"

%labels
    Author someone@example.org
    Version 1.2

%help
    Some help.
"""


def test_parse_sections_header_and_templating() -> None:
    d = parse_definition(FULL, {"greeting": "hi"}, base_dir="/recipes")
    assert d.bootstrap == "debootstrap"
    assert d.header["osversion"] == "bookworm"  # %arguments default
    assert d.header["mirrorurl"] == "http://deb.debian.org/debian"  # comment trimmed
    assert d.include == ["python3", "python3-numpy"]  # continuation line
    assert d.files == [
        ("data/input.txt", "/opt/input.txt"),
        ("dir with space/f.txt", "/opt/"),
        ("/etc/hostname", "/etc/hostname"),
    ]
    assert d.labels == {"Author": "someone@example.org", "Version": "1.2"}
    assert d.sections["post"].args == "-c /bin/bash"
    post = d.script("post")
    assert "echo hi > /greeting" in post and "echo second post" in post  # concatenated
    assert "{{ undefined_is_fine_here }}" in post  # comments untouched
    assert d.script("runscript").strip() == 'exec python3 -I -m shmbench.server "$@"'
    assert d.script("test") == ""
    assert "{{" not in d.text.split("# a commented")[0]


def test_to_text_makes_files_absolute_and_round_trips() -> None:
    d = parse_definition(FULL, base_dir="/recipes")
    text = d.to_text()
    assert "%arguments" not in text and "{{ release }}" not in text
    again = parse_definition(text, base_dir="/elsewhere")
    assert again.header == d.header
    assert again.files == [
        ("/recipes/data/input.txt", "/opt/input.txt"),
        ("/recipes/dir with space/f.txt", "/opt/"),
        ("/etc/hostname", "/etc/hostname"),
    ]
    assert again.script("post").strip() == d.script("post").strip()
    assert again.labels == d.labels


@pytest.mark.parametrize(
    "text, build_args, message",
    [
        ("Bootstrap: docker\nFrom: {{ base }}\n", None, "'base' is not defined"),
        ("Bootstrap: docker\nFrom: debian\n", {"typo": "1"}, "typo are not used"),
        ("From: debian\nBootstrap: docker\n", None, "must start with 'Bootstrap:'"),
        ("OSVersion: 12\n", None, "must start with 'Bootstrap:'"),
        ("%post\n  true\n", None, "no 'Bootstrap:' header"),
        ("Bootstrap: docker\nFrum: debian\n", None, "unknown header keyword 'frum'"),
        ("Bootstrap: docker\nFrom debian\n", None, "is not 'Keyword: value'"),
        ("Bootstrap: docker\n%postt\n  true\n", None, "unknown section %postt"),
        ("Bootstrap: docker\n%appinstall foo\n  true\n", None, "SCIF app sections"),
        ("Bootstrap: docker\n%files from build\n  /a /b\n", None, "another stage"),
        ("Bootstrap: docker\nFrom: a\nStage: one\nBootstrap: docker\nFrom: b\n", None, "multi-stage"),
        ("Bootstrap: docker\n%arguments\n  not an assignment\n", None, "expected name=value"),
        ("Bootstrap: docker\n%files\n  a b c\n", None, "more than a source"),
    ],
)
def test_definition_errors(text: str, build_args: dict | None, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        parse_definition(text, build_args)


def test_render_template_precedence_and_spacing() -> None:
    text, used = render_template("a={{x}} b={{  y }} c={{ \nx }}", {"x": "1"}, {"x": "0", "y": "2"})
    assert (text, used) == ("a=1 b=2 c=1", {"x", "y"})
    # A shebang is not a comment.
    assert render_template("#!/bin/{{ sh }}", {"sh": "bash"})[0] == "#!/bin/bash"


def test_read_definition_resolves_files_against_the_recipe(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("a")
    (tmp_path / "data" / "b.txt").write_text("b")
    recipe = tmp_path / "r.def"
    recipe.write_text(
        "Bootstrap: debootstrap\nOSVersion: bookworm\nMirrorURL: x\n%files\n    data/*.txt /opt/\n    missing.txt\n"
    )
    d = read_definition(recipe)
    assert d.base_dir == tmp_path
    with pytest.raises(ImageError, match="'missing.txt' matches nothing"):
        d.source_paths()
    recipe.write_text(recipe.read_text().replace("    missing.txt\n", ""))
    assert read_definition(recipe).source_paths() == [
        (tmp_path / "data" / "a.txt", "/opt/"),
        (tmp_path / "data" / "b.txt", "/opt/"),
    ]
    with pytest.raises(ImageError, match="not found"):
        read_definition(tmp_path / "nope.def")


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.def")), ids=lambda p: p.name)
def test_shipped_recipes(recipe: Path, tmp_path: Path) -> None:
    wheel = tmp_path / "shmbench-0.1.0-cp311-cp311-linux_x86_64.whl"
    wheel.write_bytes(b"not really a wheel")
    holds_shmbench = recipe.name != "light.def"  # light.def: served by the host's shmbench
    d = read_definition(recipe, {"wheel": str(wheel)} if holds_shmbench else None)
    assert d.bootstrap == "debootstrap"  # all buildable without Apptainer
    assert "mkdir -p /shmbench" not in d.script("post")  # no channel mount point: channels are inherited fds
    if holds_shmbench:
        assert d.script("runscript").strip() == 'exec python3 -I -m shmbench.server "$@"'
        assert d.source_paths() == [(wheel, "/opt/shmbench-wheel/")]
    else:
        assert d.source_paths() == [] and "no shmbench" in d.script("runscript")
        assert "--no-deps" in d.script("post")  # every Python package pinned
    assert d.script("test").strip()
    if recipe.name == "bookworm-numpy124.def":
        assert (d.header["osversion"], d.header["mirrorurl"]) == ("bookworm", "http://deb.debian.org/debian")
        assert "python3-numpy" in d.script("post") and "--no-deps" in d.script("post")


def test_a_misspelt_bootstrap_agent_and_an_unclosed_placeholder_say_what_they_are(tmp_path):
    from shmbench.images.deffile import read_definition

    typo = tmp_path / "typo.def"
    typo.write_text("# a comment\nBootstrap: debootstrp\nOSVersion: bookworm\n%post\n    true\n")
    with pytest.raises(
        ImageError, match=r"typo\.def:2: unknown bootstrap agent 'debootstrp' -- did you mean 'debootstrap'\?"
    ):
        read_definition(typo)
    unclosed = tmp_path / "unclosed.def"
    unclosed.write_text("Bootstrap: debootstrap\nOSVersion: bookworm\n%files\n    {{ wheel } /x/\n%post\n    true\n")
    with pytest.raises(ImageError, match=r"unclosed\.def:4: '\{\{ wheel \}' is an unclosed build-argument placeholder"):
        read_definition(unclosed, {"wheel": "/w.whl"})
    # not typos: an agent far from every known one (Apptainer judges it), braces in a script
    far = parse_definition("Bootstrap: my-own-agent\n%post\n    echo '{}' '{{'\n")
    assert far.bootstrap == "my-own-agent"
    commented = parse_definition("Bootstrap: scratch\n# {{ not_closed\n%post\n    true\n")
    assert commented.bootstrap == "scratch"
