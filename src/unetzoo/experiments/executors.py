"""Where the jobs of ``unetzoo compare`` run: child processes of this machine, or SLURM jobs through submitit.

Every executor runs the same function, :func:`unetzoo.experiments.jobs.run_job`, so a run folder does not depend on the
executor that made it (an experiment started with one can be finished with the other), and training code does not
know which executor started it. ``run(out, jobs, log)`` runs every job, waits, and returns the failed ones
(``{job name: message with its log path}``): a failed job does not stop the others.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import submitit

from unetzoo.errors import Stopped, UnetzooError
from unetzoo.formatting import duration
from unetzoo.io import die_with_parent


def _last_line(path: Path) -> str:
    try:
        lines = [
            line.strip() for line in path.read_text(errors="replace").replace("\r", "\n").splitlines() if line.strip()
        ]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class LocalExecutor:
    """``jobs`` jobs at a time as child processes (``python -m unetzoo.experiments.jobs OUT JOB``), output in ``OUT/logs/JOB.log``.

    With ``gpus`` > 0 each job gets one GPU (``CUDA_VISIBLE_DEVICES``; at most one job per GPU); the CPU threads of
    this machine (its affinity mask) are divided equally between the jobs (``OMP_NUM_THREADS``). An ``exclusive``
    call (the benchmark) runs its jobs one at a time, each with one job's share, so that its times are those of the
    conditions the trainings ran in and are not disturbed by each other.
    """

    def __init__(self, jobs: int = 1, gpus: int = 0):
        if jobs < 1:
            raise UnetzooError(f"--jobs must be at least 1, got {jobs}")
        self.jobs = min(jobs, gpus) if gpus else jobs
        self.gpus = gpus
        self.threads = max(1, available_cpus() // self.jobs)

    def describe(self) -> dict:
        return {
            "executor": "local",
            "host": platform.node(),
            "jobs": self.jobs,
            "threads_per_job": self.threads,
            "cpus": available_cpus(),
            "gpus": self.gpus,
        }

    def _environment(self, slot: int) -> dict:
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(slot)
        return env

    def run(self, out, jobs, log=print, exclusive: bool = False) -> dict[str, str]:
        out = Path(out)
        (out / "logs").mkdir(exist_ok=True)
        pending, running, failures = list(jobs), {}, {}
        free = list(range(1 if exclusive else self.jobs))
        total, started = len(pending), 0
        try:
            while pending or running:
                while pending and free:
                    job, slot = pending.pop(0), free.pop(0)
                    started += 1
                    path = out / "logs" / f"{job.name}.log"
                    with open(path, "a") as stream:  # appended: a resumed job keeps the output of the killed one
                        stream.write(f"---- {time.strftime('%Y-%m-%d %H:%M:%S')}: {job.name}\n")
                        stream.flush()
                        process = subprocess.Popen(
                            [sys.executable, "-m", "unetzoo.experiments.jobs", str(out), *job.args],
                            stdout=stream,
                            stderr=subprocess.STDOUT,
                            env=self._environment(slot),
                            preexec_fn=die_with_parent,
                        )
                    running[slot] = (job, process, path, time.time(), started)
                    log(f"compare [{started}/{total}] {job.name}: started (log {path})")
                time.sleep(0.2)
                for slot, (job, process, path, start, number) in list(running.items()):
                    if process.poll() is None:
                        continue
                    del running[slot]
                    free.append(slot)
                    took = duration(time.time() - start)
                    if process.returncode == 0:
                        log(f"compare [{number}/{total}] {job.name}: done in {took}")
                    else:
                        failures[job.name] = (
                            f"exit status {process.returncode} after {took}: {_last_line(path)} (log {path})"
                        )
                        log(f"compare [{number}/{total}] {job.name}: failed, {failures[job.name]}")
        finally:  # interrupted (Ctrl-C): stop the children; their run folders resume at the next invocation
            for _, process, *_ in running.values():
                process.kill()
                process.wait()
        return failures


SLURM_SETTINGS = {  # --set compare.slurm.NAME=VALUE -> submitit's parameter
    "partition": "slurm_partition",
    "account": "slurm_account",
    "time": "timeout_min",  # minutes
    "gpus": "gpus_per_node",
    "cpus": "cpus_per_task",
    "mem": "mem_gb",
}


class ResumableJob(submitit.helpers.Checkpointable):
    """What a SLURM job runs: :func:`unetzoo.experiments.jobs.run_job`. Checkpointable, so that at its time limit (or a
    preemption) submitit requeues the same job, which resumes its run folder from ``checkpoint_last.pt``; a stop
    (SIGTERM, ``scancel``) is reported as the job's error, in one line."""

    def __call__(self, out: str, *args: str) -> str:
        from unetzoo.experiments.jobs import run_job

        try:
            return run_job(out, *args)
        except Stopped as stop:
            raise UnetzooError(str(stop)) from None


