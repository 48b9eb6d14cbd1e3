"""The README's main job: expert -> demonstrations -> behaviour cloning -> evaluation, as a table and a plot."""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3 import SAC
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_flow.bc import FlowBC, GaussianBC
from sb3_flow.common.demonstrations import collect_demonstrations
from sb3_flow.common.utils import check_positive_int, set_torch_threads
from sb3_flow.dsrl import DSRLNA
from sb3_flow.experiments import (
    DSRL_NOISE_BOUND,
    EXPERT_ALGOS,
    FLOW_PPO_PENDULUM_FINETUNE,
    PENDULUM_PIPELINE,
    REINFLOW_PENDULUM_FINETUNE,
    STEERING_SAC,
    evaluate_episodes,
    finetune_model,
    load_expert,
    pendulum_swing_up,
    pretrain,
    steering_wrapper,
    train_expert,
)
from sb3_flow.fpo import FlowPPO
from sb3_flow.reinflow import ReinFlow
from sb3_flow.wrappers import zero_init_actor


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
    :param bc_steps: gradient steps of each behaviour-cloning run
    :param bc_learning_rate: learning rate of each behaviour-cloning run
    :param finetune_steps: environment steps of each on-policy fine-tuning method (0: skip those rows)
    :param steering_steps: environment steps of each steering method, SAC-based (0: skip those rows)
    :param n_eval_episodes: evaluation episodes per row
    :param n_workers: processes that run the fine-tuning rows, which are independent once Flow BC is trained
        (1: one after the other in this process; each worker uses one torch thread). The workers are spawned, so a
        script that calls :func:`run_demo` with more than one must do it under ``if __name__ == "__main__":``
    :param seed: random seed
    :param out_dir: where the demonstrations, models, results.json and demo.png are written
    :param cache_dir: expert cache folder (None: the default)
    """

    env_id: str = PENDULUM_PIPELINE.env_id
    expert: str = "sac"
    expert_algo: str = "sac"
    expert_steps: int = PENDULUM_PIPELINE.expert_steps
    n_episodes: int = PENDULUM_PIPELINE.n_episodes
    action_noise: float = PENDULUM_PIPELINE.action_noise
    bc_steps: int = PENDULUM_PIPELINE.bc_steps
    bc_learning_rate: float = PENDULUM_PIPELINE.bc_learning_rate
    finetune_steps: int = 40_960
    steering_steps: int = 2_000
    n_eval_episodes: int = 20
    n_workers: int = 2
    seed: int = PENDULUM_PIPELINE.seed
    out_dir: str = "demo_output"
    cache_dir: str | None = None


@dataclass
class DemoRow:
    """One line of the demo table."""

    name: str
    mean_return: float
    std_return: float
    wall_seconds: float
    notes: str = ""


@dataclass
class DemoResult:
    """The rows, in order, and where the files went."""

    config: DemoConfig
    rows: list[DemoRow] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)


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


def _evaluate(policy_or_model: Any, config: DemoConfig) -> tuple[float, float]:
    # evaluation episodes differ from the demonstrations' episodes
    return evaluate_episodes(policy_or_model, config.env_id, config.n_eval_episodes, seed=config.seed + 10_000)


def _timed(step: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = step()
    return value, time.perf_counter() - start


def run_demo(config: DemoConfig, progress_bar: bool = True, log: Callable[[str], None] = print) -> DemoResult:
    """
    Run the whole pipeline and write ``results.json`` and ``demo.png`` into ``config.out_dir``.

    :param config: the settings
    :param progress_bar: show progress bars
    :param log: where progress lines go
    :return: the table rows and file paths
    """
    for name in ("expert_steps", "n_episodes", "bc_steps", "n_eval_episodes", "n_workers"):
        check_positive_int(getattr(config, name), name)
    for name in ("finetune_steps", "steering_steps"):
        check_positive_int(getattr(config, name), name, minimum=0)
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = DemoResult(config)

    log(f"[1/4] expert: {config.expert} on {config.env_id}")
    expert, seconds = _timed(lambda: get_expert(config, progress_bar))
    mean, std = _evaluate(expert, config)
    result.rows.append(DemoRow("expert", mean, std, seconds, f"{config.expert}"))

    log(f"[2/4] demonstrations: {config.n_episodes} episodes, action noise {config.action_noise}")
    demos, seconds = _timed(
        lambda: collect_demonstrations(
            config.env_id, expert, config.n_episodes, config.action_noise, seed=config.seed, progress_bar=progress_bar
        )
    )
    demos_path = out_dir / "demos.npz"
    demos.save(demos_path)
    result.files["demonstrations"] = str(demos_path)
    summary = demos.summary()
    result.rows.append(
        DemoRow("demonstrations", summary["mean_return"], summary["std_return"], seconds, f"{summary['n_transitions']} steps")
    )

    pretrained = {}
    for index, (name, algorithm) in enumerate((("Gaussian BC", GaussianBC), ("Flow BC", FlowBC)), start=3):
        log(f"[{index}/4] {name}: {config.bc_steps} gradient steps")
        model, seconds = _timed(lambda algorithm=algorithm: _pretrain(algorithm, demos, config, progress_bar))
        path = out_dir / f"{algorithm.__name__.lower()}.zip"
        model.save(path)
        result.files[name] = str(path)
        pretrained[name] = model
        mean, std = _evaluate(model.policy, config)
        result.rows.append(DemoRow(name, mean, std, seconds, f"{config.bc_steps} gradient steps"))

    jobs = [(name, getattr(config, budget)) for name, (_, budget) in FINETUNERS.items() if getattr(config, budget) > 0]
    for name, steps in jobs:
        log(f"[fine-tune] {name}: {steps} environment steps from Flow BC")
    if config.n_workers > 1 and len(jobs) > 1:
        finished = _finetune_in_workers(jobs, config, result.files["Flow BC"])
    else:
        finished = [_finetune_row(name, steps, pretrained["Flow BC"], config, progress_bar) for name, steps in jobs]
    for row, path in finished:
        result.rows.append(row)
        result.files[row.name] = path

    result.files["results"] = str(out_dir / "results.json")
    result.files["plot"] = str(out_dir / "demo.png")
    Path(result.files["results"]).write_text(
        json.dumps({"config": asdict(config), "rows": [asdict(row) for row in result.rows]}, indent=2)
    )
    plot_rows(result.rows, result.files["plot"], f"sb3-flow demo on {config.env_id}")
    return result


def _finetune_row(name: str, steps: int, flow_bc: Any, config: DemoConfig, progress_bar: bool) -> tuple[DemoRow, str]:
    """Run one fine-tuning row: train from the Flow BC base, save, evaluate."""
    finetune, _ = FINETUNERS[name]
    tuned, seconds = _timed(lambda: finetune(flow_bc, config, steps, progress_bar))
    path = Path(config.out_dir) / f"{name.split()[0].lower()}.zip"
    tuned.model.save(path)
    mean, std = evaluate_policy(tuned.model, tuned.eval_env, n_eval_episodes=config.n_eval_episodes, deterministic=True)
    return DemoRow(name, float(mean), float(std), seconds, f"{steps} env steps"), str(path)


def _finetune_worker(name: str, steps: int, config: DemoConfig, flow_bc_path: str) -> tuple[DemoRow, str]:
    # A fresh (spawned) process: one torch thread, the base loaded from the file the main process saved.
    set_torch_threads(1)
    flow_bc = FlowBC.load(flow_bc_path, device="cpu")
    return _finetune_row(name, steps, flow_bc, config, progress_bar=False)


def _finetune_in_workers(jobs: list[tuple[str, int]], config: DemoConfig, flow_bc_path: str) -> list[tuple[DemoRow, str]]:
    """The fine-tuning rows in ``config.n_workers`` processes; rows come back in the order of ``jobs``."""
    # spawn, not fork: a forked copy of a process that already ran torch can hang in its thread pool.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=config.n_workers, mp_context=context) as pool:
        futures = [pool.submit(_finetune_worker, name, steps, config, flow_bc_path) for name, steps in jobs]
        return [future.result() for future in futures]


def _pretrain(algorithm: type, demos: Any, config: DemoConfig, progress_bar: bool) -> Any:
    return pretrain(
        algorithm, config.env_id, demos, config.bc_steps, config.bc_learning_rate, config.seed, progress_bar=progress_bar
    )


@dataclass
class Tuned:
    """A fine-tuned agent and the environment to evaluate it in (wrapped like its training environment)."""

    model: Any
    eval_env: Any


def _eval_env(config: DemoConfig, wrap: Callable[[Any], Any] | None = None) -> Any:
    env = make_vec_env(config.env_id, n_envs=1, seed=config.seed + 10_000)
    return env if wrap is None else wrap(env)


def finetune_flow_ppo(base: Any, config: DemoConfig, steps: int, progress_bar: bool) -> Tuned:
    """FlowPPO from the Flow BC base with :data:`~sb3_flow.experiments.FLOW_PPO_PENDULUM_FINETUNE`."""
    model = finetune_model(FlowPPO, config.env_id, base, FLOW_PPO_PENDULUM_FINETUNE, config.seed)
    return Tuned(model.learn(steps, progress_bar=progress_bar), _eval_env(config))


def finetune_reinflow(base: Any, config: DemoConfig, steps: int, progress_bar: bool) -> Tuned:
    """ReinFlow (learned noise) from the Flow BC base with :data:`~sb3_flow.experiments.REINFLOW_PENDULUM_FINETUNE`."""
    model = finetune_model(ReinFlow, config.env_id, base, REINFLOW_PENDULUM_FINETUNE, config.seed)
    return Tuned(model.learn(steps, progress_bar=progress_bar), _eval_env(config))


def _steer_with_sac(method: str, base: Any, config: DemoConfig, steps: int, progress_bar: bool) -> Tuned:
    """SAC through a steering wrapper around the Flow BC base, its actor starting at the base (zero correction)."""
    wrap = steering_wrapper(method, base.policy)
    model = SAC("MlpPolicy", wrap(make_vec_env(config.env_id, seed=config.seed)), seed=config.seed, **STEERING_SAC)
    zero_init_actor(model)
    return Tuned(model.learn(steps, progress_bar=progress_bar), _eval_env(config, wrap))


def steer_dsrl(base: Any, config: DemoConfig, steps: int, progress_bar: bool) -> Tuned:
    """SAC in the Flow BC base's noise space (DSRL), starting at the base's zero-noise action."""
    return _steer_with_sac("dsrl", base, config, steps, progress_bar)


def steer_dsrl_na(base: Any, config: DemoConfig, steps: int, progress_bar: bool) -> Tuned:
    """DSRL-NA around the Flow BC base."""
    model = DSRLNA(
        "MlpPolicy", config.env_id, base_policy=base.policy, noise_bound=DSRL_NOISE_BOUND, seed=config.seed, device="cpu",
        **STEERING_SAC,
    )  # fmt: skip
    return Tuned(model.learn(steps, progress_bar=progress_bar), _eval_env(config))


def steer_residual(base: Any, config: DemoConfig, steps: int, progress_bar: bool) -> Tuned:
    """Residual SAC around the Flow BC base, starting at exactly zero correction."""
    return _steer_with_sac("residual", base, config, steps, progress_bar)


# Fine-tuning rows of the demo, in order, with the config field that holds their step budget; later methods add
# themselves here.
FINETUNERS: dict[str, tuple[Callable[[Any, DemoConfig, int, bool], Tuned], str]] = {
    "FlowPPO fine-tune": (finetune_flow_ppo, "finetune_steps"),
    "ReinFlow fine-tune": (finetune_reinflow, "finetune_steps"),
    "DSRL (SAC)": (steer_dsrl, "steering_steps"),
    "DSRL-NA": (steer_dsrl_na, "steering_steps"),
    "Residual SAC": (steer_residual, "steering_steps"),
}


def format_table(rows: list[DemoRow]) -> str:
    """The rows as a fixed-width text table."""
    header = f"{'method':<22} {'return (mean ± std)':>22} {'wall s':>8}  notes"
    lines = [header, "-" * len(header)]
    for row in rows:
        score = f"{row.mean_return:9.1f} ± {row.std_return:7.1f}"
        lines.append(f"{row.name:<22} {score:>22} {row.wall_seconds:8.1f}  {row.notes}")
    return "\n".join(lines)


def plot_rows(rows: list[DemoRow], path: str, title: str) -> None:
    """Bar chart of the rows' returns with their standard deviations, written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(1.6 * len(rows) + 2, 4))
    positions = np.arange(len(rows))
    axes.bar(
        positions,
        [row.mean_return for row in rows],
        yerr=[row.std_return for row in rows],
        capsize=4,
        color=["#555555", "#999999"] + ["#1f77b4"] * (len(rows) - 2),
    )
    axes.set_xticks(positions, [row.name for row in rows], rotation=20)
    axes.set_ylabel("episode return")
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
