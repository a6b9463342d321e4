"""Instance sets of the shmbench benchmarks: DACBench-format CSV files, inline rows, and the
env base class that walks a set episode by episode.

An instance is an integer id and a list of numbers (Luby: ``start, sticky``; Sigmoid: the
shifts then the slopes). A set comes from one of three places, first match wins: inline rows
in ``config["instance_set"]`` (what the host sends into a container, which cannot see the
host's files), a CSV file named by ``config["instance_set_path"]``, or a benchmark-specific
fallback. Each benchmark then checks the values against its own dimensions; this module only
gets the rows in, the same way and with the same messages for every benchmark.

Two CSV layouts exist because DACBench has two: when a benchmark names its values
(``names``), the file must have a header ``ID,<names...>`` and cells are found by column
name (DACBench's Luby reader); otherwise rows are positional, ``id, values...``, and any
row whose first cell is not an integer -- a header -- is skipped (DACBench's Sigmoid reader).

:class:`InstanceSetEnv` holds what every such env does the same way: refuse render modes,
resolve and check the config, load the set, seed at construction, and pick each episode's
instance (round robin or at random, or as ``reset`` options say).

>>> inline_instances([[0, 5.0, 1.0]], benchmark="shmbench/Sigmoid-v0")
{0: [5.0, 1.0]}
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import gymnasium
from gymnasium.core import ActType, ObsType

from shmbench.benchmarks._config import data_path
from shmbench.errors import ExperimentError

__all__ = ["Instances", "InstanceSetEnv", "read_instance_csv", "inline_instances", "raw_instances"]

#: Instance id -> its values, as read (unchecked against a benchmark's dimensions).
Instances = dict[int, list[float]]


def _shape(names: Sequence[str] | None) -> str:
    return ", ".join(names) if names else "values..."


def read_instance_csv(path: str | Path, *, benchmark: str, names: Sequence[str] | None = None) -> Instances:
    """Read a DACBench-format instance set (the layout follows ``names``; see the module docstring).

    Unlike DACBench, a bad number inside a data row is an error, not a silently dropped cell
    that would shift the remaining values into the wrong dimension.

    Args:
        path: the CSV file.
        benchmark: the benchmark id, for messages.
        names: the names of an instance's values, i.e. the header columns after ``ID``;
            ``None`` for positional rows.

    Raises:
        ExperimentError: for unreadable files, missing columns, bad cells or repeated ids.
    """
    instances: Instances = {}
    try:
        with open(path, newline="") as handle:
            rows = _named_rows(handle, path, benchmark, names) if names else _positional_rows(handle, path)
            for line, inst_id, values in rows:
                if inst_id in instances:
                    raise ExperimentError(f"{path}:{line}: instance id {inst_id} repeats")
                instances[inst_id] = values
    except OSError as exc:
        raise ExperimentError(f"{benchmark}: cannot read instance set {str(path)!r}: {exc}") from None
    if not instances:
        raise ExperimentError(f"{benchmark}: instance set {str(path)!r} has no instances")
    return instances


def _named_rows(
    handle: Iterable[str], path: str | Path, benchmark: str, names: Sequence[str]
) -> Iterator[tuple[int, int, list[float]]]:
    reader = csv.DictReader(handle)
    columns = ("ID", *names)
    missing = set(columns) - set(reader.fieldnames or ())
    if missing:
        raise ExperimentError(
            f"{path}: {benchmark} instance sets need the columns {', '.join(columns)}; missing {sorted(missing)}"
        )
    for line, row in enumerate(reader, start=2):
        try:
            inst_id = int(row["ID"])
            values = [float(row[name]) for name in names]
        except (TypeError, ValueError):
            raise ExperimentError(f"{path}:{line}: bad {benchmark} instance row {row!r}") from None
        yield line, inst_id, values


def _positional_rows(handle: Iterable[str], path: str | Path) -> Iterator[tuple[int, int, list[float]]]:
    for line, row in enumerate(csv.reader(handle), start=1):
        cells = [cell.strip() for cell in row]
        while cells and not cells[-1]:
            cells.pop()
        if not cells:
            continue
        try:
            inst_id = int(cells[0])
        except ValueError:
            continue
        try:
            values = [float(cell) for cell in cells[1:]]
        except ValueError:
            raise ExperimentError(f"{path}:{line}: non-numeric cell in instance {inst_id}: {row!r}") from None
        yield line, inst_id, values


def inline_instances(value: Any, *, benchmark: str, names: Sequence[str] | None = None) -> Instances:
    """Inline instances: rows ``[id, values...]`` (CSV-shaped) or ``{id: [values...]}``.

    The dict form is DACBench's in-memory instance set; its keys arrive as strings after a
    trip through JSON, so any key that reads as an integer is accepted.

    Args:
        value: ``config["instance_set"]``.
        benchmark: the benchmark id, for messages.
        names: the names of an instance's values, for messages only.

    Raises:
        ExperimentError: for malformed rows, non-integer ids, non-numeric values, repeated
            ids or an empty set.
    """
    where = f"{benchmark} config['instance_set']"
    shape = _shape(names)
    pairs: list[tuple[int, Any]] = []
    if isinstance(value, list):
        for row in value:
            if not isinstance(row, list) or not row or type(row[0]) is not int:
                raise ExperimentError(f"{where}: each row must be [id, {shape}] with an int id, got {row!r}")
            pairs.append((row[0], row[1:]))
    elif isinstance(value, Mapping):
        for key, values in value.items():
            try:
                pairs.append((int(key), values))
            except (TypeError, ValueError):
                raise ExperimentError(f"{where}: key {key!r} is not an integer id") from None
    else:
        raise ExperimentError(f"{where} must be a list of rows or a dict of id -> [{shape}], got {value!r}")
    instances: Instances = {}
    for inst_id, values in pairs:
        if inst_id in instances:
            raise ExperimentError(f"{where}: instance id {inst_id} repeats")
        if not isinstance(values, list) or any(type(v) not in (int, float) for v in values):
            raise ExperimentError(f"{where}: instance {inst_id} must be a list of numbers [{shape}], got {values!r}")
        instances[inst_id] = [float(v) for v in values]
    if not instances:
        raise ExperimentError(f"{where} is empty")
    return instances


def raw_instances(
    cfg: Mapping[str, Any],
    *,
    benchmark: str,
    names: Sequence[str] | None = None,
    fallback: Callable[[], tuple[Instances, str]],
) -> tuple[Instances, str]:
    """The instance set a resolved config names, unchecked, and a description of its source.

    The source (``"config['instance_set']"``, the file's path, or what ``fallback`` says)
    goes into the benchmark's own messages about bad values, so the user knows where to look.

    Args:
        cfg: a resolved config with ``instance_set`` and ``instance_set_path``.
        benchmark: the benchmark id, for messages.
        names: the names of an instance's values (see :func:`read_instance_csv`).
        fallback: returns the set and its description when the config names neither.
    """
    if cfg["instance_set"] is not None:
        return inline_instances(cfg["instance_set"], benchmark=benchmark, names=names), "config['instance_set']"
    if cfg["instance_set_path"] is not None:
        path = data_path(cfg["instance_set_path"])
        return read_instance_csv(path, benchmark=benchmark, names=names), str(path)
    return fallback()


class InstanceSetEnv(gymnasium.Env[ObsType, ActType]):
    """Base of the shmbench DAC envs: a checked config and an instance set, walked per episode.

    Subclasses name their benchmark and its config/instance functions as class attributes,
    call ``super().__init__`` first, start each episode with :meth:`_next_instance` and say
    in :meth:`_adhoc_instance` how a ``reset(options={"instance": ...})`` value is checked.

    Where this differs from DACBench (each choice keeps a seeded run reproducible): the first
    ``reset()`` uses the first instance, ``reset(seed=...)`` rewinds the order, and the
    ``"random"`` order draws from the env's own seeded Generator.

    Args:
        config: overrides of the benchmark's defaults (strict JSON). ``config["seed"]``
            seeds the env's Generator at construction, as DACBench does; ``reset(seed=...)``
            reseeds it.
        render_mode: only ``None`` (nothing to render).

    Raises:
        ExperimentError: for a render mode, a bad config or a bad instance set.

    Attributes:
        config: the resolved configuration.
        instance_set: instance id -> the instance, as the subclass's loader returns it.
        instance_id: the id of the current episode's instance (``None`` before reset or for
            an ad-hoc instance).
    """

    metadata: dict[str, Any] = {"render_modes": []}

    #: The benchmark id, for messages.
    benchmark: ClassVar[str]
    _resolve_config: ClassVar[staticmethod[[Mapping[str, Any] | None], dict[str, Any]]]
    _load_instances: ClassVar[staticmethod[[Mapping[str, Any]], Mapping[int, Any]]]

    def __init__(self, config: Mapping[str, Any] | None = None, render_mode: str | None = None) -> None:
        if render_mode is not None:
            raise ExperimentError(f"{self.benchmark} has no render modes, got render_mode={render_mode!r}")
        self.render_mode = None
        self.config = type(self)._resolve_config(config)
        self.instance_set = type(self)._load_instances(self.config)
        self.instance_id: int | None = None
        self._ids = sorted(self.instance_set)
        self._cursor = -1  # index into _ids of the last instance used by round robin
        if self.config["seed"] is not None:
            # DACBench's convention: the config's seed seeds the Generator at construction.
            super().reset(seed=self.config["seed"])

    def _next_instance(self, seed: int | None, options: Mapping[str, Any] | None) -> Any:
        """Reseed (rewinding the instance order) and return the next episode's instance.

        Args:
            seed: reseeds the env's Generator and rewinds the instance order.
            options: ``{"instance_id": id}`` to pick an instance of the set, or
                ``{"instance": values}`` to run an ad-hoc one.

        Raises:
            ValueError: for unknown options or an unknown instance id.
        """
        super().reset(seed=seed)
        if seed is not None:
            self._cursor = -1
        options = {} if options is None else options
        if not isinstance(options, Mapping) or set(options) - {"instance_id", "instance"}:
            raise ValueError(f"{self.benchmark}: reset options may hold 'instance_id' or 'instance', got {options!r}")
        if "instance" in options:
            instance = self._adhoc_instance(options["instance"])
            self.instance_id = None
            return instance
        if "instance_id" in options:
            inst_id = options["instance_id"]
            if inst_id not in self.instance_set:
                raise ValueError(f"{self.benchmark}: no instance with id {inst_id!r}")
            self.instance_id = inst_id
            return self.instance_set[inst_id]
        if self.config["instance_update_func"] == "random":
            self._cursor = int(self.np_random.integers(len(self._ids)))
        else:
            self._cursor = (self._cursor + 1) % len(self._ids)
        self.instance_id = self._ids[self._cursor]
        return self.instance_set[self.instance_id]

    def _adhoc_instance(self, values: Any) -> Any:
        """Check an instance given as ``reset(options={"instance": values})`` and return it."""
        raise NotImplementedError

    def render(self) -> None:
        """Nothing to render (``metadata["render_modes"]`` is empty)."""
        return None