class SubmititExecutor:
    """Each job a SLURM job submitted through submitit (``OUT/slurm/``: its scripts, pickles and logs), all submitted at
    once; waits for them. ``settings``: partition, account, time (minutes per job, required), gpus (per job), cpus
    (per job), mem (GB), from ``--set compare.slurm.NAME=VALUE``. ``cluster="local"`` runs the same path through submitit's local
    executor (the tests)."""

    def __init__(self, settings: dict | None = None, cluster: str = "slurm"):
        settings = dict(settings or {})
        unknown = sorted(set(settings) - set(SLURM_SETTINGS))
        if unknown:
            raise UnetzooError(
                f"--set compare.slurm.{unknown[0]}: unknown setting (known: {', '.join(SLURM_SETTINGS)})"
            )
        for name in ("time", "gpus", "cpus", "mem"):
            if name in settings:
                value = str(settings[name])
                if not value.isdigit():
                    raise UnetzooError(f"--set compare.slurm.{name}: expects a whole number >= 0, got {value!r}")
                settings[name] = int(value)
        if "time" not in settings:  # submitit's default is 5 minutes, which would kill every real training
            raise UnetzooError(
                "--executor slurm needs --set compare.slurm.time=MINUTES, the time limit of each job "
                "(a run killed by it resumes when you run the same command again)"
            )
        missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
        if cluster == "slurm" and missing:  # before the experiment folder is made (submitit would fail inside)
            raise UnetzooError(
                f"--executor slurm: SLURM's {' and '.join(missing)} not found on this machine; run compare on a "
                "SLURM login node, or use --executor local"
            )
        self.settings, self.cluster = settings, cluster

    def describe(self) -> dict:
        return {"executor": "slurm" if self.cluster == "slurm" else f"submitit-{self.cluster}", **self.settings}

    def run(self, out, jobs, log=print, exclusive: bool = False) -> dict[str, str]:
        jobs = list(jobs)
        if not jobs:
            return {}
        executor = submitit.AutoExecutor(folder=Path(out) / "slurm" / "%j", cluster=self.cluster)
        executor.update_parameters(name="unetzoo", **{SLURM_SETTINGS[k]: v for k, v in self.settings.items()})
        submitted = {job.name: executor.submit(ResumableJob(), str(out), *job.args) for job in jobs}
        for name, handle in submitted.items():
            log(f"compare: {name} submitted as job {handle.job_id} (log {handle.paths.stdout})")
        failures, start = {}, time.time()
        while submitted:
            time.sleep(1.0)
            for name, handle in list(submitted.items()):
                if not handle.done():
                    continue
                del submitted[name]
                error = handle.exception()
                took = duration(time.time() - start)
                if error is None:
                    log(f"compare: {name} (job {handle.job_id}) done after {took}")
                else:
                    last = _last_line(Path(handle.paths.stderr)) or type(error).__name__
                    failures[name] = f"job {handle.job_id}: {last} (log {handle.paths.stderr})"
                    log(f"compare: {name} failed, {failures[name]}")
        return failures
