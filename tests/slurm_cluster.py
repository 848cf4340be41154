"""A real Slurm cluster of two nodes on this machine, for the tests (issue 22): Debian's ``slurm-wlm`` (22.05) and
``munge``, one ``slurmctld`` and two ``slurmd`` (``n1``, ``n2``: the same host, each its own port, spool and pid
file through ``%n``). ``srun -N2 -n2`` then runs a task on each in well under a second.

Every Slurm command finds the cluster through ``SLURM_CONF`` (:meth:`LocalSlurm.env`). The node names must resolve
(Lightning takes ``MASTER_ADDR`` from ``SLURM_NODELIST``): ``127.0.0.1 n1 n2`` is added to ``/etc/hosts`` when
missing. ``munged`` is started as the ``munge`` user when none runs (it is shared, and left running).

Accounting is real too, as on a cluster (submitit learns how a job ended, cancelled or lost with its node
included, from ``sacct``): a private MariaDB in the cluster's folder (``mariadb-install-db``, then ``mariadbd``
on a free port of 127.0.0.1) behind a ``slurmdbd``, and ``sacctmgr`` adds the cluster; ~3 s of the start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

NODES = ("n1", "n2")
CPUS_PER_NODE = 2  # what each slurmd offers: a job of two tasks fits on one node
# A job credential's life, which is also how long a requeued job waits before it may start again (Slurm's
# default: 120 s).
CRED_EXPIRE_S = 20
# How long a node may not answer before slurmctld marks it DOWN and fails its jobs (NODE_FAIL); Slurm's
# default is 300 s. slurmctld pings the nodes every third of it.
SLURMD_TIMEOUT_S = 10
DB_USER, DB_PASSWORD = "slurm", "labbook"  # the accounting database's user (in the cluster's own MariaDB)
TOOLS = ("slurmctld", "slurmd", "sbatch", "munged", "slurmdbd", "sacctmgr", "mariadbd", "mariadb-install-db")


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
    missing = [tool for tool in TOOLS if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()]
    if missing:
        return f"not installed: {', '.join(missing)} (apt-get install slurm-wlm munge slurmdbd mariadb-server)"
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


def _until(done: Callable[[], bool], timeout_s: float, failure: str,
           detail: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"{failure} {detail()}".strip()
        time.sleep(0.1)


def _stepd_above(pid: int) -> int | None:
    """The ``slurmstepd`` that process ``pid`` runs under (None: none)."""
    while pid > 1:
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"slurmstepd"):
                return pid
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return None
    return None


class LocalSlurm:
    """The cluster in ``folder`` (its config, state, spools, pid files and logs)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.conf = folder / "slurm.conf"

    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _start_accounting(self, timeout_s: float) -> int:
        """A private MariaDB and a ``slurmdbd`` over it, both in this folder; returns slurmdbd's port."""
        d = self.folder
        db_port, dbd_port = _free_ports(2)
        subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={d}/db", "--user=root",
                        "--auth-root-authentication-method=normal", "--skip-test-db"], check=True,
                       capture_output=True)
        subprocess.Popen(["mariadbd", "--no-defaults", f"--datadir={d}/db", f"--socket={d}/mariadb.sock",
                          f"--port={db_port}", "--bind-address=127.0.0.1", "--user=root", f"--pid-file={d}/mariadb.pid",
                          f"--log-error={d}/mariadb.log", "--skip-name-resolve", "--innodb-lock-wait-timeout=900"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
        sql = (f"CREATE USER '{DB_USER}'@'127.0.0.1' IDENTIFIED BY '{DB_PASSWORD}'; "
               f"GRANT ALL ON slurm_acct_db.* TO '{DB_USER}'@'127.0.0.1';")
        _until(lambda: subprocess.run(["mariadb", "--no-defaults", f"--socket={d}/mariadb.sock", "-uroot", "-e", sql],
                                      capture_output=True).returncode == 0, timeout_s, "mariadbd did not start")
        dbd_conf = d / "slurmdbd.conf"  # beside slurm.conf: slurmdbd looks for it there
        dbd_conf.write_text(f"""\
AuthType=auth/munge
DbdHost=localhost
DbdPort={dbd_port}
SlurmUser=root
PidFile={d}/slurmdbd.pid
LogFile={d}/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={db_port}
StorageUser={DB_USER}
StoragePass={DB_PASSWORD}
StorageLoc=slurm_acct_db
""")
        dbd_conf.chmod(0o600)  # slurmdbd refuses a config with the database's password that others can read
        return dbd_port

    def _write_conf(self, dbd_port: int) -> None:
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
SlurmdTimeout={SLURMD_TIMEOUT_S}
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={dbd_port}
JobAcctGatherType=jobacct_gather/none
{nodes}
PartitionName=debug Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP
""")

    def start(self, timeout_s: float = 60) -> None:
        _ensure_munge()
        _ensure_hosts()
        for sub in ("state", "spool"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        dbd_port = self._start_accounting(timeout_s)
        self._write_conf(dbd_port)
        env = self.env()
        subprocess.run(["slurmdbd"], env=env, check=True)
        _until(lambda: subprocess.run(["sacctmgr", "-i", "add", "cluster", "labbook"], env=env,
                                      capture_output=True).returncode == 0, timeout_s, "slurmdbd did not start")
        subprocess.run(["slurmctld", "-c"], env=env, check=True)
        for node in NODES:
            subprocess.run(["slurmd", "-N", node], env=env, check=True)
        self.wait_idle(timeout_s)

    def wait_idle(self, timeout_s: float = 60) -> None:
        """Until every node is idle (a node back after a failure too)."""
        states: list[str] = []

        def idle() -> bool:
            states[:] = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env=self.env(), capture_output=True,
                                       text=True).stdout.split()
            return states.count("idle") == len(NODES)

        _until(idle, timeout_s, "the cluster never became idle", lambda: str(states))

    def accounted(self, job: str) -> str:
        """The state ``sacct`` has for ``job`` ("" when it has none)."""
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "State"], env=self.env(),
                             capture_output=True, text=True).stdout.split()
        return out[0] if out else ""

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
            found = [cmdline for _, cmdline in self._job_processes()]
            if not found or time.monotonic() > deadline:
                return found
            time.sleep(0.2)

    def _job_processes(self, node: str | None = None) -> list[tuple[int, str]]:
        """(pid, command line) of this cluster's job processes (on ``node`` only, if given)."""
        found = []
        for proc in Path("/proc").iterdir():
            try:
                env = (proc / "environ").read_bytes().split(b"\0")
                if (f"SLURM_CONF={self.conf}".encode() in env and any(v.startswith(b"SLURM_JOB_ID=") for v in env)
                        and (node is None or f"SLURMD_NODENAME={node}".encode() in env)):
                    found.append((int(proc.name),
                                  (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")))
            except (OSError, ValueError):  # not a process, or gone meanwhile
                continue
        return found

    def lose_node(self, node: str) -> list[str]:
        """What a lost machine does to its node: its ``slurmd``, its job steps' ``slurmstepd`` (which would
        otherwise report the job's end) and every job process on it gone at once, by SIGKILL. Returns the
        command lines of the job processes killed."""
        os.kill(int((self.folder / f"slurmd-{node}.pid").read_text()), 9)
        killed = self._job_processes(node)
        steps = {_stepd_above(pid) for pid, _ in killed} - {None}
        for pid in [*steps, *(p for p, _ in killed)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)  # type: ignore[arg-type]
        return [cmdline for _, cmdline in killed]

    def restore_node(self, node: str, timeout_s: float = 60) -> None:
        """The lost ``node`` back: its slurmd started again, the node resumed, every node idle."""
        subprocess.run(["slurmd", "-N", node], env=self.env(), check=True)
        subprocess.run(["scontrol", "update", f"NodeName={node}", "State=RESUME"], env=self.env(),
                       capture_output=True)
        self.wait_idle(timeout_s)

    def stop(self) -> None:
        """Every daemon of this cluster stopped (and any job step still on it)."""
        env = self.env()
        subprocess.run(["scancel", "--full", "-u", "root"], env=env, capture_output=True)
        pid_files = [self.folder / "slurmctld.pid", *(self.folder / f"slurmd-{n}.pid" for n in NODES),
                     self.folder / "slurmdbd.pid", self.folder / "mariadb.pid"]
        pids = []  # read once: a daemon removes its pid file when signalled, possibly before it has exited
        for pid_file in pid_files:
            try:
                pids.append(int(pid_file.read_text()))
            except (OSError, ValueError):
                continue
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, 15)
        deadline = time.monotonic() + 20
        for pid in pids:
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            if Path(f"/proc/{pid}").exists():
                with contextlib.suppress(OSError):
                    os.kill(pid, 9)
