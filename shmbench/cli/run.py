"""``shmbench run``: its options, the baseline agent it builds, and its summary table."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import gymnasium
import numpy as np

from shmbench.cli.util import add_command
from shmbench.errors import ExperimentError, ShmbenchError
from shmbench.experiments.runner import DEFAULT_LOG_DIR, EpisodeResult, LocalRunner, RemoteRunner, Runner, RunResult
from shmbench.runtimes.limits import Limits

__all__ = [
    "RUNTIME_CHOICES",
    "add_experiment_arguments",
    "add_run_arguments",
    "parse_config_items",
    "register",
    "run_command",
    "runner_from_args",
]

RUNTIME_CHOICES = ("auto", "apptainer", "singularity", "bwrap", "process", "local")


# ------------------------------------------------------------------------------------------
# `shmbench run`
# ------------------------------------------------------------------------------------------


def add_experiment_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options that choose and place an experiment (see :func:`runner_from_args`)."""
    group = parser.add_argument_group("experiment")
    group.add_argument("--experiment", metavar="ID", help="experiment identifier, e.g. exp:0.01")
    group.add_argument(
        "--benchmark",
        metavar="ID",
        help="benchmark id (e.g. shmbench/Sigmoid-v0); with --experiment it must match the record's",
    )
    group.add_argument(
        "--config",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override one config key; VALUE is read as JSON, else as a string (repeatable)",
    )
    group.add_argument("--seed", type=int, metavar="N", help="base seed (overrides the record's)")
    group.add_argument(
        "--runtime",
        choices=RUNTIME_CHOICES,
        default="auto",
        help="where the env runs; 'local': in this process (no server)",
    )
    group.add_argument(
        "--image", metavar="REF", help="image overriding the record's (path, file://, https://, oras://)"
    )
    group.add_argument("--image-digest", metavar="sha256:HEX", help="the image's pinned digest")
    group.add_argument("--offline", action="store_true", help="use cached images only, never download")
    group.add_argument(
        "--require-pinned",
        action="store_true",
        help="refuse an image built from the record's recipe that is not the pinned one (default: run, say how it differs)",
    )
    group.add_argument(
        "--allow-host",
        action="store_true",
        help="where the record's image cannot be had or run here, run the env on the host instead of failing",
    )
    group.add_argument("--timeout", type=float, metavar="SECONDS", help="limit for each env call")
    group.add_argument(
        "--limit",
        action="append",
        metavar="NAME=VALUE",
        help="a resource limit for the server, repeatable: memory=2G, pids=256, cpus=1.5, tmp=1G "
        "(`shmbench doctor` says how each binds here)",
    )
    group.add_argument("--out", metavar="DIR", default=DEFAULT_LOG_DIR, help="log directory (default: %(default)s)")


def runner_from_args(args: argparse.Namespace, cls: type[Runner] = Runner) -> Runner:
    """The runner :func:`add_experiment_arguments`' options describe.

    With ``cls=Runner`` it picks :class:`LocalRunner` for ``--runtime local`` and
    :class:`RemoteRunner` otherwise; with a subclass it builds that subclass.
    """
    if not (args.experiment or args.benchmark):
        raise ExperimentError("give --experiment, --benchmark, or both")
    config = parse_config_items(args.config or [])
    runtime = getattr(args, "runtime", "auto")
    target = cls
    if cls is Runner:
        target = LocalRunner if runtime == "local" else RemoteRunner
    common = dict(
        config=config or None, seed=args.seed, image=args.image, image_digest=args.image_digest, log_dir=args.out
    )
    if issubclass(target, RemoteRunner):
        if runtime == "local":
            raise ExperimentError("--runtime local runs no server; it needs a LocalRunner")
        return target(
            args.benchmark,
            args.experiment,
            runtime=runtime,
            offline=args.offline,
            require_pinned=getattr(args, "require_pinned", False),
            allow_host=getattr(args, "allow_host", False),
            timeout=args.timeout,
            limits=limits_from_args(args),
            progress=True,
            **common,
        )
    if getattr(args, "limit", None):
        raise ExperimentError("--limit bounds a server; --runtime local runs none")
    return target(args.benchmark, args.experiment, **common)


