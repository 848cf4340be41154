"""A real Slurm cluster of two nodes on this machine, for the tests (issue 22): Debian's ``slurm-wlm`` (22.05) and
``munge``, one ``slurmctld`` and two ``slurmd`` (``n1``, ``n2``: the same host, each its own port, spool and pid
file through ``%n``). ``srun -N2 -n2`` then runs a task on each in well under a second.

Every Slurm command finds the cluster through ``SLURM_CONF`` (:meth:`LocalSlurm.env`). The node names must resolve
(Lightning takes ``MASTER_ADDR`` from ``SLURM_NODELIST``): ``127.0.0.1 n1 n2`` is added to ``/etc/hosts`` when
missing. ``munged`` is started as the ``munge`` user when none runs (it is shared, and left running).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

NODES = ("n1", "n2")
CPUS_PER_NODE = 2  # what each slurmd offers: a job of two tasks fits on one node
# A job credential's life, which is also how long a requeued job waits before it may start again (Slurm's
# default: 120 s).
CRED_EXPIRE_S = 20


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def available() -> str | None:
    """Why a cluster cannot start here (None: it can)."""
    missing = [tool for tool in ("slurmctld", "slurmd", "sbatch", "munged") if shutil.which(tool) is None
               and not Path(f"/usr/sbin/{tool}").exists()]
    if missing:
        return f"not installed: {', '.join(missing)} (apt-get install slurm-wlm munge)"
    if os.getuid() != 0:
        return "the daemons run as root here (SlurmUser=root)"
    return None


def _ensure_munge() -> None:
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode == 0:
        return
    run_dir = Path("/run/munge")
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(run_dir, "munge", "munge")
    subprocess.run(["su", "-s", "/bin/sh", "munge", "-c", "/usr/sbin/munged"], check=True)
    deadline = time.monotonic() + 10
    while subprocess.run(["munge", "-n"], capture_output=True).returncode != 0:
        assert time.monotonic() < deadline, "munged did not start"
        time.sleep(0.1)


def _ensure_hosts() -> None:
    hosts = Path("/etc/hosts")
    known = hosts.read_text()
    if not all(any(name in line.split()[1:] for line in known.splitlines() if line.strip()
                   and not line.startswith("#")) for name in NODES):
        with hosts.open("a") as f:
            f.write(f"127.0.0.1 {' '.join(NODES)}\n")


class LocalSlurm:
    """The cluster in ``folder`` (its config, state, spools, pid files and logs)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.conf = folder / "slurm.conf"

    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write_conf(self) -> None:
        ctld, *node_ports = _free_ports(1 + len(NODES))
        d = self.folder
        nodes = "\n".join(f"NodeName={n} NodeAddr=127.0.0.1 Port={p} CPUs={CPUS_PER_NODE} State=UNKNOWN"
                          for n, p in zip(NODES, node_ports))
        self.conf.write_text(f"""\
ClusterName=labbook
SlurmctldHost=localhost
SlurmctldPort={ctld}
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire={CRED_EXPIRE_S}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd-%n.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd-%n.log
SlurmctldTimeout=30
SlurmdTimeout=30
{nodes}
PartitionName=debug Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP
""")

    def start(self, timeout_s: float = 60) -> None:
        _ensure_munge()
        _ensure_hosts()
        for sub in ("state", "spool"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        self._write_conf()
        env = self.env()
        subprocess.run(["slurmctld", "-c"], env=env, check=True)
        for node in NODES:
            subprocess.run(["slurmd", "-N", node], env=env, check=True)
        deadline = time.monotonic() + timeout_s
        while True:
            states = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env=env, capture_output=True,
                                    text=True).stdout.split()
            if states.count("idle") == len(NODES):
                return
            assert time.monotonic() < deadline, f"the cluster never became idle: {states}"
            time.sleep(0.2)

    def jobs(self, state: str = "PD,R,CG,S") -> list[tuple[str, str, str]]:
        """``(job id, state, reason)`` of the jobs squeue shows in ``state`` (by default those not ended); an
        array's tasks as ``<array job>_<task>``."""
        out = subprocess.run(["squeue", "-h", "-t", state, "-o", "%i %T %r"], env=self.env(), capture_output=True,
                             text=True).stdout
        return [tuple(line.split(None, 2)) for line in out.splitlines() if line.strip()]  # type: ignore[misc]

    def extend_requeued(self, time_limit_min: int) -> list[str]:
        """Give each requeued job (held until its BeginTime) the time limit ``time_limit_min``, as an
        administrator may; returns those jobs."""
        held = [job for job, state, reason in self.jobs("PD") if reason == "BeginTime"]
        for job in held:
            subprocess.run(["scontrol", "update", f"JobId={job}", f"TimeLimit={time_limit_min}"], env=self.env(),
                           capture_output=True)
        return held

    def job_processes(self, wait_s: float = 10) -> list[str]:
        """The command lines of this cluster's job processes (each has ``SLURM_JOB_ID`` and this cluster's
        ``SLURM_CONF`` in its environment) still there after up to ``wait_s`` seconds: a job's steps take a
        moment to be reaped."""
        deadline = time.monotonic() + wait_s
        while True:
            found = []
            for proc in Path("/proc").iterdir():
                try:
                    env = (proc / "environ").read_bytes().split(b"\0")
                    if f"SLURM_CONF={self.conf}".encode() in env and any(v.startswith(b"SLURM_JOB_ID=") for v in env):
                        found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
                except OSError:  # not a process, or gone meanwhile
                    continue
            if not found or time.monotonic() > deadline:
                return found
            time.sleep(0.2)

    def stop(self) -> None:
        """Every daemon of this cluster stopped (and any job step still on it)."""
        env = self.env()
        subprocess.run(["scancel", "--full", "-u", "root"], env=env, capture_output=True)
        pids = [self.folder / "slurmctld.pid", *(self.folder / f"slurmd-{n}.pid" for n in NODES)]
        for pid_file in pids:
            try:
                os.kill(int(pid_file.read_text()), 15)
            except (OSError, ValueError):
                continue
        deadline = time.monotonic() + 20
        for pid_file in pids:
            try:
                pid = int(pid_file.read_text())
            except (OSError, ValueError):
                continue
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, 9)
