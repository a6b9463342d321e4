"""What a sweep is: the plan written into its output directory before any task runs.

A sweep is experiments x seeds, each (experiment, seed) one task that runs the same
episodes with the same baseline agent. The plan pins everything a task needs -- each
experiment's record hash, overrides and image digest, the agent, the runtime, the shmbench
version -- in ``DIR/plan.json``, so that a task started days later on another node, a
``shmbench resume`` and a ``shmbench collect`` all read one description, and a task whose
record changed under it refuses to run instead of logging a different experiment.

Task ids are readable and file-safe (``exp-0.01-seed3``): they name the task's log
(``DIR/logs/ID.jsonl``) and its markers (``DIR/state/ID.*``), and a Slurm array script
lists them as a bash array.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shmbench.errors import ExperimentError
from shmbench.experiments.combine import resolve_experiment, slug
from shmbench.images.pinned import obtain
from shmbench.images.store import file_digest
from shmbench.logs import timestamp
from shmbench.sweeps.files import write_json_atomic

__all__ = ["PLAN_FORMAT", "PLAN_NAME", "Plan", "Task", "SweepExperiment", "parse_seeds", "make_plan", "read_plan"]

PLAN_FORMAT = "shmbench-sweep/1"
PLAN_NAME = "plan.json"
#: a plan is small; a bigger file is not one of ours
_MAX_PLAN_BYTES = 64 << 20
#: seeds per sweep (a typo like 0-1000000000 must not build a billion tasks)
_MAX_TASKS = 100_000


def parse_seeds(text: str) -> list[int]:
    """``"0-3,10,12-13"`` -> ``[0, 1, 2, 3, 10, 12, 13]`` (ranges inclusive, order kept,
    repeats dropped)."""
    seeds: list[int] = []
    seen: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ExperimentError(f"--seeds {text!r}: expected N, N-M or a comma-separated list of them")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise ExperimentError(f"--seeds {text!r}: range {part} runs backwards")
        if hi - lo >= _MAX_TASKS:
            raise ExperimentError(f"--seeds {text!r}: more than {_MAX_TASKS} seeds")
        for s in range(lo, hi + 1):
            if s not in seen:
                seen.add(s)
                seeds.append(s)
    return seeds


@dataclass(frozen=True)
class SweepExperiment:
    """One experiment of a sweep, pinned: its record's hash and its image's digest."""

    identifier: str
    record_hash: str
    benchmark: str
    overrides: dict[str, Any]
    image: dict[str, str] | None  # {"ref": ..., "digest": "sha256:..."} or {"recipe": ..., "digest": ...}

    def to_dict(self) -> dict[str, Any]:
        return {
            "identifier": self.identifier,
            "record_hash": self.record_hash,
            "benchmark": self.benchmark,
            "overrides": self.overrides,
            "image": self.image,
        }


@dataclass(frozen=True)
class Task:
    """One (experiment, seed) of a sweep."""

    id: str
    experiment: int  # index into Plan.experiments
    seed: int


@dataclass
class Plan:
    """A sweep's plan (``DIR/plan.json``)."""

    directory: Path
    experiments: list[SweepExperiment]
    seeds: list[int]
    episodes: int
    agent: dict[str, Any]
    runtime: str
    config: dict[str, Any]
    created_at: str = field(default_factory=timestamp)
    shmbench: str = ""
    tasks: list[Task] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.tasks:
            self.tasks = [
                Task(f"{slug(e.identifier)}-seed{s}", i, s) for i, e in enumerate(self.experiments) for s in self.seeds
            ]
        if not self.shmbench:
            from shmbench import __version__

            self.shmbench = __version__

    # -- paths ---------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self.directory / PLAN_NAME

    def log_path(self, task: Task | str) -> Path:
        return self.directory / "logs" / f"{_id(task)}.jsonl"

    def state_dir(self) -> Path:
        return self.directory / "state"

    def task(self, task_id: str) -> Task:
        for t in self.tasks:
            if t.id == task_id:
                return t
        raise ExperimentError(f"sweep {self.directory}: no task {task_id!r} in its plan")

    # -- the file ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "created_at": self.created_at,
            "shmbench": self.shmbench,
            "episodes": self.episodes,
            "agent": self.agent,
            "runtime": self.runtime,
            "config": self.config,
            "seeds": self.seeds,
            "experiments": [e.to_dict() for e in self.experiments],
            "tasks": [{"id": t.id, "experiment": t.experiment, "seed": t.seed} for t in self.tasks],
        }

    def same_sweep(self, other: Plan) -> bool:
        """Whether ``other`` describes the same tasks (a rerun of one sweep)."""
        a, b = self.to_dict(), other.to_dict()
        keys = ("episodes", "agent", "runtime", "config", "experiments", "tasks")
        return all(a[k] == b[k] for k in keys)

    def write(self) -> None:
        """Write ``plan.json`` atomically (a reader never sees half a plan)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for sub in ("logs", "state"):
            (self.directory / sub).mkdir(exist_ok=True)
        write_json_atomic(self.path, self.to_dict())


def _id(task: Task | str) -> str:
    return task.id if isinstance(task, Task) else task


def read_plan(directory: str | os.PathLike[str]) -> Plan:
    """Read ``DIR/plan.json``.

    Raises:
        ExperimentError: when there is none, or it is not a sweep plan of a known format.
    """
    directory = Path(directory).absolute()
    path = directory / PLAN_NAME
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_PLAN_BYTES + 1)
    except FileNotFoundError:
        raise ExperimentError(f"{directory} holds no sweep (no {PLAN_NAME}); start one with shmbench sweep") from None
    if len(data) > _MAX_PLAN_BYTES:
        raise ExperimentError(f"{path}: larger than {_MAX_PLAN_BYTES} bytes; not a sweep plan")
    try:
        raw = json.loads(data)
        if raw.get("format") != PLAN_FORMAT:
            raise ValueError(f"format {raw.get('format')!r}, expected {PLAN_FORMAT!r}")
        return Plan(
            directory=directory,
            experiments=[SweepExperiment(**e) for e in raw["experiments"]],
            seeds=[int(s) for s in raw["seeds"]],
            episodes=int(raw["episodes"]),
            agent=dict(raw["agent"]),
            runtime=str(raw["runtime"]),
            config=dict(raw["config"]),
            created_at=str(raw["created_at"]),
            shmbench=str(raw["shmbench"]),
            tasks=[Task(str(t["id"]), int(t["experiment"]), int(t["seed"])) for t in raw["tasks"]],
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ExperimentError(f"{path}: not a readable sweep plan ({exc})") from None


def make_plan(
    directory: str | os.PathLike[str],
    experiments: Sequence[str],
    seeds: Iterable[int],
    *,
    episodes: int,
    agent: dict[str, Any] | None = None,
    runtime: str = "auto",
    config: dict[str, Any] | None = None,
    image: str | None = None,
    image_digest: str | None = None,
    offline: bool = False,
    pull: bool = True,
    progress: bool = False,
) -> Plan:
    """Resolve each experiment, pull and verify its image once (here, on the submitting
    host: tasks then run ``offline``), and return the plan (not yet written).

    ``pull=False`` skips the pull (``--print-only``); a local image is still hashed.
    """
    if not experiments:
        raise ExperimentError("a sweep needs at least one --experiment")
    seeds = list(seeds)
    if not seeds:
        raise ExperimentError("a sweep needs at least one seed")
    if episodes < 1:
        raise ExperimentError("--episodes must be at least 1")
    if len(experiments) * len(seeds) > _MAX_TASKS:
        raise ExperimentError(f"{len(experiments)} experiments x {len(seeds)} seeds is more than {_MAX_TASKS} tasks")
    if len(set(experiments)) != len(experiments):
        raise ExperimentError("an --experiment is named twice")
    agent = dict(agent or {"type": "random"})
    if agent.get("type") not in ("random", "static"):
        raise ExperimentError(f"agent {agent.get('type')!r}: a sweep runs the baseline agents random or static")
    pinned: list[SweepExperiment] = []
    for identifier in experiments:
        exp = resolve_experiment(None, identifier, config=config, image=image, image_digest=image_digest)
        spec = exp.image
        image_pin: dict[str, str] | None = None
        if spec is not None:
            # pulled and verified (or built from its recipe) once, here; a recipe is not
            # built for tasks that run on the host
            ref, digest = spec.ref, spec.digest
            if pull and (ref is not None or runtime not in ("local", "process")):
                got = obtain(spec, offline=offline, progress=progress)
                digest = got.digest
                if got.how == "built":  # the tasks find it in the cache, by its recipe digest
                    ref = None
                    image_pin = {"recipe": str(spec.recipe), "digest": str(digest)}
            elif ref is not None and digest is None and Path(ref).is_file():
                digest = file_digest(ref)
            if ref is not None:
                image_pin = {"ref": ref, **({"digest": digest} if digest else {})}
        pinned.append(
            SweepExperiment(
                identifier=identifier,
                # the record as found (before overrides): a task refuses to run if it changed
                record_hash=(exp.base or exp.record).canonical_hash(),
                benchmark=exp.record.benchmark,
                overrides=dict(exp.overrides),
                image=image_pin,
            )
        )
    return Plan(
        directory=Path(directory).absolute(),
        experiments=pinned,
        seeds=seeds,
        episodes=episodes,
        agent=agent,
        runtime=runtime,
        config=dict(config or {}),
    )
