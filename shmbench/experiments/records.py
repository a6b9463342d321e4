"""Experiment records: what an identifier such as ``exp:0.01`` stands for.

A record pins everything that decides an experiment's numbers -- the container image
(reference + sha256 digest), the benchmark id, its configuration, the seeding policy, the
wrappers -- plus what gets logged, so that ``RemoteRunner(benchmark,
experiment_identifier="exp:0.01")`` on two machines runs the same thing, and a log file can
say exactly which spec produced it (:meth:`ExperimentRecord.canonical_hash`).

Records are data, never code: a benchmark is a whitelisted id, the config is strict JSON,
wrappers are whitelisted names with JSON arguments. Nothing in a record can make the host
import or execute anything.

Where records come from, first match wins:

1. the directories in ``$SHMBENCH_EXPERIMENTS`` (``os.pathsep``-separated), in order;
2. the user's directory, ``platformdirs.user_config_dir("shmbench")/experiments``;
3. a remote index, when ``$SHMBENCH_EXPERIMENT_INDEX`` holds its URL (http, https or
   file): a JSON document ``{"experiments": [record, ...]}``; the last good copy is kept
   in the cache and used (with a warning) when the index cannot be fetched;
4. the records shipped in this package (``shmbench/experiments/*.toml``).

A record is one file, TOML (``*.toml``) or JSON (``*.json``); its name is free (an
identifier's colon is awkward in file names). Unknown fields are errors, not ignored: a
misspelt field in a user's override must not silently fall back to a default.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import re
import sys
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from shmbench.errors import ExperimentError, ImageError
from shmbench.images.refs import ImageSpec, parse_ref
from shmbench.wire.strict_json import loads, strict_json

__all__ = [
    "write_user_record",
    "EXPERIMENTS_ENV",
    "INDEX_ENV",
    "SEED_POLICIES",
    "WRAPPERS",
    "LOG_FIELDS",
    "SeedPolicy",
    "WrapperSpec",
    "ExperimentRecord",
    "check_json",
    "load_record",
    "parse_record",
    "resolve",
    "list_experiments",
    "user_experiments_dir",
]

#: Directories searched first, separated by ``os.pathsep``.
EXPERIMENTS_ENV = "SHMBENCH_EXPERIMENTS"
#: URL of a remote JSON index of records.
INDEX_ENV = "SHMBENCH_EXPERIMENT_INDEX"

#: How episodes are seeded. ``increment``: episode *i* resets with ``base + i`` (every
#: episode differs, the run is reproducible); ``fixed``: every reset uses ``base`` (the same
#: episode each time); ``once``: the first reset uses ``base``, later ones continue the env's
#: own generator (gymnasium's convention).
SEED_POLICIES = ("increment", "fixed", "once")

#: Wrappers a record may name: gymnasium wrappers whose arguments are plain JSON values.
#: The environment side maps each name to its class; a wrapper that needs a function cannot
#: be described by data and is left out on purpose.
WRAPPERS = frozenset(
    {
        "TimeLimit",
        "ClipAction",
        "RescaleAction",
        "RescaleObservation",
        "FlattenObservation",
        "NormalizeObservation",
        "NormalizeReward",
        "ClipReward",
        "RecordEpisodeStatistics",
        "FrameStackObservation",
    }
)

#: What a run may log per step or episode (the names DACBench's logging wrappers use).
LOG_FIELDS = frozenset({"reward", "action", "state", "info", "instance", "performance", "time"})

_IDENTIFIER_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*:[A-Za-z0-9][A-Za-z0-9_.-]*")
# A gymnasium-style id, optionally namespaced. No ':' -- gymnasium reads "module:Env-v0" as
# an import path, and records must not carry code locations.
_BENCHMARK_RE = re.compile(r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)?")
_FIELDS = ("identifier", "description", "benchmark", "image", "config", "seed", "wrappers", "log")
_DEFAULT_LOG = ("reward",)


class _FieldError(ExperimentError):
    """A problem with one field. Parsing re-raises it as an ExperimentError that also names
    the record's source; raised as is, it still is an ExperimentError."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"field {field_name!r}: {problem}")
        self.field_name = field_name
        self.problem = problem


# ------------------------------------------------------------------------------ strict json


