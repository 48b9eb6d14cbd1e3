"""
Where a comparison's jobs run: local worker processes (:class:`LocalLauncher`) or a Ray cluster (:class:`RayLauncher`).
Both run the same job code with one torch thread per job, so the launcher changes nothing in the results; both write
each job's file as soon as it finishes, so an interruption loses nothing finished.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from sb3_flow.common.utils import check_positive_int, set_torch_threads
from sb3_flow.compare.config import CompareConfig
from sb3_flow.compare.jobs import Job, base_file, crash_record, job_record, one_torch_thread, run_job, write_record

RAY_INSTALL_HINT = "pip install 'sb3-flow[ray]'"
# How many times a job runs again after a worker died under it (its own or another job's worker: a broken pool fails
# every job in it); past that it is recorded as crashed.
POOL_RESTARTS = 2


class Progress:
    """
    The live display of a sweep: one line per finished job with the counts of jobs done (failed ones included), running
    and failed.

    :param total: the number of jobs that run in this sweep (finished ones skipped)
    :param log: where the lines go
    """

    def __init__(self, total: int, log: Callable[[str], None] = print) -> None:
        self.total = total
        self.log = log
        self.done = 0
        self.failed = 0

    def finished(self, job: Job, record: dict[str, Any], running: int) -> None:
        """Count a finished job (successful or failed) and print its line."""
        self.done += 1
        if record["status"] == "ok":
            outcome = f"final return {record['final_return']:.1f}, {record['steps_per_second']:.0f} env steps/s"
        else:
            self.failed += 1
            outcome = f"FAILED: {record['error']}"
        wall = record.get("wall_seconds")
        took = f" in {wall:.0f} s" if wall is not None else ""
        counts = f"{self.done}/{self.total} done, {running} running, {self.failed} failed"
        self.log(f"[{counts}] {job}: {outcome}{took}")


class Launcher(ABC):
    """Runs jobs and writes each one's record (:func:`~sb3_flow.compare.jobs.write_record`) as it finishes."""

    @abstractmethod
    def run(self, config: CompareConfig, jobs: list[Job], out_dir: str | os.PathLike, progress: Progress) -> None:
        """
        :param config: the comparison
        :param jobs: the jobs to run (the finished ones already left out)
        :param out_dir: the output folder, its base prepared
        :param progress: the live display
        """


def _base_or_none(config: CompareConfig, out_dir: str | os.PathLike) -> Path | None:
    return base_file(out_dir) if config.base is not None else None


def _worker_init() -> None:
    # One torch thread per job: small MLPs run fastest so, and jobs sharing cores do not slow each other down.
    set_torch_threads(1)


class LocalLauncher(Launcher):
    """
    Jobs in worker processes on this machine (spawned, one torch thread each); with one worker, one after the other
    in this process.

    :param workers: the number of jobs at a time (default: the number of CPUs)
    """

    def __init__(self, workers: int | None = None) -> None:
        self.workers = check_positive_int(workers if workers is not None else os.cpu_count() or 1, "workers")

    def run(self, config: CompareConfig, jobs: list[Job], out_dir: str | os.PathLike, progress: Progress) -> None:
        if self.workers == 1 or len(jobs) <= 1:
            self._run_here(config, jobs, out_dir, progress)
        else:
            self._run_in_processes(config, jobs, out_dir, progress)

    @staticmethod
    def _run_here(config: CompareConfig, jobs: list[Job], out_dir: str | os.PathLike, progress: Progress) -> None:
        with one_torch_thread():
            for index, job in enumerate(jobs):
                record = run_job(config, job.method, job.seed, out_dir)
                progress.finished(job, record, running=min(1, len(jobs) - index - 1))

    def _run_in_processes(
        self, config: CompareConfig, jobs: list[Job], out_dir: str | os.PathLike, progress: Progress
    ) -> None:
        # A worker that dies (killed, out of memory) breaks the whole pool: every job still in it fails with
        # BrokenProcessPool, not only the one that died. Those jobs run again in a fresh pool, each at most
        # POOL_RESTARTS times, so one memory-hungry job does not cost the sweep every job queued beside it.
        restarts: dict[Job, int] = {}
        while jobs:
            jobs = self._run_pool(config, jobs, out_dir, progress, restarts)

    def _run_pool(
        self,
        config: CompareConfig,
        jobs: list[Job],
        out_dir: str | os.PathLike,
        progress: Progress,
        restarts: dict[Job, int],
    ) -> list[Job]:
        """Run ``jobs`` in one pool; return those to run again because the pool broke under them."""
        # spawn, not fork: a forked copy of a process that already ran torch can hang in its thread pool.
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=min(self.workers, len(jobs)), mp_context=context, initializer=_worker_init)
        futures: dict[Future, Job] = {pool.submit(run_job, config, job.method, job.seed, out_dir): job for job in jobs}
        pending = set(futures)
        again: list[Job] = []
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    job = futures[future]
                    try:
                        record = future.result()
                    except BrokenProcessPool:
                        if restarts.get(job, 0) < POOL_RESTARTS:
                            restarts[job] = restarts.get(job, 0) + 1
                            again.append(job)
                            continue
                        record = crash_record(config, job, _base_or_none(config, out_dir), traceback.format_exc())
                        write_record(out_dir, record)
                    except Exception:  # the job's own errors come as records: this is the launcher's
                        record = crash_record(config, job, _base_or_none(config, out_dir), traceback.format_exc())
                        write_record(out_dir, record)
                    # (a pool queues one job more than it has workers, and counts it as running)
                    running = min(self.workers, sum(future.running() for future in pending))
                    progress.finished(job, record, running=running)
        except BaseException:
            # Ctrl-C or an error here: drop the queued jobs and stop the running ones; their files were never written.
            pool.shutdown(wait=False, cancel_futures=True)
            for process in list(getattr(pool, "_processes", {}).values()):
                process.terminate()
            raise
        pool.shutdown()
        if again:
            progress.log(f"a worker process died: running {len(again)} job(s) again in new workers")
        return again