def limits_from_args(args: argparse.Namespace) -> Limits | None:
    """The ``--limit NAME=VALUE`` options as :class:`~shmbench.runtimes.limits.Limits`."""
    items = getattr(args, "limit", None) or []
    try:
        return Limits.of(",".join(items)) if items else None
    except ValueError as exc:
        raise ExperimentError(f"--limit: {exc}") from None


def parse_config_items(items: list[str]) -> dict[str, Any]:
    """``["cutoff=20", "instance_update_func=random"]`` -> ``{"cutoff": 20, ...}``.

    A value is read as JSON when it parses (``20``, ``[5, 10]``, ``null``, ``true``), else it
    is the string as written.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ExperimentError(f"--config {item!r}: expected KEY=VALUE")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        out[key] = value
    return out


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``shmbench run``'s options: the experiment's (:func:`add_experiment_arguments`)
    plus the agent's."""
    add_experiment_arguments(parser)
    group = parser.add_argument_group("agent")
    group.add_argument(
        "--agent", choices=("random", "static"), default="random", help="baseline agent (default: random)"
    )
    group.add_argument("--action", metavar="JSON", help="the static agent's action, as JSON (e.g. '[2, 5]')")
    group.add_argument(
        "--agent-seed",
        type=int,
        metavar="N",
        help="the random agent's seed (default: derived from the experiment's seed, as "
        "RandomAgent(env) does for a seeded env)",
    )
    group.add_argument(
        "--remote-agent",
        action="store_true",
        help="run the agent in its own server (same runtime and image as the env)",
    )
    group.add_argument("--episodes", type=int, default=10, metavar="N", help="episodes to run (default: %(default)s)")
    group.add_argument("--quiet", action="store_true", help="no progress bar")


def _derived_agent_seed(env_seed: int) -> int:
    """The seed ``RandomAgent(env)`` picks for an env seeded with ``env_seed``."""
    from shmbench.agents import derived_seed

    return derived_seed(env_seed)


def _cli_agent(args: argparse.Namespace, runner: Runner, env: gymnasium.Env) -> Any:
    from shmbench.agents import make_agent

    spec: dict[str, Any] = {"type": args.agent}
    if args.agent == "random":
        spec["seed"] = (
            args.agent_seed if args.agent_seed is not None else _derived_agent_seed(runner.experiment.seed_policy.base)
        )
    else:
        if args.action is None:
            raise ExperimentError("--agent static needs --action JSON")
        try:
            spec["action"] = json.loads(args.action)
        except ValueError:
            raise ExperimentError(f"--action {args.action!r} is not JSON") from None
    if args.remote_agent:
        from shmbench.host.agent import RemoteAgent

        runtime = "process" if args.runtime == "local" else args.runtime
        image = getattr(runner, "image_path", None) if getattr(runner, "image_used", False) else None
        limits = limits_from_args(args)
        return RemoteAgent(
            spec, action_space=env.action_space, runtime=runtime, image=image, timeout=args.timeout, limits=limits
        )
    return make_agent({**spec, "action_space": env.action_space})


