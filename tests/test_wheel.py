"""shmbench.images.wheel: building an image needs no manual step -- the recipe's
``{{ wheel }}`` is a wheel of the running shmbench, built from its checkout once per source."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from shmbench.images.wheel import checkout_root, own_wheel, source_hash, with_own_wheel

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"


def test_a_recipe_that_needs_a_wheel_gets_this_shmbench():
    args = with_own_wheel((RECIPES / "bookworm-numpy124.def").read_text(), {"gymnasium_version": "1.4.0"})
    assert args["gymnasium_version"] == "1.4.0"
    wheel = Path(args["wheel"])
    assert wheel.is_file() and wheel.parent.name == source_hash(REPO)
    names = zipfile.ZipFile(wheel).namelist()
    assert "shmbench/server/__init__.py" in names and "shmbench/perf/suites/conftest.py" in names
    assert any(n.startswith("shmbench/_ring/_ring.") and n.endswith(".so") for n in names)
    assert own_wheel(REPO) == wheel  # cached: the same file, not a rebuild


def test_a_given_or_declared_wheel_and_recipes_without_one_are_left_alone():
    text = (RECIPES / "bookworm-numpy124.def").read_text()
    assert with_own_wheel(text, {"wheel": "/x.whl"}) == {"wheel": "/x.whl"}
    assert with_own_wheel((RECIPES / "light.def").read_text(), None) == {}  # it holds no shmbench
    assert with_own_wheel("Bootstrap: debootstrap\n%post\n    true\n", None) == {}
    declared = "Bootstrap: debootstrap\n%arguments\n    wheel=/opt/w.whl\n%files\n    {{ wheel }} /w/\n"
    assert with_own_wheel(declared, None) == {}


def test_the_tests_run_against_a_checkout():
    root = checkout_root()
    # an editable install or the tree itself: a checkout; a non-editable install: None
    assert root in (REPO, None)


@pytest.mark.slow
def test_building_a_shipped_recipe_takes_no_build_argument(bookworm_sif):
    """build_cached(recipe) with no wheel: the same inputs as the reference build (which
    gave it this tree's wheel explicitly), so the same image -- found by its digest."""
    from shmbench.images.build import build_cached

    if checkout_root() is None:
        pytest.skip(
            "an installed (non-editable) shmbench cannot build a wheel of itself; test_bench_install checks its message"
        )
    assert build_cached(RECIPES / "bookworm-numpy124.def", build_args={}) == bookworm_sif
