"""
``sb3-flow compare``: every method from the same base policy, the same budget, several seeds, evaluated on the same
fixed initial states, with rliable's statistics. One job per (method, seed), run by local worker processes or Ray;
finished jobs are kept and skipped on a rerun.

    from sb3_flow.compare import compare, report

    compare("compare_configs/pendulum.yml", "compare_output/pendulum", workers=2)
    report("compare_output/pendulum")   # the table and plots again, from the job files
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sb3_flow.compare.base import References, prepare_references, write_json_atomic
from sb3_flow.compare.config import BaseSpec, CompareConfig, ConfigError, MethodSpec, as_config, load_config
from sb3_flow.compare.jobs import Job, all_jobs, is_finished, job_hash, one_torch_thread, run_job
from sb3_flow.compare.launchers import Launcher, LocalLauncher, Progress, RayLauncher, make_launcher
from sb3_flow.compare.reporting import SWEEP_FILE, Report, make_report
from sb3_flow.compare.stats import DEFAULT_BOOTSTRAP_SEED, DEFAULT_REPS, import_rliable

__all__ = [
    "BaseSpec",
    "CompareConfig",
    "ConfigError",
    "Job",
    "Launcher",
    "LocalLauncher",
    "MethodSpec",
    "RayLauncher",
    "Report",
    "compare",
    "load_config",
    "report",
    "run_job",
]


def _write_sweep(config: CompareConfig, out_dir: Path, references: References) -> None:
    """What the report needs besides the job files: the config, the references, the settings hash of every job."""
    hashes: dict[str, dict[str, str]] = {method: {} for method in config.methods}
    for job in all_jobs(config):
        hashes[job.method][str(job.seed)] = job_hash(config, job, references.base_sha256)
    payload = {"config": config.to_dict(), "references": asdict(references), "job_hashes": hashes}
    write_json_atomic(out_dir / SWEEP_FILE, payload)


def compare(
    config: CompareConfig | dict[str, Any] | str | os.PathLike,
    out_dir: str | os.PathLike,
    launcher: str | Launcher = "local",
    workers: int | None = None,
    address: str | None = None,
    reps: int = DEFAULT_REPS,
    bootstrap_seed: int = DEFAULT_BOOTSTRAP_SEED,
    log: Callable[[str], None] = print,
) -> Report | None:
    """
    Run every job of a comparison that has not finished with the same settings before, then write the report.

    The config is checked and the base built (or reused from ``<out>/base/``) before any job starts. A job that fails
    writes its traceback to ``<out>/jobs/<method>/seed_<seed>.error.json`` and the others go on; it runs again on the
    next call. With local worker processes, call this under ``if __name__ == "__main__":`` (they are spawned).

    :param config: a :class:`CompareConfig`, its dict, or the path of a YAML file
    :param out_dir: the output folder (jobs, base, report)
    :param launcher: ``"local"`` (worker processes), ``"ray"``, or a :class:`Launcher`
    :param workers: jobs at a time (local processes, or the CPUs of a Ray instance started here); default: the CPUs
    :param address: a Ray cluster's address (``launcher="ray"``)
    :param reps: bootstrap replications of the report
    :param bootstrap_seed: the report's bootstrap seed
    :param log: where progress lines go
    :return: the report, or None when no job has finished
    :raises ConfigError: naming the field, for a config that cannot run
    :raises FileNotFoundError: for a missing base, dataset or expert file
    :raises ImportError: when rliable (``[compare]``) or Ray (``[ray]``, for ``launcher="ray"``) is missing
    """
    config = as_config(config)
    import_rliable()  # the report needs it: fail now, not after the jobs
    if not isinstance(launcher, Launcher):
        launcher = make_launcher(launcher, workers, address)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with one_torch_thread():  # the base is trained and evaluated as the jobs run
        references = prepare_references(config, out, log)
    _write_sweep(config, out, references)
    jobs = all_jobs(config)
    todo = [job for job in jobs if not is_finished(out, config, job, references.base_sha256)]
    log(f"{len(jobs) - len(todo)} of {len(jobs)} jobs finished before; running {len(todo)} ({type(launcher).__name__})")
    if todo:
        launcher.run(config, todo, out, Progress(len(todo), log))
    try:
        result = make_report(out, reps, bootstrap_seed)
    except ValueError as error:
        log(str(error))
        return None
    log(f"report: {result.files['report']}")
    return result


def report(out_dir: str | os.PathLike, reps: int = DEFAULT_REPS, bootstrap_seed: int = DEFAULT_BOOTSTRAP_SEED) -> Report:
    """
    The report of a comparison's finished jobs (see :func:`~sb3_flow.compare.reporting.make_report`).

    :param out_dir: the comparison's output folder
    :param reps: bootstrap replications
    :param bootstrap_seed: the bootstrap's seed
    """
    return make_report(out_dir, reps, bootstrap_seed)
