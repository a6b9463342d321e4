"""``shmbench run``: its options, the baseline agent it builds, and its summary table."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import gymnasium
import numpy as np

from shmbench.errors import ExperimentError, ShmbenchError
from shmbench.runner import EpisodeResult, Runner, RunResult

__all__ = ["add_run_arguments", "run_command"]


# ------------------------------------------------------------------------------------------
# `shmbench run`
# ------------------------------------------------------------------------------------------

def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``shmbench run``'s options: :meth:`Runner.add_arguments` plus the agent's."""
    Runner.add_arguments(parser)
    group = parser.add_argument_group("agent")
    group.add_argument("--agent", choices=("random", "static"), default="random", help="baseline agent (default: random)")
    group.add_argument("--action", metavar="JSON", help="the static agent's action, as JSON (e.g. '[2, 5]')")
    group.add_argument("--agent-seed", type=int, metavar="N",
                       help="the random agent's seed (default: derived from the experiment's seed, as "
                            "RandomAgent(env) does for a seeded env)")
    group.add_argument("--remote-agent", action="store_true",
                       help="run the agent in its own server (same runtime and image as the env)")
    group.add_argument("--episodes", type=int, default=10, metavar="N", help="episodes to run (default: %(default)s)")
    group.add_argument("--quiet", action="store_true", help="no progress bar")


def _derived_agent_seed(env_seed: int) -> int:
    """The seed ``RandomAgent(env)`` picks for an env seeded with ``env_seed``."""
    from shmbench.agents import _AGENT_STREAM

    return int(np.random.SeedSequence([env_seed, _AGENT_STREAM]).generate_state(1, np.uint32)[0])


def _cli_agent(args: argparse.Namespace, runner: Runner, env: gymnasium.Env) -> Any:
    from shmbench.agents import make_agent

    spec: dict[str, Any] = {"type": args.agent}
    if args.agent == "random":
        spec["seed"] = args.agent_seed if args.agent_seed is not None else _derived_agent_seed(
            runner.experiment.seed_policy.base)
    else:
        if args.action is None:
            raise ExperimentError("--agent static needs --action JSON")
        try:
            spec["action"] = json.loads(args.action)
        except ValueError:
            raise ExperimentError(f"--action {args.action!r} is not JSON") from None
    if args.remote_agent:
        from shmbench.remote_agent import RemoteAgent

        runtime = "process" if args.runtime == "local" else args.runtime
        image = getattr(runner, "image_path", None) if getattr(runner, "image_used", False) else None
        return RemoteAgent(spec, action_space=env.action_space, runtime=runtime, image=image, timeout=args.timeout)
    return make_agent({**spec, "action_space": env.action_space})


def _summary(result: RunResult, runner: Runner) -> str:
    rows = [("episode", "seed", "instance", "steps", "reward")]
    for e in result.episodes:
        rows.append((str(e.episode), "-" if e.seed is None else str(e.seed),
                     "-" if e.instance is None else json.dumps(e.instance), str(e.steps), f"{e.reward:.6g}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    rewards = result.episode_rewards
    exp = runner.experiment
    if rewards:
        lines.append("")
        lines.append(f"mean reward {np.mean(rewards):.6g} +- {np.std(rewards):.3g} over {len(rewards)} "
                     f"episode(s), {sum(result.episode_lengths)} steps, {result.wall_time:.2f} s")
    lines.append(f"experiment {exp.record.identifier} ({exp.record.canonical_hash()[:19]}...)"
                 + (f", overrides {json.dumps(exp.overrides, sort_keys=True)}" if exp.overrides else ""))
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
        runner = Runner.from_args(args)
    except (ShmbenchError, OSError) as exc:
        print(f"shmbench run: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ExperimentError) else 1
    agent = None
    try:
        with runner:
            env = runner.get_environment()
            agent = _cli_agent(args, runner, env)
            with tqdm(total=args.episodes, unit="episode", disable=True if args.quiet else None,
                      file=sys.stderr, desc=runner.experiment.record.identifier) as bar:
                def progress(episode: EpisodeResult) -> None:
                    bar.set_postfix(reward=f"{episode.reward:.4g}", refresh=False)
                    bar.update(1)

                result = runner.run(agent, args.episodes, callback=progress)
    except KeyboardInterrupt:
        print("shmbench run: interrupted", file=sys.stderr)
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
