"""A real Slurm cluster on 127.0.0.1 for the sweep tests: munged, slurmctld and two slurmd
(nodes n1 and n2 on one host, each on its own port), Debian's own binaries, every file --
config, munge key and socket, state, spool, logs -- in one temporary directory, nothing in
/etc. Stopped by PID (SIGTERM, then SIGKILL).

Who starts it: ``./run-tests.sh`` (``python tests/slurm_cluster.py start DIR`` before pytest,
``stop DIR`` on exit; the fixture finds it through ``$SHMBENCH_TEST_SLURM``), or, where that
is not set, the ``cluster`` fixture itself. Its daemons read /dev/null, not the runner's
stdin: started from inside a long pytest run with the runner's stdin inherited, they
launched no job ("_forkexec_slurmstepd: slurmstepd failed to send return code"), and with
stdin on /dev/null the same full run passed. A probe job at start-up turns a cluster that
cannot launch into one clear error instead of timeouts.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol", "sinfo")
MAX_ARRAY_SIZE = 5
NODES = ("n1", "n2")


def missing() -> str | None:
    """Why no cluster can start here, or None."""
    if os.geteuid() != 0:
        return "the Slurm test cluster runs its daemons as root"
    absent = [b for b in BINARIES if shutil.which(b) is None]
    if absent:
        return f"not installed: {', '.join(absent)} (scripts/system-deps.sh installs slurm and munge)"
    return None


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


ATTACH_ENV = "SHMBENCH_TEST_SLURM"


@dataclass
class Cluster:
    root: Path
    conf: Path
    procs: list[subprocess.Popen] = field(default_factory=list)
    #: started by someone else (run-tests.sh): they stop it
    attached: bool = False

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=60, check=check, env={**os.environ, **self.env}
        )

    def squeue(self) -> list[str]:
        return self.run("squeue", "-h", "--array", "-o", "%i|%T|%j").stdout.split()

    def wait_idle(self, timeout: float = 300.0) -> None:
        """Until no job is queued or running."""
        deadline = time.monotonic() + timeout
        while self.squeue():
            if time.monotonic() > deadline:
                raise TimeoutError(f"Slurm jobs still queued after {timeout} s: {self.squeue()}")
            time.sleep(0.3)

    def logs(self) -> str:
        out = []
        for p in sorted(self.root.glob("*.log")):
            out.append(f"== {p.name}\n" + p.read_text(errors="replace")[-3000:])
        return "\n".join(out)

    def probe(self, timeout: float = 60.0) -> None:
        """Run one trivial job to its end, or raise with the daemons' logs."""
        out = self.root / "probe.out"
        proc = subprocess.run(
            ["sbatch", "--wait", f"--output={out}", "--wrap", "echo probe-ok"],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **self.env},
            check=False,
        )
        if proc.returncode != 0 or "probe-ok" not in (out.read_text() if out.exists() else ""):
            raise RuntimeError(f"the test cluster cannot run a job: {proc.stderr.strip()}\n{self.logs()}")

    def stop(self) -> None:
        if self.attached:
            return
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=15)


def start(root: Path) -> Cluster:
    """Start the cluster with its files under ``root`` (an empty directory)."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)  # munged refuses a key or socket in a directory others may write
    (root / "state").mkdir()
    for n in NODES:
        (root / "spool" / n).mkdir(parents=True)
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    ctld_port, *node_ports = _free_ports(1 + len(NODES))
    cpus = os.cpu_count() or 2
    lines = [
        "ClusterName=shmbenchtest",
        "SlurmctldHost=localhost",
        f"SlurmctldPort={ctld_port}",
        f"AuthInfo=socket={root}/munge.socket,cred_expire=10",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"StateSaveLocation={root}/state",
        f"SlurmdSpoolDir={root}/spool/%n",
        f"SlurmctldPidFile={root}/slurmctld.pid",
        f"SlurmdPidFile={root}/slurmd-%n.pid",
        f"SlurmctldLogFile={root}/slurmctld.log",
        f"SlurmdLogFile={root}/slurmd-%n.log",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "ReturnToService=2",
        f"MaxArraySize={MAX_ARRAY_SIZE}",
        "MpiDefault=none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "SlurmdParameters=config_overrides",
        "KillWait=5",
        "MinJobAge=60",
        *(
            f"NodeName={n} NodeHostname=localhost Port={port} CPUs={cpus} RealMemory=4000"
            for n, port in zip(NODES, node_ports)
        ),
        f"PartitionName=debug Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP",
    ]
    conf = root / "slurm.conf"
    conf.write_text("\n".join(lines) + "\n")
    cluster = Cluster(root, conf)
    env = {**os.environ, **cluster.env}

    def daemon(argv: list[str], log: str) -> None:
        with open(root / log, "ab") as out:
            cluster.procs.append(
                subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,  # not the runner's stdin, whatever state it is in
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            )

    try:
        daemon(
            [
                "munged",
                "-F",
                "--force",
                f"--key-file={key}",
                f"--socket={root}/munge.socket",
                f"--pid-file={root}/munged.pid",
                f"--log-file={root}/munged.log",
                f"--seed-file={root}/munge.seed",
            ],
            "munged.out.log",
        )
        _wait(lambda: (root / "munge.socket").exists(), 10, "munged's socket", cluster)
        daemon(["slurmctld", "-D", "-i", "-f", str(conf)], "slurmctld.out.log")
        _wait(lambda: cluster.run("scontrol", "ping", check=False).stdout.count("UP") > 0, 20, "slurmctld", cluster)
        for n in NODES:
            daemon(["slurmd", "-D", "-N", n, "-f", str(conf)], f"slurmd-{n}.out.log")

        def idle() -> bool:
            states = cluster.run("sinfo", "-h", "-N", "-o", "%N %T", check=False).stdout.split("\n")
            return sum(1 for s in states if s.strip().endswith("idle")) == len(NODES)

        _wait(idle, 30, "both slurmd nodes idle", cluster)
        cluster.probe()
    except BaseException:
        cluster.stop()
        raise
    (root / "pids").write_text("\n".join(str(p.pid) for p in cluster.procs) + "\n")
    return cluster


def attached() -> Cluster | None:
    """The cluster run-tests.sh started, if it did."""
    directory = os.environ.get(ATTACH_ENV)
    if not directory:
        return None
    root = Path(directory)
    return Cluster(root, root / "slurm.conf", attached=True)


def stop_by_pids(root: Path) -> None:
    """Stop the daemons listed in ``root/pids``: SIGTERM, then SIGKILL after 15 s."""
    try:
        pids = [int(x) for x in (root / "pids").read_text().split()]
    except (OSError, ValueError):
        return
    for pid in reversed(pids):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 15
    for pid in reversed(pids):
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.1)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait(cond, timeout: float, what: str, cluster: Cluster) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the test cluster's {what} did not come up in {timeout} s\n{cluster.logs()}")
        for p in cluster.procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args[0]} exited with {p.returncode}\n{cluster.logs()}")
        time.sleep(0.2)


if __name__ == "__main__":
    import sys

    command, directory = sys.argv[1], Path(sys.argv[2])
    if command == "start":
        reason = missing()
        if reason is not None:
            print(f"no Slurm test cluster: {reason}", file=sys.stderr)
            sys.exit(1)
        cluster = start(directory)
        for p in cluster.procs:
            p.returncode = 0  # left running on purpose: 'stop' ends them by PID
        print(directory)
    elif command == "stop":
        stop_by_pids(directory)
    else:
        sys.exit(f"usage: {sys.argv[0]} start|stop DIR")