def check_json(value: Any, where: str = "value") -> None:
    """Raise ExperimentError unless ``value`` is strict JSON.

    Strict JSON: dict (str keys), list, str, int, finite float, bool, None. Tuples, NaN,
    infinities, TOML dates and numpy scalars are refused: each would either not survive a
    round trip through the container or hash differently on another machine. (The check is
    :func:`shmbench.wire.strict_json.strict_json` in its exact mode, naming fields ``a.b[0]`` as
    the rest of a record's messages do.)
    """
    strict_json(value, where=where, exact=True, dotted=True, error=_FieldError)


# ------------------------------------------------------------------------------- the record


@dataclass(frozen=True)
class SeedPolicy:
    """The seed of the first episode and how later episodes are seeded (:data:`SEED_POLICIES`)."""

    base: int = 0
    per_episode: str = "increment"

    def __post_init__(self) -> None:
        if type(self.base) is not int or not 0 <= self.base < 2**63:
            raise _FieldError("seed.base", f"must be an integer in [0, 2**63), not {self.base!r}")
        if self.per_episode not in SEED_POLICIES:
            raise _FieldError(
                "seed.per_episode", f"must be one of {', '.join(SEED_POLICIES)}, not {self.per_episode!r}"
            )

    def seed_for(self, episode: int) -> int | None:
        """The seed to pass to ``reset`` for episode ``episode`` (0-based); None: don't."""
        if self.per_episode == "increment":
            return self.base + episode
        if self.per_episode == "fixed" or episode == 0:
            return self.base
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"base": self.base, "per_episode": self.per_episode}


