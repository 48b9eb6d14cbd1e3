"""
The report of a comparison, from the job files alone (``sb3-flow compare-report DIR``): a Markdown table with rliable's
statistics, a probability-of-improvement table and PNG plots in ``<out>/report/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sb3_flow.compare.base import read_json, write_json_atomic
from sb3_flow.compare.jobs import Job, error_path, result_path
from sb3_flow.compare.stats import (
    DEFAULT_BOOTSTRAP_SEED,
    DEFAULT_REPS,
    Interval,
    iqm_and_mean,
    iqm_curves,
    normalization_references,
    normalize,
    performance_profile,
    probability_of_improvement,
    profile_thresholds,
)

SWEEP_FILE = "sweep.json"
REPORT_FOLDER = "report"


@dataclass
class MethodRuns:
    """A method's finished runs (one record per seed, in the config's seed order) and its failed and missing seeds."""

    name: str
    records: list[dict[str, Any]] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)


@dataclass
class Report:
    """What :func:`make_report` wrote: the Markdown text, the files, and the numbers (also in ``summary.json``)."""

    markdown: str
    files: dict[str, str]
    summary: dict[str, Any]


# Normalized plots show scores from here up when a run falls further below the base (the tables keep every value).
SCORE_FLOOR = -1.0


def read_sweep(out_dir: str | os.PathLike) -> dict[str, Any]:
    """
    The sweep's ``sweep.json`` (its config, references and the settings hash of every job).

    :raises FileNotFoundError: when the folder holds no comparison
    """
    sweep = read_json(Path(out_dir, SWEEP_FILE))
    if sweep is None:
        raise FileNotFoundError(f"{out_dir} holds no comparison ({SWEEP_FILE} is missing): run sb3-flow compare first")
    return sweep


def collect_runs(out_dir: str | os.PathLike, sweep: dict[str, Any]) -> dict[str, MethodRuns]:
    """Per method, the job files whose settings hash is the sweep's (older files of other settings are left out)."""
    runs = {}
    for method, hashes in sweep["job_hashes"].items():
        found = MethodRuns(method)
        for seed_text, expected in hashes.items():
            job = Job(method, int(seed_text))
            record = read_json(result_path(out_dir, job))
            if record is not None and record.get("settings_hash") == expected:
                found.records.append(record)
            elif error_path(out_dir, job).is_file():
                found.failed.append(job.seed)
            else:
                found.missing.append(job.seed)
        runs[method] = found
    return runs


