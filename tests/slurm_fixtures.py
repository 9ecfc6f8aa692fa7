"""A real one-node SLURM cluster on localhost for the tests: munged, slurmctld and slurmd, started directly.

    with slurm_cluster() as cluster:             # Debian's slurm-wlm + munge (`make test-deps`)
        job = cluster.sbatch("--wrap", "true")
        cluster.wait([job])
        assert cluster.job(job)["JobState"] == "COMPLETED"

Everything lives in a fresh private directory: the munge key, its socket,
slurm.conf, the state and spool directories, the logs. The two ports are free
ones picked at start, so clusters of parallel test runs do not meet. No
systemd, no cgroups (ProctrackType=proctrack/linuxproc, TaskPlugin=task/none),
no accounting storage: job states are read with `scontrol show job`, which
keeps finished jobs for MinJobAge seconds. The node is declared with at least
4 CPUs (SlurmdParameters=config_overrides), so that two 1-CPU units, or one
2-CPU torchrun, fit on a 2-core machine. If a daemon does not start, or the
node is not idle within the timeout, ClusterError names the step and the
daemons' log tails (the tests then fail, they never skip). Leaving the block
shuts the cluster down (`scontrol shutdown`, then the daemons' processes are
terminated, killed if they linger) and removes the directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol")


class ClusterError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as err:
        return f"({path}: {err.strerror})"


class Cluster:
    def __init__(self, root: Path, node: str, cpus: int):
        self.root, self.node, self.cpus = root, node, cpus
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.procs: dict[str, subprocess.Popen] = {}

    def run(self, *args: str, check: bool = True, env: dict | None = None) -> str:
        proc = subprocess.run(args, env={**self.env, **(env or {})}, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=60)
        if check and proc.returncode != 0:
            raise ClusterError(f"{' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()[-800:]}")
        return proc.stdout

    def sbatch(self, *args: str, env: dict | None = None) -> str:
        return self.run("sbatch", "--parsable", *args, env=env).strip().split(";")[0]

    def queued(self) -> list[str]:
        """Every job id squeue lists (array elements as ID_K), pending or running."""
        return self.run("squeue", "--noheader", "--format=%i").split()

    def wait(self, timeout: float = 600) -> float:
        """Until the queue is empty; the seconds waited."""
        start = time.perf_counter()
        while self.queued():
            if time.perf_counter() - start > timeout:
                raise ClusterError(f"jobs still queued after {timeout} s: {self.queued()}")
            time.sleep(0.5)
        return time.perf_counter() - start

    def jobs(self, job: str) -> list[dict[str, str]]:
        """`scontrol show job -o ID`: one dict per job (an array: one per element), while SLURM keeps them."""
        records = []
        for line in self.run("scontrol", "show", "job", "-o", job).splitlines():
            fields = dict(word.split("=", 1) for word in line.split() if "=" in word)
            if fields:
                records.append(fields)
        return records

    def node_state(self) -> str:
        return self.run("sinfo", "--noheader", "--nodes", self.node, "--format=%T", check=False).strip()

    def logs(self) -> str:
        """The tail of each daemon's log file and of its own output, where they exist."""
        return "\n".join(f"--- {path.name}:\n{tail(path)}" for name in ("munged", "slurmctld", "slurmd")
                         for path in (self.root / "log" / f"{name}.log", self.root / "log" / f"{name}.out")
                         if path.exists())

    def start_daemon(self, name: str, args: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "wb")
        self.procs[name] = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        time.sleep(0.2)
        if self.procs[name].poll() is not None:
            raise ClusterError(f"{name} exited at once (exit {self.procs[name].returncode}): "
                               f"{tail(self.root / 'log' / f'{name}.out')}\n{self.logs()}")

    def stop(self) -> None:
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            with contextlib.suppress(Exception):
                self.run("scontrol", "shutdown", check=False)  # slurmctld and every slurmd stop
        for name in ("slurmd", "slurmctld", "munged"):  # munged has no shutdown command: terminated
            proc = self.procs.get(name)
            if proc is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10 if name != "munged" else 0.01)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)


def slurm_conf(root: Path, node: str, cpus: int, mem_mb: int, ports: tuple[int, int]) -> str:
    return "\n".join([
        f"ClusterName=pu{ports[0]}", f"SlurmctldHost={node}(127.0.0.1)", "SlurmUser=root", "SlurmdUser=root",
        f"SlurmctldPort={ports[0]}", f"SlurmdPort={ports[1]}",
        "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={root / 'munge' / 'socket'}",
        f"StateSaveLocation={root / 'state'}", f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}", f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}", f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/none",
        "SchedulerType=sched/backfill", "SchedulerParameters=sched_interval=1", "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
        "SlurmdParameters=config_overrides", "ReturnToService=2", "MpiDefault=none", "MinJobAge=3600",
        "SlurmctldTimeout=30", "SlurmdTimeout=30", "InactiveLimit=0", "KillWait=5",
        f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN",
        f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP", ""])


@contextlib.contextmanager
def slurm_cluster(cpus: int | None = None, mem_mb: int = 8000, timeout: float = 60):
    missing = [tool for tool in DAEMONS if shutil.which(tool) is None]
    if missing:
        raise ClusterError(f"{', '.join(missing)} not found: install the Debian packages slurm-wlm and munge "
                           "(`make test-deps` does as root)")
    if os.geteuid() != 0:
        raise ClusterError("the test cluster runs slurmd as root (it starts jobs as their user): run as root")
    root = Path(tempfile.mkdtemp(prefix="pu-slurm-"))  # short: the munge socket's path must fit 108 bytes
    node = socket.gethostname().split(".")[0]
    cluster = Cluster(root, node, cpus or max(4, os.cpu_count() or 1))
    try:
        for sub in ("munge", "state", "spool", "log"):
            (root / sub).mkdir(mode=0o700)
        for searchable in (root, root / "munge"):  # munged wants the path to its socket searchable by all
            searchable.chmod(0o711)
        key = root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        cluster.conf.write_text(slurm_conf(root, node, cluster.cpus, mem_mb, (free_port(), free_port())))
        m = root / "munge"
        cluster.start_daemon("munged", ["munged", "--foreground", f"--key-file={key}", f"--socket={m / 'socket'}",
                                        f"--pid-file={m / 'munged.pid'}", f"--seed-file={m / 'seed'}",
                                        f"--log-file={root / 'log' / 'munged.log'}"])
        start = time.perf_counter()
        while not (m / "socket").exists():
            if time.perf_counter() - start > timeout:
                raise ClusterError(f"munged made no socket within {timeout} s\n{cluster.logs()}")
            time.sleep(0.1)
        cluster.start_daemon("slurmctld", ["slurmctld", "-D", "-c", "-f", str(cluster.conf)])
        cluster.start_daemon("slurmd", ["slurmd", "-D", "-f", str(cluster.conf)])
        while (state := cluster.node_state()) != "idle":
            dead = [name for name, proc in cluster.procs.items() if proc.poll() is not None]
            if dead or time.perf_counter() - start > timeout:
                raise ClusterError(f"node {node} is '{state}', not idle, after {time.perf_counter() - start:.0f} s"
                                   f"{' (' + ', '.join(dead) + ' exited)' if dead else ''}\n{cluster.logs()}")
            time.sleep(0.2)
        cluster.started_in = time.perf_counter() - start
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
