"""shmbench.runtimes.selection: which runtime ``"auto"`` and each name resolve to, decided once."""

from __future__ import annotations

import pytest

from shmbench.errors import RuntimeUnavailable
from shmbench.runtimes import selection
from shmbench.runtimes.process import ProcessRuntime


@pytest.fixture
def probes(monkeypatch):
    """Set what each runtime's probe answers (the probes themselves run in test_bwrap.py and
    test_apptainer.py); returns the dict to fill."""
    answers: dict[str, tuple[bool, str]] = {}
    monkeypatch.setattr(selection, "_probe", lambda name: answers.get(name, (False, f"{name} is not here")))
    monkeypatch.delenv("SHMBENCH_RUNTIME", raising=False)
    return answers


def test_auto_prefers_apptainer_for_images_then_bwrap_then_a_process(probes):
    probes.update(apptainer=(True, "ok"), bwrap=(True, "ok"), process=(True, "ok"))
    assert selection.choose("auto", image="x.sif") == "apptainer"
    assert selection.choose("auto") == "bwrap"  # no image: not apptainer
    probes["bwrap"] = (False, "no user namespaces")
    assert selection.choose("auto") == "process"
    probes["apptainer"] = (False, "not installed")
    with pytest.raises(RuntimeUnavailable, match="no runtime can run image 'x.sif'.*no user namespaces"):
        selection.choose("auto", image="x.sif")  # never a plain process for an image


def test_the_environment_variable_and_explicit_names(probes, monkeypatch):
    probes.update(bwrap=(True, "ok"), process=(True, "ok"))
    monkeypatch.setenv("SHMBENCH_RUNTIME", "process")
    assert selection.choose("auto") == "process"
    assert selection.choose("bwrap") == "bwrap"  # an explicit name wins over it
    with pytest.raises(RuntimeUnavailable, match="'apptainer' does not work here: apptainer is not here"):
        selection.choose("apptainer")
    with pytest.raises(ValueError, match="unknown runtime 'docker'"):
        selection.choose("docker")
    rt = ProcessRuntime()
    assert selection.choose(rt) == "process" and selection.get_runtime(rt) is rt


def test_falling_back_to_a_process_warns_once_with_the_reasons(probes):
    probes.update(bwrap=(False, "no user namespaces"), process=(True, "ok"))
    with pytest.warns(RuntimeWarning, match="no container runtime works here.*bwrap: no user namespaces"):
        rt = selection.get_runtime("auto")
    assert isinstance(rt, ProcessRuntime)
