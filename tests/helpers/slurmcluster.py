"""A throwaway Slurm cluster on this one machine (Debian's slurmctld/slurmd/munge, 22.05): one controller
and three `slurmd -N` nodes with fake GRES GPUs, every file in a temp folder, no system file touched,
every daemon stopped by its pid. The tests' `slurm` fixture (tests/test_engine_slurm.py).

    partition gpu  (default): n1 gpu:2, n2 gpu:1   -> three fake GPUs: the fourth 1-GPU job waits
    partition debug:          n3 gpu:1             -> jobs that fail or time out, beside the others

The fake GPUs are /dev/tty files (gres.conf `File=`): Slurm counts and assigns them and sets
CUDA_VISIBLE_DEVICES, nothing opens them. Daemons run as root (slurmd starts jobs as the submitting
user); munge with its own key and socket. No accounting database: end states come from `scontrol` and
the jobcomp/filetxt file, as on a small lab's cluster (kerasflow/cluster.py reads both).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

NODES = {"n1": ("gpu", "/dev/tty[1-2]", 2), "n2": ("gpu", "/dev/tty3", 1), "n3": ("debug", "/dev/tty4", 1)}
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel")


def missing() -> list[str]:
    return [b for b in BINARIES if not shutil.which(b) and not Path(f"/usr/sbin/{b}").exists()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


@dataclass
class Cluster:
    root: Path
    conf: Path
    jobcomp: Path
    pids: list[int] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """What a user's shell needs to talk to this cluster (a real one has /etc/slurm/slurm.conf)."""
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **self.env})


def _config(root: Path, jobcomp: Path) -> str:
    host = socket.gethostname()
    lines = [
        "ClusterName=kftest",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={_free_port()}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        f"AuthInfo=socket={root}/munge.sock",
        "CredType=cred/munge",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=sched_interval=2",
        "SlurmdParameters=config_overrides",
        "GresTypes=gpu",
        "ReturnToService=2",
        "MpiDefault=none",
        "KillWait=5",
        "MinJobAge=300",
        "InactiveLimit=0",
        "Waittime=0",
        "MessageTimeout=20",
        "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        "JobCompType=jobcomp/filetxt",
        f"JobCompLoc={jobcomp}",
        f"StateSaveLocation={root}/state",
        f"SlurmdSpoolDir={root}/spool-%n",
        f"SlurmctldPidFile={root}/slurmctld.pid",
        f"SlurmdPidFile={root}/slurmd-%n.pid",
        f"SlurmctldLogFile={root}/slurmctld.log",
        f"SlurmdLogFile={root}/slurmd-%n.log",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
    ]
    for name, (_, _, gpus) in NODES.items():
        lines.append(f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={_free_port()} CPUs=2 "
                     f"RealMemory=4000 Gres=gpu:{gpus} State=UNKNOWN")
    for part in sorted({p for p, _, _ in NODES.values()}):
        nodes = ",".join(n for n, (p, _, _) in NODES.items() if p == part)
        default = "YES" if part == "gpu" else "NO"
        lines.append(f"PartitionName={part} Nodes={nodes} Default={default} MaxTime=INFINITE State=UP "
                     "OverSubscribe=NO")
    return "\n".join(lines) + "\n"


@contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    """A cluster whose nodes are idle; stopped (every daemon by its pid) and removed on exit."""
    root = Path(tempfile.mkdtemp(prefix="kf-slurm-"))
    root.chmod(0o755)  # the munge socket and slurm.conf are read by the test user's commands
    jobcomp = root / "jobcomp.txt"
    conf = root / "slurm.conf"
    conf.write_text(_config(root, jobcomp))
    gres = "".join(f"NodeName={n} Name=gpu File={f}\n" for n, (_, f, _) in NODES.items())
    (root / "gres.conf").write_text(gres)
    (root / "state").mkdir()
    for name in NODES:
        (root / f"spool-{name}").mkdir()
    cluster = Cluster(root=root, conf=conf, jobcomp=jobcomp)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        key = root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        munge = subprocess.Popen(
            [_binary("munged"), "-F", "-f", f"--socket={root}/munge.sock", f"--key-file={key}",
             f"--log-file={root}/munged.log", f"--pid-file={root}/munged.pid",
             f"--seed-file={root}/munge.seed"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(munge)
        _wait(lambda: (root / "munge.sock").exists(), 15, "munged", root / "munged.log")
        env = {**os.environ, **cluster.env}
        ctld = subprocess.Popen([_binary("slurmctld"), "-D", "-i"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT)
        procs.append(ctld)
        _wait(lambda: cluster.run("scontrol", "ping").stdout.count("UP") > 0, 30, "slurmctld",
              root / "slurmctld.log")
        for name in NODES:
            procs.append(subprocess.Popen([_binary("slurmd"), "-D", "-N", name], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        _wait(lambda: _idle(cluster) == len(NODES), 60, "slurmd", root / "slurmd-n1.log")
        cluster.pids = [p.pid for p in procs]
        yield cluster
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def _idle(cluster: Cluster) -> int:
    out = cluster.run("sinfo", "-h", "-N", "-o", "%N %t").stdout.split("\n")
    return sum(1 for line in out if line.split()[1:] and line.split()[1] == "idle")


def _wait(ready, seconds: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except (OSError, subprocess.SubprocessError):
            pass
        time.sleep(0.3)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
    raise RuntimeError(f"{what} did not come up within {seconds:.0f} s:\n{tail}")