def _curve_array(records: list[dict[str, Any]], base: float | None, expert: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(steps, scores of shape (runs, 1, points)); the runs share their evaluation steps (same settings)."""
    length = min(len(record["curve"]) for record in records)
    steps = np.array([step for step, _ in records[0]["curve"][:length]], dtype=np.int64)
    values = np.array([[value for _, value in record["curve"][:length]] for record in records])
    return steps, normalize(values, base, expert)[:, None, :]


def _cell(interval: Interval, digits: int) -> str:
    point, lower, upper = interval
    return f"{point:.{digits}f} [{lower:.{digits}f}, {upper:.{digits}f}]"


def _header(config: dict[str, Any], references: dict[str, Any], scale: str) -> list[str]:
    base, expert = references.get("base_return"), references.get("expert_return")
    starts, first = config["eval_starts"], config["eval_first_seed"]
    lines = [
        f"# Comparison on {config['env_id']}",
        "",
        f"Budget {config['budget']} environment steps per run, seeds {list(config['seeds'])}; deterministic returns on "
        f"{starts} fixed initial states (reset seeds {first}..{first + starts - 1}), every {config['eval_every']} steps.",
    ]
    refs = []
    if base is not None:
        refs.append(f"base {base:.1f}")
    if expert is not None:
        refs.append(f"expert {expert:.1f}")
    if refs:
        lines.append(f"Reference returns on the same starts: {', '.join(refs)}.")
    lines.append(scale)
    return lines


def _method_table(
    runs: dict[str, MethodRuns],
    aggregates: dict[str, dict[str, Interval]],
    normalized: bool,
    base: float | None,
    expert: float | None,
) -> list[str]:
    digits = 2 if normalized else 1
    score = "score" if normalized else "return"
    lines = [
        f"| method | IQM [95% CI] | mean [95% CI] | final return mean ± std | final {score} per seed | lowest checkpoint "
        "return, mean over seeds | seeds | env steps/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, found in runs.items():
        seeds = f"{len(found.records)}"
        if found.failed:
            seeds += f" ({len(found.failed)} failed)"
        if found.missing:
            seeds += f" ({len(found.missing)} not run)"
        if not found.records:
            lines.append(f"| {name} | - | - | - | - | - | {seeds} | - |")
            continue
        finals = [record["final_return"] for record in found.records]
        per_seed = ", ".join(f"{value:.{digits}f}" for value in normalize(np.array(finals), base, expert))
        speed = np.mean([record["steps_per_second"] for record in found.records])
        lines.append(
            f"| {name} | {_cell(aggregates[name]['iqm'], digits)} | {_cell(aggregates[name]['mean'], digits)} | "
            f"{np.mean(finals):.1f} ± {np.std(finals):.1f} | {per_seed} | {np.mean(lowest_checkpoints(found.records)):.1f} "
            f"| {seeds} | {speed:.0f} |"
        )
    return lines


def lowest_checkpoints(records: list[dict[str, Any]]) -> list[float]:
    """Each run's lowest evaluated return, its starting point included: how far a method dips before it improves."""
    return [min(value for _, value in record["curve"]) for record in records]


def _improvement_table(improvement: dict[tuple[str, str], Interval]) -> list[str]:
    lines = ["| X | Y | P(X > Y) [95% CI] |", "|---|---|---|"]
    lines += [f"| {x} | {y} | {_cell(interval, 2)} |" for (x, y), interval in improvement.items()]
    return lines


def _problems(out_dir: str | os.PathLike, runs: dict[str, MethodRuns]) -> list[str]:
    lines = []
    for name, found in runs.items():
        for seed in found.failed:
            lines.append(f"- {name} seed {seed} failed: see `{error_path(out_dir, Job(name, seed))}`")
        if found.missing:
            lines.append(f"- {name} seeds {found.missing} have not run (rerun the comparison to run them)")
    return lines


def make_report(out_dir: str | os.PathLike, reps: int = DEFAULT_REPS, seed: int = DEFAULT_BOOTSTRAP_SEED) -> Report:
    """
    The report of the jobs finished so far: ``<out>/report/report.md``, ``summary.json``, ``curves.png``,
    ``aggregates.png``, ``profile.png``.

    :param out_dir: the comparison's output folder
    :param reps: bootstrap replications
    :param seed: the bootstrap's seed (the same seed and files give the same report)
    :raises FileNotFoundError: when the folder holds no comparison
    :raises ValueError: when no job has finished yet
    """
    sweep = read_sweep(out_dir)
    config, references = sweep["config"], sweep["references"]
    base, expert, scale = normalization_references(references)  # None, None: raw returns
    normalized = base is not None
    runs = collect_runs(out_dir, sweep)
    finished = {name: found for name, found in runs.items() if found.records}
    if not finished:
        raise ValueError(f"{out_dir}: no job has finished yet, so there is nothing to report")
    scores = {
        name: normalize([record["final_return"] for record in found.records], base, expert)[:, None]
        for name, found in finished.items()
    }
    aggregates = iqm_and_mean(scores, reps, seed)
    names = list(finished)
    pairs = [(x, y) for index, x in enumerate(names) for y in names[index + 1 :]]
    improvement = probability_of_improvement(scores, pairs, reps, seed)
    curves = {name: _curve_array(found.records, base, expert) for name, found in finished.items()}
    bands = iqm_curves({name: values for name, (_, values) in curves.items()}, reps, seed)
    taus = profile_thresholds(scores, normalized)
    profiles, profile_bands = performance_profile(scores, taus, reps, seed)

    folder = Path(out_dir, REPORT_FOLDER)
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "curves": str(folder / "curves.png"),
        "aggregates": str(folder / "aggregates.png"),
        "profile": str(folder / "profile.png"),
    }
    label = "normalized score" if normalized else "return"
    colors = _colors(list(runs))  # one color per method of the config, the same in every plot and every partial report
    curve_bands = {name: (curves[name][0], *bands[name]) for name in finished}
    _plot_curves(curve_bands, files["curves"], config["env_id"], label, colors)
    _plot_aggregates(aggregates, files["aggregates"], label, colors)
    _plot_profile(profiles, profile_bands, taus, files["profile"], label, colors)

    lines = [*_header(config, references, scale), "", *_method_table(runs, aggregates, normalized, base, expert)]
    if pairs:
        lines += ["", "Probability of improvement (a run of X scores higher than a run of Y; 0.5: no difference):", ""]
        lines += _improvement_table(improvement)
    problems = _problems(out_dir, runs)
    if problems:
        lines += ["", *problems]
    lines += ["", f"95% stratified bootstrap intervals (rliable), {reps} replications, seed {seed}."]
    lines += ["", "![learning curves](curves.png)", "", "![IQM and mean](aggregates.png)", "", "![profile](profile.png)"]
    markdown = "\n".join(lines) + "\n"
    files["report"] = str(folder / "report.md")
    Path(files["report"]).write_text(markdown, encoding="utf-8")

    summary = {
        "normalized": normalized,
        "references": {"base_return": references.get("base_return"), "expert_return": references.get("expert_return")},
        "methods": {
            name: {
                **aggregates[name],
                "final_returns": [record["final_return"] for record in found.records],
                "lowest_checkpoint_returns": lowest_checkpoints(found.records),
                "seeds": [record["seed"] for record in found.records],
                "steps_per_second": [record["steps_per_second"] for record in found.records],
                "wall_seconds": [record["wall_seconds"] for record in found.records],
                # the learning curve of curves.png: the IQM over seeds at each evaluation, with its 95% band
                "curve": {
                    key: np.asarray(values).tolist()
                    for key, values in zip(("steps", "iqm", "lower", "upper"), curve_bands[name], strict=True)
                },
            }
            for name, found in finished.items()
        },
        "probability_of_improvement": [{"x": x, "y": y, "p": interval} for (x, y), interval in improvement.items()],
        "failed": [{"method": name, "seed": seed} for name, found in runs.items() for seed in found.failed],
        "missing": [{"method": name, "seed": seed} for name, found in runs.items() for seed in found.missing],
        "bootstrap": {"reps": reps, "seed": seed},
    }
    files["summary"] = str(folder / "summary.json")
    write_json_atomic(files["summary"], summary)
    return Report(markdown, files, summary)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(names: list[str]) -> dict[str, Any]:
    import seaborn as sns  # rliable's plots need it (a dependency of rliable)

    return dict(zip(names, sns.color_palette("colorblind", n_colors=len(names)), strict=True))


