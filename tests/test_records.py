"""Tests for shmbench.experiments: records, their sources and their canonical hash.

Every test gets its own empty user config dir ($XDG_CONFIG_HOME), cache dir and no
$SHMBENCH_EXPERIMENTS / $SHMBENCH_EXPERIMENT_INDEX, so only what a test writes is visible
besides the records shipped with the package. The remote index is served by a real HTTP
server on loopback.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path

import pytest
from registry import FileServer, free_port

from shmbench.errors import ExperimentError
from shmbench.experiments import (
    EXPERIMENTS_ENV,
    INDEX_ENV,
    ExperimentRecord,
    SeedPolicy,
    WrapperSpec,
    check_json,
    list_experiments,
    load_record,
    parse_record,
    resolve,
    user_experiments_dir,
)
from shmbench.images.refs import ImageSpec

DIGEST = "sha256:" + "ab" * 32

USER_RECORD = f"""
identifier = "exp:0.01"
benchmark = "shmbench/Sigmoid-v0"
log = ["reward"]

[image]
ref = "oras://ghcr.io/someone/light:0.1"
digest = "{DIGEST}"

[config]
action_values = [3]
cutoff = 5
"""


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("SHMBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv(EXPERIMENTS_ENV, raising=False)
    monkeypatch.delenv(INDEX_ENV, raising=False)
    return tmp_path


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def minimal(**fields) -> dict:
    data = {"identifier": "exp:test", "benchmark": "shmbench/Sigmoid-v0"}
    data.update(fields)
    return data


# ------------------------------------------------------- the shipped record and the sources


def test_shipped_exp_0_01_resolves():
    record = resolve("exp:0.01")
    assert record.identifier == "exp:0.01"
    assert record.benchmark == "shmbench/Sigmoid-v0"
    # not published yet: pinned by its recipe and lock (see the record's comments)
    assert record.image == ImageSpec(None, recipe="light.def", lock="light.lock.json")
    assert record.seed == SeedPolicy(base=0, per_episode="once")
    assert record.log == ("reward", "action", "state")
    assert record.config["action_values"] == [5, 10] and record.config["cutoff"] == 10
    assert record.source is not None and record.source.endswith("exp-0.01.toml")
    assert [r.identifier for r in list_experiments()] == ["exp:0.01"]


def test_shipped_exp_0_01_identity_is_pinned():
    # The hash is what logs cite. Changing the shipped record changes the experiment: give
    # it a new identifier instead of editing this one. (Changed once, on purpose: the
    # image it runs in became part of it, pinned by recipe and lock -- issue 12.)
    record = resolve("exp:0.01")
    assert record.canonical_json() == (
        '{"benchmark":"shmbench/Sigmoid-v0","config":{"action_values":[5,10],"cutoff":10,'
        '"instance_set_path":"sigmoid_2d_default.csv","instance_update_func":"round_robin",'
        '"slope_multiplier":2.0},"identifier":"exp:0.01","image":{"lock":"light.lock.json",'
        '"recipe":"light.def"},"log":["reward","action","state"],'
        '"seed":{"base":0,"per_episode":"once"},"wrappers":[]}'
    )
    assert record.canonical_hash() == "sha256:" + hashlib.sha256(record.canonical_json().encode()).hexdigest()


def test_shipped_config_is_accepted_by_the_sigmoid_benchmark():
    sigmoid = pytest.importorskip("shmbench.benchmarks.sigmoid")
    resolved = sigmoid.resolve_config(resolve("exp:0.01").config)
    assert resolved["action_values"] == [5, 10]


def test_user_dir_overrides_shipped():
    path = write(user_experiments_dir(), "my-sigmoid.toml", USER_RECORD)
    record = resolve("exp:0.01")
    assert record.source == str(path)
    assert record.image == ImageSpec("oras://ghcr.io/someone/light:0.1", DIGEST)
    assert record.config == {"action_values": [3], "cutoff": 5}
    assert [r.source for r in list_experiments()] == [str(path)]


def test_env_dirs_come_first_in_order(tmp_path, monkeypatch):
    write(user_experiments_dir(), "u.toml", USER_RECORD)
    first = write(tmp_path / "first", "a.json", json.dumps(minimal(identifier="exp:0.01", description="first")))
    write(tmp_path / "second", "a.json", json.dumps(minimal(identifier="exp:0.01", description="second")))
    second_only = write(tmp_path / "second", "b.json", json.dumps(minimal(identifier="exp:b")))
    monkeypatch.setenv(EXPERIMENTS_ENV, os.pathsep.join([str(tmp_path / "first"), "", str(tmp_path / "second")]))
    assert resolve("exp:0.01").source == str(first)
    assert resolve("exp:b").source == str(second_only)
    assert [(r.identifier, r.description) for r in list_experiments()] == [("exp:0.01", "first"), ("exp:b", "")]


def test_env_dir_that_does_not_exist(tmp_path, monkeypatch):
    monkeypatch.setenv(EXPERIMENTS_ENV, str(tmp_path / "nope"))
    with pytest.raises(ExperimentError, match="not a directory"):
        resolve("exp:0.01")


def test_unknown_identifier_lists_known_ones(tmp_path, monkeypatch):
    write(tmp_path / "d", "x.toml", 'identifier = "exp:x"\nbenchmark = "CartPole-v1"\n')
    monkeypatch.setenv(EXPERIMENTS_ENV, str(tmp_path / "d"))
    with pytest.raises(ExperimentError, match=r"unknown experiment 'exp:nope'; known: exp:0.01, exp:x"):
        resolve("exp:nope")
    with pytest.raises(ExperimentError, match="not an experiment identifier"):
        resolve("no colon")


def test_duplicate_identifier_in_one_directory(tmp_path, monkeypatch):
    a = write(tmp_path / "d", "a.toml", 'identifier = "exp:x"\nbenchmark = "CartPole-v1"\n')
    b = write(tmp_path / "d", "b.json", json.dumps(minimal(identifier="exp:x")))
    monkeypatch.setenv(EXPERIMENTS_ENV, str(tmp_path / "d"))
    with pytest.raises(ExperimentError, match="defined twice") as info:
        resolve("exp:x")
    assert str(a) in str(info.value) and str(b) in str(info.value)


def test_a_broken_override_is_an_error_not_a_fallback():
    # A typo in the user's override must not silently run the shipped record instead.
    write(user_experiments_dir(), "typo.toml", USER_RECORD.replace("[config]", "[confg]"))
    with pytest.raises(ExperimentError, match="typo.toml.*'confg'"):
        resolve("exp:0.01")


# ------------------------------------------------------------------------- the remote index


def index_body(*records: dict) -> bytes:
    return json.dumps({"experiments": list(records)}).encode()


def test_remote_index_and_its_cached_copy(monkeypatch):
    server = FileServer(
        {
            "/index.json": index_body(
                minimal(identifier="exp:0.01", description="from index"), minimal(identifier="exp:remote")
            )
        }
    )
    try:
        monkeypatch.setenv(INDEX_ENV, server.url("/index.json"))
        record = resolve("exp:0.01")  # the index beats the shipped record
        assert record.description == "from index"
        assert record.source == server.url("/index.json") + "#experiments[0]"
        assert [r.identifier for r in list_experiments()] == ["exp:0.01", "exp:remote"]
        assert server.gets["/index.json"] == 2
        # The user's own directory beats the index.
        write(user_experiments_dir(), "u.toml", USER_RECORD)
        assert resolve("exp:0.01").image.ref is not None
        (user_experiments_dir() / "u.toml").unlink()
    finally:
        server.close()
    # The server is gone: the last good copy is used, with a warning.
    with pytest.warns(RuntimeWarning, match="cached"):
        assert resolve("exp:remote").identifier == "exp:remote"


def test_remote_index_unreachable_without_cache(monkeypatch):
    monkeypatch.setenv(INDEX_ENV, f"http://127.0.0.1:{free_port()}/index.json")
    with pytest.raises(ExperimentError, match="no copy is cached"):
        resolve("exp:0.01")


def test_remote_index_malformed(monkeypatch):
    server = FileServer({"/list.json": b"[]", "/bad.json": index_body(minimal(benchmark="pkg.mod:Env"))})
    try:
        monkeypatch.setenv(INDEX_ENV, server.url("/list.json"))
        with pytest.raises(ExperimentError, match="experiments"):
            resolve("exp:0.01")
        monkeypatch.setenv(INDEX_ENV, server.url("/bad.json"))
        with pytest.raises(ExperimentError, match=r"bad.json#experiments\[0\].*'benchmark'"):
            resolve("exp:0.01")
    finally:
        server.close()
    monkeypatch.setenv(INDEX_ENV, "ftp://example.org/index.json")
    with pytest.raises(ExperimentError, match="http, https or file"):
        resolve("exp:0.01")


# ------------------------------------------------------------------ canonical form and hash


def test_canonical_hash_is_stable_under_key_reordering(tmp_path):
    record = {
        "identifier": "exp:order",
        "benchmark": "shmbench/Sigmoid-v0",
        "image": {"ref": "oras://ghcr.io/shmbench/light:0.1", "digest": DIGEST},
        "config": {"b": 1, "a": {"y": [1, 2.5, None, True], "x": "é"}},
        "seed": {"per_episode": "fixed", "base": 7},
        "wrappers": [{"name": "TimeLimit", "kwargs": {"max_episode_steps": 5}}],
        "log": ["reward", "action"],
    }

    def reorder(value):
        if isinstance(value, dict):
            return {k: reorder(value[k]) for k in reversed(list(value))}
        if isinstance(value, list):
            return [reorder(v) for v in value]
        return value

    a = load_record(write(tmp_path, "a.json", json.dumps(record)))
    b = load_record(write(tmp_path, "b.json", json.dumps(reorder(record), indent=4)))
    assert list(reorder(record)) != list(record)  # the two files really differ in order
    assert a == b
    assert a.canonical_json() == b.canonical_json()
    assert a.canonical_hash() == b.canonical_hash()
    text = a.canonical_json()
    assert " " not in text and "\n" not in text
    assert "\\u00e9" in text and text.isascii()
    assert list(json.loads(text)) == sorted(json.loads(text))
    assert hash(a) == hash(b) and len({a, b}) == 1


def test_same_record_from_toml_and_json_hashes_the_same(tmp_path):
    toml_record = load_record(write(tmp_path, "r.toml", USER_RECORD))
    json_record = load_record(write(tmp_path, "r.json", json.dumps(toml_record.to_dict())))
    assert toml_record.canonical_hash() == json_record.canonical_hash()


def test_hash_covers_the_spec_but_not_the_prose():
    def digest(**fields) -> str:
        return parse_record(minimal(**fields)).canonical_hash()

    base = digest(config={"cutoff": 10})
    assert digest(config={"cutoff": 10}, description="words") == base
    assert digest(config={"cutoff": 11}) != base
    assert digest(config={"cutoff": 10.0}) != base  # a float is not an int: another experiment
    assert digest(config={"cutoff": 10}, seed={"base": 1}) != base
    # Writing a default out explicitly is the same spec.
    assert (
        digest(config={"cutoff": 10}, seed={"base": 0, "per_episode": "increment"}, wrappers=[], log=["reward"]) == base
    )


def test_round_trip_and_immutability():
    data = minimal(
        config={"nested": {"list": [1, 2]}},
        image={"ref": "https://x.org/a.sif", "digest": DIGEST},
        wrappers=[{"name": "ClipAction"}],
        description="d",
    )
    record = parse_record(data)
    assert parse_record(record.to_dict()) == record
    data["config"]["nested"]["list"].append(3)  # the record holds its own copy
    assert record.config == {"nested": {"list": [1, 2]}}
    record.to_dict()["config"]["nested"]["list"].append(4)
    assert record.config == {"nested": {"list": [1, 2]}}
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.identifier = "exp:other"  # type: ignore[misc]
    changed = dataclasses.replace(record, config={"cutoff": 3})
    assert changed.config == {"cutoff": 3} and changed.canonical_hash() != record.canonical_hash()


def test_seed_policies():
    assert [SeedPolicy(5, "increment").seed_for(i) for i in range(3)] == [5, 6, 7]
    assert [SeedPolicy(5, "fixed").seed_for(i) for i in range(3)] == [5, 5, 5]
    assert [SeedPolicy(5, "once").seed_for(i) for i in range(3)] == [5, None, None]


# ------------------------------------------------------------------------ malformed records

BASE = 'identifier = "exp:bad"\nbenchmark = "shmbench/Sigmoid-v0"\n'


@pytest.mark.parametrize(
    "text, field, problem",
    [
        (BASE + 'colour = "red"\n', "colour", "unknown field"),
        ('benchmark = "CartPole-v1"\n', "identifier", "missing"),
        ('identifier = "exp:bad"\n', "benchmark", "missing"),
        (BASE.replace("exp:bad", "exp bad"), "identifier", "not an identifier"),
        (BASE.replace("shmbench/Sigmoid-v0", "my_module:MyEnv-v0"), "benchmark", "no import paths"),
        (BASE + 'config = "cutoff=3"\n', "config", "table"),
        (BASE + "[config]\nwhen = 2024-01-01\n", "config.when", "not a JSON value"),
        (BASE + "[config]\nx = nan\n", "config.x", "finite"),
        (BASE + "[config]\nx = [1, inf]\n", "config.x[1]", "finite"),
        (BASE + "[seed]\nbase = -1\n", "seed.base", "integer"),
        (BASE + "[seed]\nbase = true\n", "seed.base", "integer"),
        (BASE + '[seed]\nper_episode = "random"\n', "seed.per_episode", "increment"),
        (BASE + "[seed]\nstart = 3\n", "seed.start", "unknown field"),
        (BASE + '[[wrappers]]\nname = "pkg.evil:Wrapper"\n', "wrappers[0].name", "not an allowed wrapper"),
        (
            BASE + '[[wrappers]]\nname = "TimeLimit"\nkwargs = {at = 2024-01-01}\n',
            "wrappers[0].kwargs.at",
            "not a JSON value",
        ),
        (BASE + '[[wrappers]]\nname = "TimeLimit"\nargs = [5]\n', "wrappers[0].args", "unknown field"),
        (BASE + 'wrappers = ["TimeLimit"]\n', "wrappers[0]", "table"),
        (BASE + 'log = ["reward", "gradients"]\n', "log", "not a loggable field"),
        (BASE + 'log = ["reward", "reward"]\n', "log", "twice"),
        (BASE + 'log = "reward"\n', "log", "list of strings"),
        (BASE + '[image]\nref = "oras://ghcr.io/shmbench/light:0.1"\n', "image.digest", "missing"),
        (BASE + '[image]\nref = "oras://ghcr.io/shmbench/light:0.1"\ndigest = "md5:00"\n', "image.digest", "sha256"),
        (BASE + f'[image]\nref = "docker://ubuntu"\ndigest = "{DIGEST}"\n', "image.ref", "apptainer push"),
        (BASE + f'[image]\nref = "oras://h.io/x:1"\ndigest = "{DIGEST}"\nsize = 3\n', "image.size", "unknown field"),
        (BASE + 'image = "oras://h.io/x:1"\n', "image", "table"),
        (BASE + "description = 3\n", "description", "string"),
    ],
)
def test_malformed_record_names_file_and_field(tmp_path, text, field, problem):
    path = write(tmp_path, "bad.toml", text)
    with pytest.raises(ExperimentError) as info:
        load_record(path)
    message = str(info.value)
    assert str(path) in message
    assert f"field {field!r}" in message
    assert problem in message


@pytest.mark.parametrize(
    "name, text, problem",
    [
        ("syntax.toml", "identifier = \n", "not valid TOML"),
        ("syntax.json", "{", "not valid JSON"),
        ("dup.json", '{"identifier": "exp:a", "identifier": "exp:b", "benchmark": "x"}', "appears twice"),
        ("nan.json", '{"identifier": "exp:a", "benchmark": "x", "config": {"x": NaN}}', "NaN"),
        ("list.json", "[]", "table/object"),
        ("record.yaml", "identifier: exp:a", ".toml or .json"),
    ],
)
def test_unreadable_record_files(tmp_path, name, text, problem):
    path = write(tmp_path, name, text)
    with pytest.raises(ExperimentError, match=problem) as info:
        load_record(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "value",
    [
        (1, 2),
        {1, 2},
        float("inf"),
        -math.inf,
        math.nan,
        b"bytes",
        object(),
        {1: "int key"},
        [1, (2,)],
        {"a": {"b": [float("nan")]}},
    ],
)
def test_non_json_config_values_are_rejected(value):
    with pytest.raises(ExperimentError, match="config"):
        ExperimentRecord(identifier="exp:x", benchmark="CartPole-v1", config={"v": value})
    with pytest.raises(ExperimentError):
        check_json(value)


def test_json_config_values_are_accepted():
    value = {"s": "x", "i": -3, "f": 0.5, "b": False, "n": None, "l": [1, [2, {"k": []}]], "d": {}}
    check_json(value)
    assert ExperimentRecord(identifier="exp:x", benchmark="CartPole-v1", config=value).config == value


def test_constructor_errors_are_experiment_errors():
    with pytest.raises(ExperimentError, match="seed.base"):
        SeedPolicy(base=1.5)  # type: ignore[arg-type]
    with pytest.raises(ExperimentError, match="not an allowed wrapper"):
        WrapperSpec("os.system")
    same = [WrapperSpec("TimeLimit", {"max_episode_steps": 3}) for _ in range(2)]
    assert len(set(same)) == 1
    with pytest.raises(ExperimentError, match="config"):
        ExperimentRecord(identifier="exp:x", benchmark="CartPole-v1", config=[1])  # type: ignore[arg-type]
    with pytest.raises(ValueError):  # ExperimentError is a ValueError too
        ExperimentRecord(identifier="exp:x", benchmark="CartPole-v1", log=("loss",))