@dataclass(frozen=True)
class WrapperSpec:
    """One wrapper: a name from :data:`WRAPPERS` and its JSON keyword arguments."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in WRAPPERS:
            raise _FieldError(
                "wrappers.name", f"{self.name!r} is not an allowed wrapper (allowed: {', '.join(sorted(WRAPPERS))})"
            )
        if type(self.kwargs) is not dict:
            raise _FieldError("wrappers.kwargs", f"must be a table of keyword arguments, not {self.kwargs!r}")
        check_json(self.kwargs, "wrappers.kwargs")
        object.__setattr__(self, "kwargs", copy.deepcopy(self.kwargs))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": copy.deepcopy(self.kwargs)}

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))


@dataclass(frozen=True)
class ExperimentRecord:
    """One experiment, validated on construction.

    Treat ``config`` and the wrappers' ``kwargs`` as read-only (they are private deep
    copies; use :func:`dataclasses.replace` to derive a record): the hash is computed from
    them.

    Attributes:
        identifier: e.g. ``exp:0.01``.
        benchmark: a benchmark id, e.g. ``shmbench/Sigmoid-v0`` or ``CartPole-v1``.
        config: the benchmark's keyword arguments, strict JSON.
        image: the pinned image, or None to run on the host (``process`` runtime) or with an
            image given by the caller.
        seed: the seeding policy.
        wrappers: applied in order, innermost first.
        log: what a runner logs (:data:`LOG_FIELDS`).
        description: one line for listings; not part of the hash.
        source: where the record was read from (a path or URL); not part of the record.
    """

    identifier: str
    benchmark: str
    config: dict[str, Any] = field(default_factory=dict)
    image: ImageSpec | None = None
    seed: SeedPolicy = field(default_factory=SeedPolicy)
    wrappers: tuple[WrapperSpec, ...] = ()
    log: tuple[str, ...] = _DEFAULT_LOG
    description: str = ""
    source: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        try:
            self._validate()
        except _FieldError as exc:
            raise ExperimentError(
                f"{self.source or 'experiment record'}: field {exc.field_name!r}: {exc.problem}"
            ) from None

    def _validate(self) -> None:
        if not isinstance(self.identifier, str) or not _IDENTIFIER_RE.fullmatch(self.identifier):
            raise _FieldError(
                "identifier",
                f"{self.identifier!r} is not an identifier like 'exp:0.01' (NAME:VERSION; letters, digits, . _ -)",
            )
        if not isinstance(self.benchmark, str) or not _BENCHMARK_RE.fullmatch(self.benchmark):
            raise _FieldError(
                "benchmark", f"{self.benchmark!r} is not a benchmark id such as 'shmbench/Sigmoid-v0' (no import paths)"
            )
        if type(self.config) is not dict:
            raise _FieldError("config", f"must be a table/object, not {type(self.config).__name__}")
        check_json(self.config, "config")
        object.__setattr__(self, "config", copy.deepcopy(self.config))
        if self.image is not None and not isinstance(self.image, ImageSpec):
            raise _FieldError("image", f"must be an ImageSpec, not {self.image!r}")
        if not isinstance(self.seed, SeedPolicy):
            raise _FieldError("seed", f"must be a SeedPolicy, not {self.seed!r}")
        wrappers = tuple(self.wrappers)
        if not all(isinstance(w, WrapperSpec) for w in wrappers):
            raise _FieldError("wrappers", "must be WrapperSpec objects")
        object.__setattr__(self, "wrappers", wrappers)
        log = tuple(self.log)
        for name in log:
            if name not in LOG_FIELDS:
                raise _FieldError("log", f"{name!r} is not a loggable field (allowed: {', '.join(sorted(LOG_FIELDS))})")
        if len(set(log)) != len(log):
            raise _FieldError("log", f"lists a field twice: {list(log)}")
        object.__setattr__(self, "log", log)
        if not isinstance(self.description, str):
            raise _FieldError("description", "must be a string")

    def _spec(self) -> dict[str, Any]:
        # Optional parts are left out when absent rather than written as null, so that a
        # field added in a later version (absent from old records) keeps old hashes valid.
        spec: dict[str, Any] = {
            "identifier": self.identifier,
            "benchmark": self.benchmark,
            "config": copy.deepcopy(self.config),
            "seed": self.seed.to_dict(),
            "wrappers": [w.to_dict() for w in self.wrappers],
            "log": list(self.log),
        }
        if self.image is not None:
            spec["image"] = self.image.to_dict()
        return spec

    def to_dict(self) -> dict[str, Any]:
        """The record as plain JSON data; :func:`parse_record` reads it back."""
        out = self._spec()
        if self.description:
            out["description"] = self.description
        return out

    def canonical_json(self) -> str:
        """The spec as canonical JSON: sorted keys, no whitespace, ASCII only.

        The description and source are left out: they do not change what runs, and fixing a
        typo in prose must not orphan the logs that cite the old hash.
        """
        return json.dumps(self._spec(), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)

    def canonical_hash(self) -> str:
        """``sha256:<hex>`` of :meth:`canonical_json` -- what a log records as "this spec"."""
        return "sha256:" + hashlib.sha256(self.canonical_json().encode("ascii")).hexdigest()

    def __hash__(self) -> int:
        return hash(self.canonical_json())


# ---------------------------------------------------------------------------------- parsing


def parse_record(data: Any, *, source: str = "experiment record") -> ExperimentRecord:
    """Build a record from parsed TOML/JSON data; errors name ``source`` and the field."""
    try:
        return _parse(data, source)
    except _FieldError as exc:
        raise ExperimentError(f"{source}: field {exc.field_name!r}: {exc.problem}") from None


def _table(
    raw: Any, name: str, known: tuple[str, ...], shape: str, *, required: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Return ``raw`` if it is a table holding ``required`` and only ``known`` fields.

    Raises:
        _FieldError: naming ``name`` with ``shape`` (what the table should look like), or
            the first unknown field as ``name.field``.
    """
    if not isinstance(raw, dict) or any(key not in raw for key in required):
        raise _FieldError(name, shape)
    extra = sorted(set(raw) - set(known))
    if extra:
        raise _FieldError(f"{name}.{extra[0]}", f"unknown field (known: {', '.join(known)})")
    return raw