def score_axis_limits(normalized: bool, lowest: float, highest: float) -> tuple[float, float] | None:
    """
    The score axis of a plot, or None to let matplotlib choose: normalized scores below :data:`SCORE_FLOOR` (a baseline
    from scratch far below a base that nearly solves the task, e.g. PPO at -100) would flatten every method that
    starts from the base into one line, so such a plot shows from the floor up (its label says so).

    :param normalized: whether the scores are normalized between the base and the expert
    :param lowest: the lowest value plotted (a band's lower edge)
    :param highest: the highest value plotted
    """
    if not normalized or lowest >= SCORE_FLOOR:
        return None
    top = max(1.0, highest)
    return SCORE_FLOOR, top + 0.1 * (top - SCORE_FLOOR)


def _plot_curves(
    curves: dict[str, tuple[np.ndarray, ...]], path: str, env_id: str, label: str, colors: dict[str, Any]
) -> None:
    """IQM over seeds at each evaluation, with its 95% band, per method."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4))
    for name, (steps, iqm, lower, upper) in curves.items():
        axes.plot(steps, iqm, label=name, color=colors[name])
        axes.fill_between(steps, lower, upper, alpha=0.2, color=colors[name])
    if label == "normalized score":
        for value, text in ((0.0, "base"), (1.0, "expert")):
            axes.axhline(value, linestyle="--", color="gray", linewidth=1)
            axes.text(0, value, f" {text}", va="bottom", fontsize=8, color="gray")
    limits = score_axis_limits(
        label == "normalized score",
        min(float(np.min(lower)) for _, _, lower, _ in curves.values()),
        max(float(np.max(upper)) for *_, upper in curves.values()),
    )
    if limits is not None:
        axes.set_ylim(*limits)
        label = f"{label}, cut at {SCORE_FLOOR:g}"
    axes.set_xlabel("environment steps")
    axes.set_ylabel(f"IQM {label} (95% CI)")
    axes.set_title(f"Sample efficiency on {env_id}")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _plot_aggregates(aggregates: dict[str, dict[str, Interval]], path: str, label: str, colors: dict[str, Any]) -> None:
    """rliable's interval plot of the IQM and the mean, the first method on top."""
    from rliable import plot_utils

    plt = _pyplot()
    points = {name: np.array([values["iqm"][0], values["mean"][0]]) for name, values in aggregates.items()}
    intervals = {
        name: np.array([[values["iqm"][1], values["mean"][1]], [values["iqm"][2], values["mean"][2]]])
        for name, values in aggregates.items()
    }
    normalized = label == "normalized score"
    below = [name for name, bounds in intervals.items() if normalized and bounds.max() < SCORE_FLOOR]
    limits = score_axis_limits(
        normalized,
        min(float(bounds.min()) for bounds in intervals.values()),
        max(float(bounds.max()) for bounds in intervals.values()),
    )
    xlabel = f"final {label} (95% CI)"
    if limits is not None:
        xlabel += f", cut at {SCORE_FLOOR:g}" + (f" ({', '.join(below)} below)" if below else "")
    figure, _ = plot_utils.plot_interval_estimates(
        points, intervals, metric_names=["IQM", "Mean"], algorithms=list(reversed(aggregates)), colors=colors,
        xlabel=xlabel, xlabel_y_coordinate=-0.5 / max(len(aggregates), 1) - 0.25,
    )  # fmt: skip
    if limits is not None:
        for axes in figure.axes:  # as in the curves: far-below-base baselines run off the left edge
            axes.set_xlim(*limits)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def _plot_profile(
    profiles: dict[str, np.ndarray],
    bands: dict[str, np.ndarray],
    taus: np.ndarray,
    path: str,
    label: str,
    colors: dict[str, Any],
) -> None:
    """rliable's performance profile: the fraction of runs whose final score exceeds tau."""
    from rliable import plot_utils

    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4))
    plot_utils.plot_performance_profiles(
        profiles, taus, performance_profile_cis=bands, ax=axes, colors=colors, xlabel=f"final {label} (tau)",
        ylabel="fraction of runs with score > tau", labelsize="medium", ticklabelsize="medium",
    )  # fmt: skip
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