def _summary(result: RunResult, runner: Runner) -> str:
    rows = [("episode", "seed", "instance", "steps", "reward")]
    for e in result.episodes:
        rows.append(
            (
                str(e.episode),
                "-" if e.seed is None else str(e.seed),
                "-" if e.instance is None else json.dumps(e.instance),
                str(e.steps),
                f"{e.reward:.6g}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    rewards = result.episode_rewards
    exp = runner.experiment
    if rewards:
        lines.append("")
        lines.append(
            f"mean reward {np.mean(rewards):.6g} +- {np.std(rewards):.3g} over {len(rewards)} "
            f"episode(s), {sum(result.episode_lengths)} steps, {result.wall_time:.2f} s"
        )
    lines.append(
        f"experiment {exp.record.identifier} ({exp.record.canonical_hash()[:19]}...)"
        + (f", overrides {json.dumps(exp.overrides, sort_keys=True)}" if exp.overrides else "")
    )
    if result.log_path is not None:
        lines.append(f"log {result.log_path}")
    return "\n".join(lines)


def run_command(args: argparse.Namespace) -> int:
    """``shmbench run``: run an agent on an experiment with a progress bar, then a summary.

    ``args`` comes from a parser set up by :func:`add_run_arguments`. Returns the exit
    status: 0 on success, 1 on a shmbench error (printed on stderr), 2 for bad arguments,
    130 after Ctrl-C.
    """
    from tqdm import tqdm

    if args.episodes < 0:
        print("shmbench run: error: --episodes must be >= 0", file=sys.stderr)
        return 2
    try:
        runner = runner_from_args(args)
    except (ShmbenchError, OSError) as exc:
        print(f"shmbench run: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ExperimentError) else 1
    agent = None
    try:
        with runner:
            env = runner.get_environment()
            agent = _cli_agent(args, runner, env)
            with tqdm(
                total=args.episodes,
                unit="episode",
                disable=True if args.quiet else None,
                file=sys.stderr,
                desc=runner.experiment.record.identifier,
            ) as bar:

                def progress(episode: EpisodeResult) -> None:
                    bar.set_postfix(reward=f"{episode.reward:.4g}", refresh=False)
                    bar.update(1)

                result = runner.run(agent, args.episodes, callback=progress)
    except KeyboardInterrupt:
        done = len(runner.episodes)
        where = f"; log {runner.log_path} (its end record says interrupted)" if runner.log_path else ""
        print(f"shmbench run: interrupted after {done} finished episode(s){where}", file=sys.stderr)
        return 130
    except (ShmbenchError, OSError) as exc:
        print(f"shmbench run: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ExperimentError) else 1
    finally:
        close = getattr(agent, "close", None)
        if callable(close):
            close()
    print(_summary(result, runner))
    return 0


def plot_command(args: argparse.Namespace) -> int:
    """``shmbench plot``: the per-episode return of the runs in a directory, as a PNG."""
    from shmbench.logs import plot_returns

    try:
        path = plot_returns(args.runs, args.output)
    except (OSError, ValueError, ImportError) as exc:
        print(f"shmbench plot: error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "run",
        help="run an agent on an experiment, logging on the host",
        description=(
            "Run a baseline agent on an experiment: the env runs in its pinned image (pulled and\n"
            "verified on first use) through the best runtime here, every step is logged as JSONL\n"
            "on the host, and a summary table ends the run. Ctrl-C stops it, keeping the log."
        ),
        examples=(
            "shmbench run --experiment exp:0.01 --agent random --episodes 10 --seed 42",
            "shmbench run --benchmark shmbench/Luby-v0 --runtime process --episodes 3 --out runs/",
            "shmbench run --experiment exp:0.01 --config n_actions=5 --limit memory=2G",
        ),
        func=run_command,
    )
    add_run_arguments(p)

    p = add_command(
        sub,
        "plot",
        help="plot the per-episode return of logged runs",
        description=(
            "Write a PNG of the per-episode return of the run logs in a directory (or one log):\n"
            "one line per run, labelled by its seed, one panel per experiment. Needs matplotlib\n"
            "(pip install 'shmbench[analysis]'); shmbench.logs.to_dataframe gives the steps."
        ),
        examples=("shmbench plot shmbench_logs/", "shmbench plot runs/ -o returns.png"),
        func=plot_command,
    )
    p.add_argument("runs", help="a directory of run logs (searched recursively) or one .jsonl log")
    p.add_argument("-o", "--output", default="returns.png", help="the PNG to write")
