"""DACBench's container API, as it maps onto shmbench's RemoteRunner.

DACBench's ``dacbench.container.remote_runner.RemoteRunner(benchmark, container_source=...,
container_name=..., container_tag=..., bind_str=..., env_str=..., gpu=...)`` starts a
Singularity container and talks to it over Pyro4. shmbench's
:class:`~shmbench.experiments.runner.RemoteRunner` takes the same keywords (and DACBench's
benchmark objects: :func:`shmbench.benchmarks.dacbench_ids.dacbench_object`), so that
DACBench's ``examples/container.py`` runs with only its import lines changed.
"""

from __future__ import annotations

import os
from typing import Any

from shmbench.errors import ExperimentError

__all__ = ["dacbench_keywords", "gpu_runtime"]


def dacbench_keywords(
    image: Any,
    binds: Any,
    environment: Any,
    *,
    container_source: Any,
    container_name: str | None,
    container_tag: str,
    bind_str: str | None,
    env_str: str | None,
) -> tuple[Any, Any, Any]:
    """``(image, binds, environment)`` with DACBench's RemoteRunner keywords folded in.

    * ``container_source``: a local SIF (or sandbox) is the image; a registry URL
      (``oras://host/path``, ``https://...``) names the image together with
      ``container_name`` (``<source>/<name>``) and ``container_tag`` (``:<tag>``, unless the
      reference has one);
    * ``bind_str``: ``src[:dst[:opts]]``, several separated by commas;
    * ``env_str``: ``VAR1=VALUE1,VAR2=VALUE2``.
    """
    if container_source is not None:
        if image is not None:
            raise ExperimentError("give image= or container_source=, not both")
        source = os.fspath(container_source)
        if "://" in source:
            ref = source.rstrip("/") + (f"/{container_name}" if container_name else "")
            if ":" not in ref.rsplit("/", 1)[-1] and container_tag:
                ref += f":{container_tag}"
            image = ref
        else:
            image = source
    elif container_name is not None:
        raise ExperimentError("container_name= names an image at a container_source=; give that too")
    if bind_str:
        binds = [*tuple(binds or ()), *[b.strip() for b in bind_str.split(",") if b.strip()]]
    if env_str:
        environment = dict(environment or {})
        for item in env_str.split(","):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ExperimentError(f"env_str: {item!r} is not VAR=VALUE")
            environment[key.strip()] = value
    return image, binds, environment


def gpu_runtime(runtime: Any, image: Any, binds: Any, environment: Any) -> Any:
    """DACBench's ``gpu=True``: Apptainer with ``--nv`` (bubblewrap's private /dev shows no GPU)."""
    from shmbench.runtimes.apptainer import ApptainerRuntime

    if isinstance(runtime, str) and runtime in ("auto", "apptainer", "singularity"):
        return ApptainerRuntime(image=image, binds=binds, environment=environment, nv=True)
    raise ExperimentError("gpu=True needs the apptainer runtime (its --nv); bubblewrap shows no GPU")