def _parse(data: Any, source: str) -> ExperimentRecord:
    if not isinstance(data, dict):
        raise ExperimentError(f"{source}: an experiment record must be a table/object, not {type(data).__name__}")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise _FieldError(unknown[0], f"unknown field (known: {', '.join(_FIELDS)})")
    for required in ("identifier", "benchmark"):
        if required not in data:
            raise _FieldError(required, "missing (required)")

    image = None
    if "image" in data:
        raw = _table(
            data["image"],
            "image",
            ("ref", "digest", "recipe", "build_args", "lock"),
            "must be a table with 'ref' and 'digest', or 'recipe' (and 'lock')",
        )
        for key in ("ref", "digest", "recipe", "lock"):
            if key in raw and not isinstance(raw[key], str):
                raise _FieldError(f"image.{key}", "must be a string")
        if "ref" not in raw and "recipe" not in raw:
            raise _FieldError("image.ref", "missing (or give 'recipe' to build the image from)")
        args = raw.get("build_args", {})
        if not isinstance(args, dict) or not all(isinstance(v, str) for v in args.values()):
            raise _FieldError("image.build_args", "must be a table of strings")
        if "ref" in raw:
            try:
                parsed = parse_ref(raw["ref"])
            except ImageError as exc:
                raise _FieldError("image.ref", str(exc)) from None
            if "digest" not in raw and parsed.remote:
                raise _FieldError("image.digest", "missing: a remote image must be pinned by the sha256 of its file")
        try:
            image = ImageSpec(
                raw.get("ref"),
                raw.get("digest"),
                recipe=raw.get("recipe"),
                build_args=tuple(args.items()),
                lock=raw.get("lock"),
            )
        except ImageError as exc:
            raise _FieldError("image.digest", str(exc)) from None

    seed = SeedPolicy()
    if "seed" in data:
        raw = _table(
            data["seed"], "seed", ("base", "per_episode"), 'must be a table like {base = 0, per_episode = "increment"}'
        )
        seed = SeedPolicy(**raw)

    wrappers = []
    raw_wrappers = data.get("wrappers", [])
    if not isinstance(raw_wrappers, list):
        raise _FieldError("wrappers", "must be a list of {name, kwargs} tables")
    for i, raw in enumerate(raw_wrappers):
        _table(
            raw,
            f"wrappers[{i}]",
            ("name", "kwargs"),
            "must be a table with 'name' (and optional 'kwargs')",
            required=("name",),
        )
        try:
            wrappers.append(WrapperSpec(raw["name"], raw.get("kwargs", {})))
        except _FieldError as exc:
            raise _FieldError(exc.field_name.replace("wrappers", f"wrappers[{i}]", 1), exc.problem) from None

    log = data.get("log", list(_DEFAULT_LOG))
    if not isinstance(log, list) or not all(isinstance(x, str) for x in log):
        raise _FieldError("log", "must be a list of strings")
    if "config" in data and not isinstance(data["config"], dict):
        raise _FieldError("config", f"must be a table/object, not {type(data['config']).__name__}")
    return ExperimentRecord(
        identifier=data["identifier"],
        benchmark=data["benchmark"],
        config=data.get("config", {}),
        image=image,
        seed=seed,
        wrappers=tuple(wrappers),
        log=tuple(log),
        description=data.get("description", ""),
        source=source,
    )


def _loads_toml(text: str, source: str) -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ExperimentError(f"{source}: reading TOML on Python 3.10 needs the 'tomli' package") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ExperimentError(f"{source}: not valid TOML: {exc}") from None


