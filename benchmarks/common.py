"""
Helpers only the benchmark scripts use: learning curves on fixed starts, timing, the machine description, tables and
plots. What the benchmarks share with the demo and the CLI (the pipeline to a base policy, tuned settings, experts,
evaluation) is in :mod:`sb3_flow.experiments`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.vec_env import VecNormalize

from sb3_flow.experiments import finetune_model, returns_on_starts


def curve_parser(doc: str | None, steps: int, eval_every: int, out: str) -> argparse.ArgumentParser:
    """The arguments every learning-curve benchmark takes: ``--steps``, ``--eval-every``, ``--seeds``, ``--out``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=steps, help="environment steps per run")
    parser.add_argument("--eval-every", type=int, default=eval_every, help="environment steps between evaluations")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=out, help="JSON output")
    return parser


def evaluate_on_starts(model: Any, env_id: str, n_starts: int = 50, vec_normalize: VecNormalize | None = None) -> float:
    """Mean deterministic return on the fixed starts of :func:`sb3_flow.experiments.returns_on_starts`."""
    return float(returns_on_starts(model, env_id, n_starts, vec_normalize=vec_normalize).mean())


def learn_with_curve(
    model: Any, total_timesteps: int, eval_every: int, env_id: str, n_starts: int = 50
) -> tuple[list[tuple[int, float]], float]:
    """
    Train in chunks of ``eval_every`` steps, evaluating on fixed starts after each (and before the first).

    :return: ([(timesteps, mean return)], training seconds excluding evaluation)
    """
    vec_normalize = model.get_vec_normalize_env()
    curve = [(0, evaluate_on_starts(model, env_id, n_starts, vec_normalize))]
    train_seconds = 0.0
    while model.num_timesteps < total_timesteps:
        start = time.perf_counter()
        model.learn(eval_every, reset_num_timesteps=False)
        train_seconds += time.perf_counter() - start
        curve.append((model.num_timesteps, evaluate_on_starts(model, env_id, n_starts, vec_normalize)))
        print(f"  {type(model).__name__} {model.num_timesteps}: {curve[-1][1]:.1f}", flush=True)
    return curve, train_seconds


def finetune_curves(
    algorithm: type,
    env_id: str,
    base: Any,
    settings: dict[str, Any],
    seeds: list[int],
    total_timesteps: int,
    eval_every: int,
    **overrides: Any,
) -> list[list[tuple[int, float]]]:
    """
    One learning curve per seed of :func:`sb3_flow.experiments.finetune_model` (8 environments) from ``base``.

    :param overrides: arguments that replace or add to ``settings`` (e.g. ``noise="fixed"``)
    """
    curves = []
    for seed in seeds:
        model = finetune_model(algorithm, env_id, base, settings, seed, **overrides)
        curves.append(learn_with_curve(model, total_timesteps, eval_every, env_id)[0])
    return curves


def steps_per_second(model: Any, steps: int) -> float:
    """Train ``steps`` environment steps (rollouts and updates); return the steps per wall-clock second."""
    start = time.perf_counter()
    model.learn(steps)
    return steps / (time.perf_counter() - start)


def machine() -> dict[str, Any]:
    """What ran the benchmark."""
    return {
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": th.__version__,
        "torch_threads": th.get_num_threads(),
        "python": platform.python_version(),
    }


def write_json(path: str, payload: dict[str, Any]) -> None:
    """Write ``payload`` with the machine description."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**payload, "machine": machine()}, indent=2, default=float))
    print(f"\nwrote {out}")


def print_speed_ratios(speeds: dict[str, list[float]], baseline: str, label: str = "method", prefix: str = "") -> None:
    """
    Markdown rows for speeds measured in alternating chunks of one process: the median steps/s, the median of the
    per-repeat ratios to ``baseline`` (the headline: each repeat's methods shared the same machine state), their
    range, and the ratio of total times (baseline time / method time over all repeats).

    :param speeds: steps/s per method, one value per repeat, ``baseline`` among them
    :param baseline: the method the ratios are relative to
    :param label: header of the first column
    :param prefix: a leading cell for every row (e.g. ``"| Hopper-v5 "``), with its header cell in ``label``
    """
    reference = np.array(speeds[baseline])
    n_cells = 2 if prefix else 1
    columns = f"steps/s (median) | ratio to {baseline} (median of per-repeat ratios) | per-repeat range | ratio of total times"
    print(f"\n| {label} | {columns} |")
    print("|---" * (n_cells + 4) + "|")
    for name, values in speeds.items():
        ratios = np.array(values) / reference
        total = np.sum(1.0 / reference) / np.sum(1.0 / np.array(values))
        print(
            f"{prefix}| {name} | {np.median(values):.1f} | {np.median(ratios):.2f} | {ratios.min():.2f}-{ratios.max():.2f} | "
            f"{total:.2f} |"
        )


def mean_std(values: list[float]) -> str:
    """``mean ± std`` of a list."""
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}"


def print_gap_table_head(expert_return: float, bc_return: float, base_label: str = "FlowBC base") -> None:
    """Header, expert row and base row of a fine-tuning table (see :func:`print_gap_row`)."""
    print("| | return on 50 fixed starts | gap closed | worst checkpoint |")
    print("|---|---|---|---|")
    print(f"| SAC expert | {expert_return:.1f} | | |")
    print(f"| {base_label} | {bc_return:.1f} | 0% | |")


def print_gap_row(
    label: str, curves: list[list[tuple[int, float]]], expert_return: float, bc_return: float, worst_note: str = ""
) -> list[float]:
    """
    One fine-tuning table row: the final return over seeds, the share of the base -> expert gap it closed (mean and per
    seed) and the worst checkpoint.

    :param worst_note: appended to the worst-checkpoint cell
    :return: the per-seed shares of the gap closed
    """
    finals = [curve[-1][1] for curve in curves]
    closed = [(final - bc_return) / (expert_return - bc_return) for final in finals]
    worst = [min(value for _, value in curve) for curve in curves]
    print(
        f"| {label} | {mean_std(finals)} | {100 * np.mean(closed):.0f}% "
        f"(per seed {', '.join(f'{100 * c:.0f}%' for c in closed)}) | {mean_std(worst)}{worst_note} |"
    )
    return closed


def plot_curves(
    curves: dict[str, list[list[tuple[int, float]]]],
    path: str,
    title: str,
    hlines: dict[str, float] | None = None,
    ylim: tuple[float, float] | None = None,
    ylabel: str = "return on fixed starts",
) -> None:
    """Mean ± std over seeds of each method's curve, optional horizontal reference lines and y range, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    for name, runs in curves.items():
        steps = np.array([step for step, _ in runs[0]])
        values = np.array([[value for _, value in run] for run in runs])
        axes.plot(steps, values.mean(0), label=name)
        axes.fill_between(steps, values.mean(0) - values.std(0), values.mean(0) + values.std(0), alpha=0.2)
    for name, value in (hlines or {}).items():
        axes.axhline(value, linestyle="--", color="gray", linewidth=1)
        axes.text(0, value, f" {name}", va="bottom", fontsize=8, color="gray")
    axes.set_xlabel("environment steps")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if ylim is not None:
        axes.set_ylim(*ylim)
    figure.savefig(path, dpi=100)
    plt.close(figure)
