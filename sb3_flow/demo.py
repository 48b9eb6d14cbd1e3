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

import gymnasium as gym
import numpy as np
from stable_baselines3 import SAC
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

from sb3_flow.bc import FlowBC, GaussianBC
from sb3_flow.common.demonstrations import Demonstrations, collect_demonstrations
from sb3_flow.common.experts import load_expert, pendulum_swing_up, train_expert
from sb3_flow.common.utils import set_torch_threads
from sb3_flow.dsrl import DSRLNA
from sb3_flow.fpo import FlowPPO
from sb3_flow.reinflow import ReinFlow
from sb3_flow.wrappers import VecNoiseActionWrapper, VecResidualActionWrapper, zero_init_actor


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

    env_id: str = "Pendulum-v1"
    expert: str = "sac"
    expert_algo: str = "sac"
    expert_steps: int = 20_000
    n_episodes: int = 50
    action_noise: float = 0.3
    bc_steps: int = 5_000
    bc_learning_rate: float = 1e-3
    finetune_steps: int = 40_960
    steering_steps: int = 2_000
    n_eval_episodes: int = 20
    n_workers: int = 2
    seed: int = 0
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
    if config.expert.lower() in ("sac", "ppo", "td3"):
        return train_expert(
            config.env_id, config.expert, config.expert_steps, config.seed, config.cache_dir, progress_bar=progress_bar
        )
    return load_expert(config.expert, config.expert_algo)


def _evaluate(policy_or_model: Any, config: DemoConfig) -> tuple[float, float]:
    env = Monitor(gym.make(config.env_id))
    env.reset(seed=config.seed + 10_000)  # evaluation episodes differ from the demonstrations' episodes
    if callable(policy_or_model) and not hasattr(policy_or_model, "predict"):
        returns = []
        for episode in range(config.n_eval_episodes):
            obs, _ = env.reset(seed=config.seed + 10_000 + episode)
            done, total = False, 0.0
            while not done:
                obs, reward, terminated, truncated, _ = env.step(policy_or_model(obs))
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
        return float(np.mean(returns)), float(np.std(returns))
    mean, std = evaluate_policy(policy_or_model, env, n_eval_episodes=config.n_eval_episodes, deterministic=True)
    return float(mean), float(std)


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
    if isinstance(config.n_workers, bool) or not isinstance(config.n_workers, int) or config.n_workers < 1:
        raise ValueError(f"n_workers must be a positive integer, got {config.n_workers!r}")
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


def _pretrain(algorithm: type, demos: Demonstrations, config: DemoConfig, progress_bar: bool) -> Any:
    model = algorithm("MlpPolicy", config.env_id, demos, learning_rate=config.bc_learning_rate, seed=config.seed, device="cpu")
    return model.learn(config.bc_steps, progress_bar=progress_bar)


@dataclass
class Tuned:
    """A fine-tuned agent and the environment to evaluate it in (wrapped like its training environment)."""

    model: Any
    eval_env: Any


def _eval_env(config: DemoConfig, wrap: Callable[[Any], Any] | None = None) -> Any:
    env = make_vec_env(config.env_id, n_envs=1, seed=config.seed + 10_000)
    return env if wrap is None else wrap(env)


def finetune_flow_ppo(base: Any, config: DemoConfig, steps: int, progress_bar: bool) -> Tuned:
    """FlowPPO from the Flow BC base with the settings of ``benchmarks/fpo_finetune_pendulum.py``."""
    env = make_vec_env(config.env_id, n_envs=8, seed=config.seed)
    model = FlowPPO(
        "MlpPolicy", env, base_policy=base, n_steps=256, batch_size=256, n_epochs=10, gamma=0.9, learning_rate=3e-5,
        critic_learning_rate=1e-3, critic_warmup_rollouts=3, clip_range=0.02, ratio_mode="per_sample", seed=config.seed,
        device="cpu",
    )  # fmt: skip
    return Tuned(model.learn(steps, progress_bar=progress_bar), _eval_env(config))


# ReinFlow's Pendulum fine-tuning settings, shared with benchmarks/reinflow_pendulum.py and zoo_configs/reinflow.yml.
REINFLOW_PENDULUM_FINETUNE: dict[str, Any] = {
    "n_steps": 256,
    "batch_size": 256,
    "n_epochs": 10,
    "gamma": 0.9,
    "gae_lambda": 0.95,
    "learning_rate": 1e-4,
    "critic_learning_rate": 1e-3,
    "critic_warmup_rollouts": 3,
    "clip_range": 0.01,
    "ent_coef": 0.01,
    "min_std": 0.1,
    "max_std": 0.3,
    "n_flow_steps": 4,
}


def finetune_reinflow(base: Any, config: DemoConfig, steps: int, progress_bar: bool) -> Tuned:
    """ReinFlow (learned noise) from the Flow BC base with :data:`REINFLOW_PENDULUM_FINETUNE`."""
    env = make_vec_env(config.env_id, n_envs=8, seed=config.seed)
    model = ReinFlow("MlpPolicy", env, base_policy=base, seed=config.seed, device="cpu", **REINFLOW_PENDULUM_FINETUNE)
    return Tuned(model.learn(steps, progress_bar=progress_bar), _eval_env(config))


def steer_dsrl(base: Any, config: DemoConfig, steps: int, progress_bar: bool) -> Tuned:
    """SAC in the Flow BC base's noise space (DSRL), starting at the base's zero-noise action."""
    wrap = lambda env: VecNoiseActionWrapper(env, base.policy, noise_bound=1.5)  # noqa: E731
    model = SAC("MlpPolicy", wrap(make_vec_env(config.env_id, seed=config.seed)), learning_rate=1e-3, seed=config.seed)
    zero_init_actor(model)
    return Tuned(model.learn(steps, progress_bar=progress_bar), _eval_env(config, wrap))


def steer_dsrl_na(base: Any, config: DemoConfig, steps: int, progress_bar: bool) -> Tuned:
    """DSRL-NA around the Flow BC base."""
    model = DSRLNA("MlpPolicy", config.env_id, base_policy=base.policy, learning_rate=1e-3, seed=config.seed, device="cpu")
    return Tuned(model.learn(steps, progress_bar=progress_bar), _eval_env(config))


def steer_residual(base: Any, config: DemoConfig, steps: int, progress_bar: bool) -> Tuned:
    """Residual SAC around the Flow BC base, starting at exactly zero correction."""
    wrap = lambda env: VecResidualActionWrapper(env, base.policy, append_base_action=True)  # noqa: E731
    model = SAC("MlpPolicy", wrap(make_vec_env(config.env_id, seed=config.seed)), learning_rate=1e-3, seed=config.seed)
    zero_init_actor(model)
    return Tuned(model.learn(steps, progress_bar=progress_bar), _eval_env(config, wrap))


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