def load_record(path: str | os.PathLike[str]) -> ExperimentRecord:
    """Read one record file (``.toml`` or ``.json``)."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ExperimentError(f"{source}: cannot read: {exc}") from None
    if path.suffix == ".json":
        data = loads(text, where=source)
    elif path.suffix == ".toml":
        data = _loads_toml(text, source)
    else:
        raise ExperimentError(f"{source}: a record file must end in .toml or .json")
    return parse_record(data, source=source)


# ---------------------------------------------------------------------------------- sources


def user_experiments_dir() -> Path:
    """``platformdirs.user_config_dir("shmbench")/experiments`` (not created)."""
    import platformdirs

    return Path(platformdirs.user_config_dir("shmbench")) / "experiments"


def write_user_record(record: ExperimentRecord, directory: Path | None = None, *, force: bool = False) -> Path:
    """Write ``record`` as ``DIRECTORY/<identifier>.json`` (default: the user's directory,
    which overrides shipped records); returns the path. Read back before it is kept.

    Raises:
        ExperimentError: the file exists (without ``force``), or another file there defines
            the same identifier.
    """
    directory = Path(directory) if directory is not None else user_experiments_dir()
    directory.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", record.identifier).strip("-") or "record"
    path = directory / f"{name}.json"
    if path.exists() and not force:
        raise ExperimentError(f"{path} exists; pass force=True (--force) to replace it")
    for other, existing in _directory(directory).items():
        if other == record.identifier and existing.source != str(path):
            raise ExperimentError(f"{existing.source} already defines {other}; remove it or write elsewhere")
    text = json.dumps(record.to_dict(), indent=2, sort_keys=True) + "\n"
    if parse_record(json.loads(text), source=str(path)).canonical_hash() != record.canonical_hash():
        raise ExperimentError(f"{path}: the record would not read back as written")
    tmp = path.with_name(f".{path.name}.partial")  # not *.json: no reader takes it for a record
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _collect(records: Iterator[ExperimentRecord], where: str) -> dict[str, ExperimentRecord]:
    found: dict[str, ExperimentRecord] = {}
    for record in records:
        if record.identifier in found:
            raise ExperimentError(
                f"{where}: experiment {record.identifier!r} is defined twice, in "
                f"{found[record.identifier].source} and {record.source}"
            )
        found[record.identifier] = record
    return found


def _directory(path: Path) -> dict[str, ExperimentRecord]:
    files = sorted(p for p in path.iterdir() if p.suffix in (".toml", ".json") and p.is_file())
    return _collect((load_record(p) for p in files), str(path))


def _package() -> dict[str, ExperimentRecord]:
    def read() -> Iterator[ExperimentRecord]:
        for entry in sorted(resources.files("shmbench.experiments").iterdir(), key=lambda e: e.name):
            if entry.name.endswith(".toml"):
                source = f"shmbench/experiments/{entry.name}"
                yield parse_record(_loads_toml(entry.read_text(encoding="utf-8"), source), source=source)

    return _collect(read(), "shmbench/experiments")


def _index(url: str) -> dict[str, ExperimentRecord]:
    """The records of the remote index, falling back to the cached copy of the last fetch."""
    from shmbench.images.store import cache_subdir

    if url.split(":", 1)[0].lower() not in ("http", "https", "file"):
        raise ExperimentError(f"${INDEX_ENV}={url!r}: the index URL must be http, https or file")
    cache_file = cache_subdir("experiments") / f"index-{hashlib.sha256(url.encode()).hexdigest()[:16]}.json"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            body = response.read()
        _parse_index(body, url)  # only a valid index replaces the cached one
        tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.part")
        tmp.write_bytes(body)
        os.replace(tmp, cache_file)
    except OSError as exc:  # URLError, timeouts, refused connections
        if not cache_file.is_file():
            raise ExperimentError(
                f"cannot fetch the experiment index {url} (${INDEX_ENV}) and no copy is cached: {exc}"
            ) from None
        warnings.warn(
            f"cannot fetch the experiment index {url} ({exc}); using the copy cached at {cache_file}",
            RuntimeWarning,
            stacklevel=4,
        )
        body = cache_file.read_bytes()
    return _parse_index(body, url)


def _parse_index(body: bytes, url: str) -> dict[str, ExperimentRecord]:
    data = loads(body, where=url)
    entries = data.get("experiments") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ExperimentError(f'{url}: an experiment index is a JSON object {{"experiments": [...]}}')
    return _collect((parse_record(e, source=f"{url}#experiments[{i}]") for i, e in enumerate(entries)), url)


def _sources() -> Iterator[tuple[str, Callable[[], dict[str, ExperimentRecord]]]]:
    """(name, loader) pairs in priority order; loaders run only when reached."""
    for entry in os.environ.get(EXPERIMENTS_ENV, "").split(os.pathsep):
        if entry:
            path = Path(entry).expanduser()
            if not path.is_dir():
                raise ExperimentError(f"${EXPERIMENTS_ENV} names {entry!r}, which is not a directory")
            yield str(path), functools.partial(_directory, path)
    user = user_experiments_dir()
    if user.is_dir():
        yield str(user), lambda: _directory(user)
    url = os.environ.get(INDEX_ENV, "").strip()
    if url:
        yield url, lambda: _index(url)
    yield "shmbench/experiments", _package


def resolve(identifier: str) -> ExperimentRecord:
    """The record for ``identifier`` from the first source that has it.

    Raises:
        ExperimentError: unknown identifier (the message lists the known ones), or a
            malformed record in a source searched before it was found.
    """
    if not isinstance(identifier, str) or not _IDENTIFIER_RE.fullmatch(identifier):
        raise ExperimentError(f"{identifier!r} is not an experiment identifier like 'exp:0.01'")
    known: set[str] = set()
    for _, load in _sources():
        records = load()
        if identifier in records:
            return records[identifier]
        known.update(records)
    raise ExperimentError(f"unknown experiment {identifier!r}; known: {', '.join(sorted(known)) or '(none)'}")


def list_experiments() -> list[ExperimentRecord]:
    """Every visible record (overrides applied: first source wins), sorted by identifier."""
    merged: dict[str, ExperimentRecord] = {}
    for _, load in _sources():
        for identifier, record in load().items():
            merged.setdefault(identifier, record)
    return [merged[k] for k in sorted(merged)]