def _ray_job(config: CompareConfig, job: Job, base_bytes: bytes | None) -> dict[str, Any]:
    """One job on a Ray worker: the base arrives through Ray's object store, the record goes back to the driver."""
    set_torch_threads(1)
    with tempfile.TemporaryDirectory(prefix="sb3-flow-compare-") as folder:
        path = None
        if base_bytes is not None:
            path = Path(folder, "base.zip")
            path.write_bytes(base_bytes)
        return job_record(config, job, path)


def import_ray() -> Any:
    """
    :raises ImportError: naming the extra that installs Ray, when it is missing
    """
    try:
        import ray
    except ImportError as error:
        raise ImportError(f"--launcher ray needs Ray: {RAY_INSTALL_HINT}") from error
    return ray


class RayLauncher(Launcher):
    """
    One Ray task per job (``num_cpus=1``, one torch thread). The workers need no shared file system: the base travels
    through Ray's object store and each job's record comes back to this process, which writes it.

    :param address: the address of a running Ray cluster (``ray start --head`` prints it; ``"auto"`` finds a local
        one); None starts a Ray instance on this machine, stopped at the end
    :param num_cpus: the CPUs of the instance started here, i.e. jobs at a time (default: Ray's, all of them); not used
        with ``address``. A cluster's nodes need sb3-flow installed
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        import_ray()
        self.address = address
        self.num_cpus = None if num_cpus is None else check_positive_int(num_cpus, "num_cpus")

    def run(self, config: CompareConfig, jobs: list[Job], out_dir: str | os.PathLike, progress: Progress) -> None:
        ray = import_ray()
        started_here = not ray.is_initialized()
        if started_here:
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if self.address is None:
                options["num_cpus"] = self.num_cpus
            ray.init(address=self.address, **options)
        try:
            self._run(ray, config, jobs, out_dir, progress)
        finally:
            if started_here:
                ray.shutdown()

    @staticmethod
    def _run(ray: Any, config: CompareConfig, jobs: list[Job], out_dir: str | os.PathLike, progress: Progress) -> None:
        base_path = _base_or_none(config, out_dir)
        base_ref = ray.put(base_path.read_bytes()) if base_path is not None else None
        task = ray.remote(num_cpus=1)(_ray_job)
        refs = {task.remote(config, job, base_ref): job for job in jobs}
        slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
        pending = list(refs)
        try:
            while pending:
                finished, pending = ray.wait(pending, num_returns=1)
                for ref in finished:
                    job = refs[ref]
                    try:
                        record = ray.get(ref)
                    except ray.exceptions.RayError as error:  # the task or its worker failed outside the job's code
                        record = crash_record(config, job, base_path, str(error))
                    write_record(out_dir, record)
                    progress.finished(job, record, running=min(slots, len(pending)))
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise


def make_launcher(name: str = "local", workers: int | None = None, address: str | None = None) -> Launcher:
    """
    A launcher by its command-line name.

    :param name: ``"local"`` or ``"ray"``
    :param workers: jobs at a time (local processes, or the CPUs of a Ray instance started here)
    :param address: a Ray cluster's address
    :raises ValueError: for another name, or an address with the local launcher
    """
    if name == "local":
        if address is not None:
            raise ValueError("--address is a Ray cluster's address: use it with --launcher ray")
        return LocalLauncher(workers)
    if name == "ray":
        return RayLauncher(address, num_cpus=workers)
    raise ValueError(f"launcher must be 'local' or 'ray', got {name!r}")
