"""
``sb3-flow demo``: what a flow policy keeps and what fine-tuning buys, in a few minutes on 2 CPU cores.

1. **Modes.** On demonstrations whose action is ``+0.8`` or ``-0.8`` with equal probability in every state
   (:mod:`sb3_flow.common.toy`), Gaussian BC averages the modes while Flow BC keeps both.
2. **Pipeline.** An expert, its noisy demonstrations, and a Flow BC base trained on them.
3. **Comparison.** A small :mod:`sb3_flow.compare` run from that base: a few methods, several seeds, every agent, the
   base and the expert scored on the same fixed initial states, scores normalized so that the base is 0 and the expert
   1, with 95% bootstrap intervals over seeds (rliable).

It writes ``results.json`` and ``demo.png`` (the modes, the learning curves and the final scores) into the output
folder, and the comparison's own files (jobs, report) under ``<out>/compare/``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sb3_flow.bc import FlowBC, GaussianBC
from sb3_flow.common.demonstrations import collect_demonstrations
from sb3_flow.common.experts import expert_cache_path
from sb3_flow.common.files import existing_file
from sb3_flow.common.toy import BIMODAL_MODE, BimodalEnv, bimodal_demonstrations
from sb3_flow.common.utils import check_positive_int
from sb3_flow.compare import CompareConfig, compare
from sb3_flow.compare.stats import DEFAULT_REPS, import_rliable, normalize
from sb3_flow.experiments import (
    EXPERT_ALGOS,
    PENDULUM_PIPELINE,
    load_expert,
    pendulum_swing_up,
    pretrain,
    returns_on_starts,
    train_expert,
)

# The methods the demo can compare, by their name in the comparison: (label, the comparison's method settings).
# The SAC-based steering methods improve a Pendulum base within a few thousand environment steps; the on-policy
# fine-tuners need tens of thousands (docs/benchmarks.md), so they only show a gain with a larger --budget.
DEMO_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "dsrl": ("DSRL", {"algo": "sac_dsrl", "preset": "STEERING_SAC"}),
    "residual_sac": ("Residual SAC", {"algo": "sac_residual", "preset": "STEERING_SAC"}),
    "dsrl_na": ("DSRL-NA", {"algo": "dsrl_na", "preset": "STEERING_SAC"}),
    "flow_ppo": ("FlowPPO", {"algo": "flow_ppo", "preset": "FLOW_PPO_PENDULUM_FINETUNE", "n_envs": 8}),
    "reinflow": ("ReinFlow", {"algo": "reinflow", "preset": "REINFLOW_PENDULUM_FINETUNE", "n_envs": 8}),
    "sac": ("SAC from scratch", {"algo": "sac", "preset": "STEERING_SAC"}),
}

# Half the pipeline's 20k steps: SAC with these settings passes 90% of the 20k expert's return on Pendulum after 4-5k
# steps (docs/benchmarks.md, steering), and a first run, which trains the expert, must fit 10 minutes on 2 cores.
DEMO_EXPERT_STEPS = 10_000
# The comparison's first evaluation reset seed (away from the demonstrations' episodes): the expert is scored there too.
EVAL_FIRST_SEED = CompareConfig.eval_first_seed
# Where a sample counts as "at a mode" (or "at the mean", 0) in the modes panel.
MODE_TOLERANCE = 0.25


@dataclass
class DemoConfig:
    """
    Settings of ``sb3-flow demo``.

    :param env_id: gymnasium environment id
    :param expert: "sac", "ppo", "td3" (trained and cached), "scripted" (Pendulum only) or the path of a saved model
    :param expert_algo: the algorithm of a saved expert model
    :param expert_steps: training steps of a trained expert
    :param n_episodes: demonstration episodes
    :param action_noise: Gaussian action noise of the demonstrations (fraction of the action half-width)
    :param bc_steps: gradient steps of the Flow BC base
    :param bc_learning_rate: learning rate of the Flow BC base
    :param modes_steps: gradient steps of Gaussian BC and of Flow BC on the bimodal demonstrations (first panel)
    :param methods: the compared methods, names of :data:`DEMO_METHODS`
    :param budget: environment steps of each (method, seed)
    :param seeds: the comparison's seeds
    :param eval_starts: the fixed initial states every agent, the base and the expert are scored on
    :param eval_every: environment steps between evaluations (the learning curves' points)
    :param n_workers: processes that run the comparison's jobs (1: one after the other in this process; each uses one
        torch thread). The workers are spawned, so a script that calls :func:`run_demo` with more than one must do it
        under ``if __name__ == "__main__":``
    :param reps: bootstrap replications of the intervals
    :param seed: seed of the modes panel, the expert, the demonstrations and the base
    :param out_dir: where results.json, demo.png, the demonstrations, the base and the comparison go
    :param cache_dir: expert cache folder (None: the default)
    """

    env_id: str = PENDULUM_PIPELINE.env_id
    expert: str = "sac"
    expert_algo: str = "sac"
    expert_steps: int = DEMO_EXPERT_STEPS
    n_episodes: int = PENDULUM_PIPELINE.n_episodes
    action_noise: float = PENDULUM_PIPELINE.action_noise
    bc_steps: int = PENDULUM_PIPELINE.bc_steps
    bc_learning_rate: float = PENDULUM_PIPELINE.bc_learning_rate
    modes_steps: int = 1_000
    methods: tuple[str, ...] = ("dsrl", "residual_sac")
    budget: int = 3_000
    seeds: tuple[int, ...] = (0, 1, 2)
    eval_starts: int = 50
    eval_every: int = 500
    n_workers: int = 2
    reps: int = DEFAULT_REPS
    seed: int = PENDULUM_PIPELINE.seed
    out_dir: str = "demo_output"
    cache_dir: str | None = None


@dataclass
class DemoRow:
    """
    One line of the demo's table.

    :param name: the method (or reference)
    :param score: the normalized score (0: the base, 1: the expert); for a method, the IQM over seeds
    :param score_low: the lower end of its 95% interval over seeds
    :param score_high: the upper end
    :param mean_return: the raw return on the fixed starts (a method's: its mean over seeds)
    :param wall_seconds: seconds it took (a method's: per seed, training and evaluations)
    :param notes: what it was
    """

    name: str
    score: float
    score_low: float
    score_high: float
    mean_return: float
    wall_seconds: float
    notes: str = ""


@dataclass
class ModesResult:
    """
    The first panel: sampled actions on the bimodal demonstrations.

    :param demonstrations: the demonstrations' actions
    :param gaussian_samples: Gaussian BC's sampled actions
    :param gaussian_mean: Gaussian BC's deterministic (mean) action, averaged over the states
    :param flow_samples: Flow BC's sampled actions
    :param mode: where the two modes lie (``+mode`` and ``-mode``)
    """

    demonstrations: np.ndarray
    gaussian_samples: np.ndarray
    gaussian_mean: float
    flow_samples: np.ndarray
    mode: float = BIMODAL_MODE

    def fractions(self, samples: np.ndarray) -> dict[str, float]:
        """The fractions of ``samples`` near ``+mode``, near ``-mode`` and near their mean 0."""
        samples = np.ravel(samples)
        return {
            "near_plus": float(np.mean(np.abs(samples - self.mode) < MODE_TOLERANCE)),
            "near_minus": float(np.mean(np.abs(samples + self.mode) < MODE_TOLERANCE)),
            "near_zero": float(np.mean(np.abs(samples) < MODE_TOLERANCE)),
        }

    def summary(self) -> dict[str, Any]:
        """The numbers of the panel, JSON-ready."""
        return {
            "mode": self.mode,
            "tolerance": MODE_TOLERANCE,
            "gaussian_mean_action": self.gaussian_mean,
            "gaussian_bc": self.fractions(self.gaussian_samples),
            "flow_bc": self.fractions(self.flow_samples),
        }


@dataclass
class DemoResult:
    """
    What :func:`run_demo` produced.

    :param config: the settings
    :param rows: the table: the expert, the base, then the methods
    :param files: where the files went
    :param modes: the first panel's samples
    :param curves: per method, the normalized learning curve: (steps, IQM, lower, upper) over seeds
    :param seed_scores: per method, the final normalized score of each seed
    :param seconds: wall-clock seconds of each stage and in total
    :param normalized: the scores are normalized (0: the base, 1: the expert); False: raw returns, when the base's and
        the expert's returns are equal
    :param failed: the comparison's jobs that failed ("method seed s"; their tracebacks are in ``<out>/compare/jobs``)
    """

    config: DemoConfig
    rows: list[DemoRow] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    modes: ModesResult | None = None
    curves: dict[str, tuple[np.ndarray, ...]] = field(default_factory=dict)
    seed_scores: dict[str, list[float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    normalized: bool = True
    failed: list[str] = field(default_factory=list)


def check_demo_config(config: DemoConfig) -> None:
    """
    Everything about the settings that can be checked before minutes of training.

    :raises ValueError: naming the setting
    :raises ImportError: when rliable (``[compare]``) is missing
    """
    counts = ("expert_steps", "n_episodes", "bc_steps", "modes_steps", "budget", "eval_starts", "eval_every", "n_workers")
    for name in (*counts, "reps"):
        check_positive_int(getattr(config, name), name)
    if config.eval_every > config.budget:
        raise ValueError(f"eval_every must be at most the budget ({config.budget} env steps), got {config.eval_every}")
    seeds = tuple(config.seeds)
    if not seeds:
        raise ValueError("seeds must name at least one seed (intervals over seeds need two or more)")
    for seed in seeds:
        check_positive_int(seed, "seeds", minimum=0)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must name each seed once, got {list(seeds)}")
    methods = tuple(config.methods)
    if not methods:
        raise ValueError(f"methods must name at least one of {sorted(DEMO_METHODS)}")
    unknown = sorted(set(methods) - set(DEMO_METHODS))
    if unknown:
        raise ValueError(f"methods: unknown {unknown}; known: {sorted(DEMO_METHODS)}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods must name each method once, got {list(methods)}")
    if config.expert == "scripted" and config.env_id != "Pendulum-v1":
        raise ValueError("the scripted expert only controls Pendulum-v1")
    if config.expert != "scripted" and config.expert.lower() not in EXPERT_ALGOS:
        existing_file(config.expert, ".zip", what="saved expert model")
    import_rliable()  # the intervals need it: fail now, not after the expert and the base


def get_expert(config: DemoConfig, progress_bar: bool = True) -> Any:
    """The expert named by the config: a trained (cached) SB3 model, a loaded one, or the scripted controller."""
    if config.expert == "scripted":
        if config.env_id != "Pendulum-v1":
            raise ValueError("the scripted expert only controls Pendulum-v1")
        return pendulum_swing_up
    if config.expert.lower() in EXPERT_ALGOS:
        return train_expert(
            config.env_id, config.expert, config.expert_steps, config.seed, config.cache_dir, progress_bar=progress_bar
        )
    return load_expert(config.expert, config.expert_algo)


def modes_panel(steps: int, seed: int = 0, n_samples: int = 2000) -> ModesResult:
    """
    Gaussian BC and Flow BC on bimodal demonstrations (:func:`~sb3_flow.common.toy.bimodal_demonstrations`), the same
    networks and gradient steps, then ``n_samples`` sampled actions of each on fresh states.

    :param steps: gradient steps of each
    :param seed: seed of the data, the models and the states
    :param n_samples: sampled actions of each
    """
    steps = check_positive_int(steps, "modes_steps")
    demos = bimodal_demonstrations(4000, seed=seed)
    # Small networks: the panel trains in seconds; the observation carries no information, so any size would do.
    settings = {"seed": seed, "learning_rate": 1e-3, "policy_kwargs": {"net_arch": [64, 64]}, "device": "cpu"}
    gaussian = GaussianBC("MlpPolicy", BimodalEnv(), demos, **settings).learn(steps)
    flow = FlowBC("MlpPolicy", BimodalEnv(), demos, **settings).learn(steps)
    states = np.random.default_rng(seed + 1).uniform(-1, 1, (n_samples, 2)).astype(np.float32)
    gaussian_mean, _ = gaussian.predict(states, deterministic=True)
    gaussian_samples, _ = gaussian.predict(states, deterministic=False)
    flow_samples, _ = flow.predict(states, deterministic=False)
    return ModesResult(
        demonstrations=demos.actions.ravel(),
        gaussian_samples=np.ravel(gaussian_samples),
        gaussian_mean=float(np.mean(gaussian_mean)),
        flow_samples=np.ravel(flow_samples),
    )


def compare_settings(config: DemoConfig, base_path: str, expert_return: float) -> dict[str, Any]:
    """
    The comparison the demo runs, as :func:`sb3_flow.compare.compare` takes it.

    :param config: the demo's settings
    :param base_path: the Flow BC base's zip
    :param expert_return: the expert's mean return on the same fixed starts (the score's 1)
    """
    return {
        "env": config.env_id,
        "base": {"zip": str(Path(base_path).resolve())},
        "expert_return": float(expert_return),
        "methods": {name: dict(DEMO_METHODS[name][1]) for name in config.methods},
        "budget": config.budget,
        "seeds": list(config.seeds),
        "eval_starts": config.eval_starts,
        "eval_every": config.eval_every,
        "eval_first_seed": EVAL_FIRST_SEED,
    }


def _timed(step: Callable[[], Any], seconds: dict[str, float], name: str) -> Any:
    start = time.perf_counter()
    value = step()
    seconds[name] = time.perf_counter() - start
    return value


def run_demo(config: DemoConfig, progress_bar: bool = True, log: Callable[[str], None] = print) -> DemoResult:
    """
    Run the demo and write ``results.json`` and ``demo.png`` into ``config.out_dir``.

    :param config: the settings
    :param progress_bar: show progress bars (the expert's and the base's training)
    :param log: where progress lines go
    :return: the table rows, the panels' data, the timings and the file paths
    :raises ValueError: for settings that cannot run, before anything is trained
    :raises ImportError: when rliable (``pip install 'sb3-flow[compare]'``) is missing
    :raises RuntimeError: when no job of the comparison finished
    """
    check_demo_config(config)
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = DemoResult(config)
    start = time.perf_counter()

    log(f"[1/5] modes: Gaussian BC and Flow BC on bimodal demonstrations (+-{BIMODAL_MODE}), {config.modes_steps} steps each")
    result.modes = _timed(lambda: modes_panel(config.modes_steps, config.seed), result.seconds, "modes")
    base_path, expert_return, notes = _pipeline(config, out_dir, result, progress_bar, log)

    log(
        f"[5/5] comparison: {', '.join(config.methods)} from the base, seeds {list(config.seeds)}, {config.budget} env "
        f"steps each, scored on {config.eval_starts} fixed starts, {config.n_workers} worker(s)"
    )
    compare_dir = out_dir / "compare"
    settings = compare_settings(config, base_path, expert_return)
    report = _timed(
        lambda: compare(settings, compare_dir, workers=config.n_workers, reps=config.reps, log=log), result.seconds, "compare"
    )
    if report is None:
        raise RuntimeError(f"no job of the comparison finished: see the tracebacks in {compare_dir / 'jobs'}")
    result.files["compare_report"] = report.files["report"]
    _read_report(result, report.summary, notes)
    result.seconds["total"] = time.perf_counter() - start

    result.files["results"] = str(out_dir / "results.json")
    result.files["plot"] = str(out_dir / "demo.png")
    _write_results(result, report.summary)
    plot_demo(result, result.files["plot"])
    return result


def _pipeline(
    config: DemoConfig, out_dir: Path, result: DemoResult, progress_bar: bool, log: Callable[[str], None]
) -> tuple[str, float, dict[str, str]]:
    """
    The expert, its demonstrations and the Flow BC base (saved into ``out_dir``), timed into ``result.seconds``.

    :return: the base's zip, the expert's mean return on the comparison's starts, and the notes of the table's
        reference rows
    """
    expert_note = _expert_note(config)
    log(f"[2/5] expert: {expert_note} on {config.env_id}")
    expert = _timed(lambda: get_expert(config, progress_bar), result.seconds, "expert")
    # On the starts the comparison scores the agents and the base on: the score's 1.
    expert_return = float(returns_on_starts(expert, config.env_id, config.eval_starts, first_seed=EVAL_FIRST_SEED).mean())

    log(f"[3/5] demonstrations: {config.n_episodes} episodes, action noise {config.action_noise}")
    demos = _timed(
        lambda: collect_demonstrations(
            config.env_id, expert, config.n_episodes, config.action_noise, seed=config.seed, progress_bar=progress_bar
        ),
        result.seconds,
        "demonstrations",
    )
    result.files["demonstrations"] = str(demos.save(out_dir / "demos.npz"))

    log(f"[4/5] Flow BC base: {config.bc_steps} gradient steps")
    base = _timed(
        lambda: pretrain(
            FlowBC, config.env_id, demos, config.bc_steps, config.bc_learning_rate, config.seed, progress_bar=progress_bar
        ),
        result.seconds,
        "base",
    )
    result.files["base"] = str(out_dir / "flow_bc.zip")
    base.save(result.files["base"])
    transitions = demos.summary()["n_transitions"]
    base_note = f"{config.bc_steps} gradient steps on {config.n_episodes} noisy episodes ({transitions} steps)"
    return result.files["base"], expert_return, {"expert": expert_note, "base": base_note}


def _read_report(result: DemoResult, summary: dict[str, Any], notes: dict[str, str]) -> None:
    """The table's rows, the curves and each seed's final score, from the comparison's report."""
    config = result.config
    base, expert = summary["references"]["base_return"], summary["references"]["expert_return"]
    result.normalized = summary["normalized"]
    result.failed = [f"{failure['method']} seed {failure['seed']}" for failure in summary["failed"]]
    finished = {name: summary["methods"][name] for name in config.methods if name in summary["methods"]}
    result.curves = {
        name: tuple(np.asarray(method["curve"][key]) for key in ("steps", "iqm", "lower", "upper"))
        for name, method in finished.items()
    }
    result.seed_scores = {name: normalize(method["final_returns"], base, expert).tolist() for name, method in finished.items()}
    # The references score exactly 0 and 1 when normalized; otherwise the table shows raw returns throughout.
    expert_score, base_score = (1.0, 0.0) if result.normalized else (expert, base)
    result.rows = [
        DemoRow("expert", expert_score, expert_score, expert_score, expert, result.seconds["expert"], notes["expert"]),
        DemoRow("Flow BC base", base_score, base_score, base_score, base, result.seconds["base"], notes["base"]),
    ]
    result.rows += [_method_row(config, name, method) for name, method in finished.items()]


def _expert_note(config: DemoConfig) -> str:
    """What the expert is, and for a trained one whether this run trains it or loads it from the cache."""
    algo = config.expert.lower()
    if algo not in EXPERT_ALGOS:
        return config.expert
    cached = expert_cache_path(config.env_id, algo, config.expert_steps, config.seed, config.cache_dir).is_file()
    return f"{algo}, {config.expert_steps} steps ({'cached' if cached else 'trained now, then cached'})"


def _method_row(config: DemoConfig, name: str, method: dict[str, Any]) -> DemoRow:
    """A method's row: the IQM over seeds with its 95% interval, the mean raw return, the mean wall time per seed."""
    iqm = method["iqm"]
    seeds = len(method["seeds"])
    note = f"{seeds} seed{'s' if seeds != 1 else ''} x {config.budget} env steps"
    if seeds < len(config.seeds):
        note += f" ({len(config.seeds) - seeds} failed or missing)"
    mean_return, wall = float(np.mean(method["final_returns"])), float(np.mean(method["wall_seconds"]))
    return DemoRow(DEMO_METHODS[name][0], iqm[0], iqm[1], iqm[2], mean_return, wall, note)


def _write_results(result: DemoResult, summary: dict[str, Any]) -> None:
    """``results.json``: the settings, the references, the modes panel, the table, per-seed scores and the curves."""
    config = result.config
    references = summary["references"]
    payload = {
        "config": asdict(config),
        "normalized": result.normalized,
        "references": {
            "base_return": references["base_return"],
            "expert_return": references["expert_return"],
            "eval_starts": config.eval_starts,
            "first_start_seed": EVAL_FIRST_SEED,
        },
        "modes": result.modes.summary() if result.modes is not None else None,
        "rows": [asdict(row) for row in result.rows],
        "methods": {
            name: {
                "label": DEMO_METHODS[name][0],
                "seeds": summary["methods"][name]["seeds"],
                "final_returns": summary["methods"][name]["final_returns"],
                "final_scores": result.seed_scores[name],
                "iqm": summary["methods"][name]["iqm"],
                "mean": summary["methods"][name]["mean"],
            }
            for name in config.methods
            if name in summary["methods"]
        },
        "curves": {
            name: dict(zip(("steps", "iqm", "lower", "upper"), (np.asarray(part).tolist() for part in curve), strict=True))
            for name, curve in result.curves.items()
        },
        "failed": summary["failed"],
        "seconds": result.seconds,
        "files": result.files,
    }
    Path(result.files["results"]).write_text(json.dumps(payload, indent=2), encoding="utf-8")


def format_modes(modes: ModesResult) -> str:
    """The first panel in two lines: where each policy's sampled actions lie."""
    lines = []
    for name, samples in (("Flow BC", modes.flow_samples), ("Gaussian BC", modes.gaussian_samples)):
        share = modes.fractions(samples)
        lines.append(
            f"{name + ' samples:':<21} {share['near_plus']:4.0%} near +{modes.mode}, {share['near_minus']:4.0%} near "
            f"-{modes.mode}, {share['near_zero']:4.0%} near 0 (the mean no demonstrator took)"
        )
    lines.append(f"{'Gaussian BC mean:':<21} {modes.gaussian_mean:+.2f}")
    return "\n".join(lines)


def format_table(rows: list[DemoRow], normalized: bool = True) -> str:
    """
    The rows as a fixed-width text table.

    :param rows: the demo's rows
    :param normalized: the scores are normalized (base 0, expert 1), not raw returns
    """
    digits = 2 if normalized else 1
    score_name = "normalized score [95% CI]" if normalized else "return [95% CI]"
    header = f"{'method':<32} {score_name:>26} {'return':>9} {'wall s':>7}  notes"
    lines = [header, "-" * len(header)]
    for row in rows:
        score = f"{row.score:.{digits}f}"
        if row.score_low != row.score_high:
            score += f" [{row.score_low:.{digits}f}, {row.score_high:.{digits}f}]"
        lines.append(f"{row.name:<32} {score:>26} {row.mean_return:9.1f} {row.wall_seconds:7.1f}  {row.notes}")
    return "\n".join(lines)


def plot_demo(result: DemoResult, path: str) -> None:
    """
    The demo's figure, as a PNG: the modes, the learning curves over seeds, the final scores with their intervals.

    :param result: what :func:`run_demo` gathered
    :param path: the PNG
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(17, 4.6), gridspec_kw={"width_ratios": [1, 1.2, 1]})
    colors = {name: plt.get_cmap("tab10")(index) for index, name in enumerate(result.config.methods)}
    if result.modes is not None:
        _plot_modes(axes[0], result.modes)
    normalized = result.normalized
    label = "normalized score (0: base, 1: expert)" if normalized else "return"
    _plot_curves(axes[1], result.curves, colors, label, normalized)
    _plot_scores(axes[2], result, colors, label, normalized)
    figure.suptitle(f"sb3-flow demo on {result.config.env_id}", fontsize=12)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _plot_modes(axes: Any, modes: ModesResult) -> None:
    """Histograms of the two policies' sampled actions over the demonstrations' two actions, and Gaussian BC's mean."""
    # The demonstrations' actions are two exact values: drawn as bands, since as histogram bars they would be spikes
    # that flatten everything else.
    for sign in (-1.0, 1.0):
        axes.axvspan(sign * modes.mode - 0.03, sign * modes.mode + 0.03, color="0.75", zorder=0,
                     label="demonstrations (half at each)" if sign > 0 else None)  # fmt: skip
    bins = np.linspace(-1.0, 1.0, 41)
    axes.hist(modes.gaussian_samples, bins=bins, density=True, histtype="step", linewidth=2, color="tab:orange",
              label="Gaussian BC samples")  # fmt: skip
    axes.hist(modes.flow_samples, bins=bins, density=True, histtype="step", linewidth=2, color="tab:blue",
              label="Flow BC samples")  # fmt: skip
    axes.axvline(modes.gaussian_mean, color="tab:orange", linestyle="--", linewidth=1.5, label="Gaussian BC mean action")
    axes.set_xlim(-1.05, 1.05)
    axes.set_ylim(0, axes.get_ylim()[1] * 1.35)  # room for the legend above the histograms
    axes.set_xlabel("action")
    axes.set_ylabel("density of sampled actions")
    axes.set_title("Multimodal demonstrations: Gaussian BC averages\nthe two modes, Flow BC keeps both", fontsize=10)
    axes.legend(fontsize=8, loc="upper center", ncol=2)


def _plot_curves(
    axes: Any, curves: dict[str, tuple[np.ndarray, ...]], colors: dict[str, Any], label: str, normalized: bool
) -> None:
    """IQM over seeds at each evaluation, with its 95% band, per method."""
    for name, (steps, iqm, lower, upper) in curves.items():
        axes.plot(steps, iqm, marker="o", markersize=3, color=colors[name], label=DEMO_METHODS[name][0])
        axes.fill_between(steps, lower, upper, color=colors[name], alpha=0.2)
    _reference_lines(axes, normalized, horizontal=True)
    axes.set_xlabel("environment steps")
    axes.set_ylabel(label)
    axes.set_title("Learning curves from the Flow BC base\n(IQM over seeds, 95% bootstrap band)", fontsize=10)
    axes.legend(fontsize=8)


def _plot_scores(axes: Any, result: DemoResult, colors: dict[str, Any], label: str, normalized: bool) -> None:
    """Each method's final score: its IQM with the 95% interval over seeds."""
    methods = [name for name in result.config.methods if name in result.curves]
    labels = {DEMO_METHODS[name][0]: name for name in methods}
    rows = [row for row in result.rows if row.name in labels]
    for position, row in enumerate(rows):
        name = labels[row.name]
        error = [[row.score - row.score_low], [row.score_high - row.score]]
        axes.errorbar(row.score, position, xerr=error, fmt="o", color=colors[name], capsize=5, markersize=8)
        # each seed's own score, just below: the interval is over these
        seeds = result.seed_scores.get(name, [])
        axes.scatter(seeds, [position + 0.18] * len(seeds), marker="|", s=80, color=colors[name], alpha=0.7)
    _reference_lines(axes, normalized, horizontal=False)
    axes.set_yticks(range(len(rows)), [row.name for row in rows])
    axes.set_ylim(-0.7, len(rows) - 0.3)
    axes.invert_yaxis()
    axes.set_xlabel(f"final {label}")
    seeds = len(result.config.seeds)
    axes.set_title(f"After {result.config.budget} env steps\n(IQM, 95% CI over {seeds} seeds; ticks: each seed)", fontsize=10)


def _reference_lines(axes: Any, normalized: bool, horizontal: bool) -> None:
    """Dashed lines at the base (0) and the expert (1)."""
    if not normalized:
        return
    for value, text in ((0.0, "base"), (1.0, "expert")):
        if horizontal:
            axes.axhline(value, linestyle="--", color="gray", linewidth=1)
            axes.annotate(f" {text}", (0, value), xycoords=("axes fraction", "data"), va="bottom", fontsize=8, color="gray")
        else:
            axes.axvline(value, linestyle="--", color="gray", linewidth=1)
            axes.annotate(f" {text}", (value, 0.01), xycoords=("data", "axes fraction"), va="bottom", fontsize=8, color="gray")
