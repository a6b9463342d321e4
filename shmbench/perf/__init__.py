"""Performance: the benchmark runner (``shmbench bench``) and the overhead report.

Owns: :mod:`~shmbench.perf.bench` (runs the pytest-benchmark suites of ``bench/``) and
:mod:`~shmbench.perf.report` (their JSON into report.md and plots). No argument parsers:
those are :mod:`shmbench.cli.perf`'s.
"""
