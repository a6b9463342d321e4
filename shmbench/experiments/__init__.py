"""Experiments: records, how they combine with a benchmark object, runners, and their logs.

Owns: :mod:`~shmbench.experiments.records` (what ``exp:0.01`` stands for: the record format
and where records come from), :mod:`~shmbench.experiments.combine` (record + benchmark +
overrides -> what runs) and :mod:`~shmbench.experiments.runner` (``LocalRunner``,
``RemoteRunner``). The record API is re-exported here, its public face.
"""

from shmbench.experiments.records import (
    EXPERIMENTS_ENV,
    INDEX_ENV,
    LOG_FIELDS,
    SEED_POLICIES,
    WRAPPERS,
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

__all__ = [
    "EXPERIMENTS_ENV",
    "INDEX_ENV",
    "LOG_FIELDS",
    "SEED_POLICIES",
    "WRAPPERS",
    "ExperimentRecord",
    "SeedPolicy",
    "WrapperSpec",
    "check_json",
    "list_experiments",
    "load_record",
    "parse_record",
    "resolve",
    "user_experiments_dir",
]
