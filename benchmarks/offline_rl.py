"""
Offline RL from locally made datasets: sb3-flow's FQL, FBRAC (backprop through the flow), FlowBC and GaussianBC
against d3rlpy's IQL, TD3+BC and ReBRAC, on the same dataset and the same number of gradient steps.

Tasks:
- ``pendulum``: Pendulum-v1; the scripted swing-up controller (``pendulum_swing_up``), ``--episodes`` episodes with
  Gaussian action noise ``--action-noise``, seed 0. Score: deterministic return on the same 50 fixed initial states
  for every method, the noiseless expert and a uniform random policy, normalized as
  ``100 * (R - R_random) / (R_expert - R_random)`` (D4RL's convention). Target (issue 12): FQL >= 90.
- ``cube-single``: OGBench ``cube-single-play-singletask-task2-v0``; play data generated here from OGBench's scripted
  plan oracle (``collect_ogbench_dataset``, ``--episodes`` episodes of 1000 steps, seed 0, cached in ``--cache``).
  Score: success rate (%) over 50 evaluation episodes with fixed seeds. Target: FQL above FlowBC and every d3rlpy
  baseline. ``--cube-data mixed`` adds ``--task-episodes`` episodes of the Markov oracle solving task 2 itself, with
  OGBench's "noisy" settings (``collect_ogbench_task_dataset``: noise 0.1, random actions 10%, seed 0): a dataset that is
  mostly play (targets at random) with a few task-directed episodes a critic must find, learnable at a CPU budget.

Every method: ``--hidden`` hidden layers, batch 256, learning rate 3e-4, ``--steps`` gradient steps.
d3rlpy is a benchmark-only dependency (its own virtual environment: it pins gymnasium 1.0).

    python -m benchmarks.offline_rl --task pendulum [--steps 20000] [--seeds 0 1 2] [--methods FQL FBRAC ...]
    python -m benchmarks.offline_rl --task pendulum --pendulum-data mixed --methods IQL TD3+BC   # the mixed data
    python -m benchmarks.offline_rl --task cube-single --episodes 100 [--steps 50000] [--hidden 512 512 512 512]
    python -m benchmarks.offline_rl --task cube-single --cube-data mixed --episodes 100 --task-episodes 50
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th

from benchmarks.common import mean_std, write_json
from sb3_flow import FBRAC, FQL, Demonstrations, FlowBC, GaussianBC, collect_demonstrations, set_torch_threads
from sb3_flow.common.ogbench import (
    collect_ogbench_dataset,
    collect_ogbench_task_dataset,
    make_ogbench_env,
    ogbench_success_rate,
)
from sb3_flow.experiments import pendulum_swing_up, returns_on_starts

CUBE_TASK = "cube-single-play-singletask-task2-v0"
# Per task: FQL's alpha (cube: the authors' 300; Pendulum: the best of 0.3, 1, 3, 10 from their recommended sweep, with
# normalize_q_loss on, seed 0, 5000 steps; see docs/benchmarks.md) and FBRAC's (the same BC weight, untuned).
FQL_SETTINGS: dict[str, dict[str, Any]] = {
    "pendulum": {"alpha": 10.0, "normalize_q_loss": True},
    "cube-single": {"alpha": 300.0, "normalize_q_loss": False},
}
FBRAC_SETTINGS: dict[str, dict[str, Any]] = {
    "pendulum": {"alpha": 10.0, "normalize_q_loss": True},
    "cube-single": {"alpha": 1.0, "normalize_q_loss": True},
}
D3RLPY_METHODS = ("IQL", "TD3+BC", "ReBRAC")
ALL_METHODS = ("FQL", "FBRAC", "FlowBC", "GaussianBC", *D3RLPY_METHODS)


class RandomPolicy:
    """Uniform random actions, for the normalized score's zero."""

    def __init__(self, action_space: Any, seed: int = 0):
        self.action_space = action_space
        self.rng = np.random.default_rng(seed)

    def predict(self, observation: np.ndarray, state: Any = None, episode_start: Any = None, deterministic: bool = True):
        low, high = self.action_space.low, self.action_space.high
        return self.rng.uniform(low, high, (len(observation), *low.shape)).astype(np.float32), state


class ScriptedPolicy:
    """The scripted expert as an object with ``predict``, batched."""

    def predict(self, observation: np.ndarray, state: Any = None, episode_start: Any = None, deterministic: bool = True):
        return np.stack([pendulum_swing_up(obs) for obs in observation]).astype(np.float32), state


class D3rlpyPolicy:
    """A trained d3rlpy algorithm behind SB3's ``predict``."""

    def __init__(self, algorithm: Any):
        self.algorithm = algorithm

    def predict(self, observation: np.ndarray, state: Any = None, episode_start: Any = None, deterministic: bool = True):
        observation = np.asarray(observation, dtype=np.float32)
        if observation.ndim == 1:  # one observation, as a single-env rollout passes it
            return self.algorithm.predict(observation[None])[0], state
        return self.algorithm.predict(observation), state


class Task:
    """A dataset, an environment to build the policies for, and a score."""

    def __init__(self, args: argparse.Namespace):
        self.name = args.task
        if self.name == "pendulum":
            self.env = gym.make("Pendulum-v1")
            if args.pendulum_data == "mixed":  # benchmarks.critic_sampling's mostly-random dataset
                from benchmarks.critic_sampling import make_dataset

                self.demos = make_dataset("mixed")
            else:
                self.demos = collect_demonstrations(
                    "Pendulum-v1", pendulum_swing_up, args.episodes, action_noise=args.action_noise, seed=0
                )
            self.expert = float(returns_on_starts(ScriptedPolicy(), "Pendulum-v1").mean())
            self.random = float(returns_on_starts(RandomPolicy(self.env.action_space), "Pendulum-v1").mean())
            print(f"expert (noiseless) {self.expert:.1f}, random {self.random:.1f} on the 50 evaluation starts")
        else:
            self.env = make_ogbench_env(CUBE_TASK)
            self.demos = cube_dataset(args.cache, args.episodes, args.task_episodes if args.cube_data == "mixed" else 0)
        print(f"dataset: {len(self.demos)} transitions, {self.demos.n_episodes} episodes")

    def score(self, policy: Any) -> tuple[float, float]:
        """(raw value, score): the mean return and its normalized score, or the success rate twice (%)."""
        if self.name == "pendulum":
            value = float(returns_on_starts(policy, "Pendulum-v1").mean())
            return value, 100.0 * (value - self.random) / (self.expert - self.random)
        success = 100.0 * ogbench_success_rate(policy, CUBE_TASK, n_episodes=50, seed=1000)
        return success, success


def cube_dataset(cache: str, play_episodes: int, task_episodes: int = 0) -> Demonstrations:
    """``play_episodes`` of cube-single play data (cached), then ``task_episodes`` task-directed oracle episodes."""
    path = Path(cache) / f"cube_single_play_{play_episodes}.npz"
    if path.is_file():
        demos = Demonstrations.load(path)
    else:
        demos = collect_ogbench_dataset(CUBE_TASK, n_episodes=play_episodes, seed=0, progress_bar=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        demos.save(path)
    if task_episodes == 0:
        return demos
    directed = collect_ogbench_task_dataset(CUBE_TASK, n_episodes=task_episodes, noise=0.1, p_random_action=0.1, seed=0)
    return Demonstrations.concatenate([demos, directed])


def train_sb3_flow(method: str, task: Task, hidden: list[int], steps: int, seed: int) -> Any:
    common = dict(learning_rate=3e-4, batch_size=256, seed=seed, device="cpu")
    if method == "FlowBC":
        model = FlowBC("MlpPolicy", task.env, task.demos, policy_kwargs={"net_arch": hidden}, **common)
        return model.learn(steps).policy
    if method == "GaussianBC":
        model = GaussianBC("MlpPolicy", task.env, task.demos, policy_kwargs={"net_arch": hidden}, **common)
        return model.learn(steps).policy
    algorithm, settings = (FQL, FQL_SETTINGS) if method == "FQL" else (FBRAC, FBRAC_SETTINGS)
    policy_kwargs = {"net_arch": hidden, "critic_net_arch": hidden}
    model = algorithm("MlpPolicy", task.env, dataset=task.demos, policy_kwargs=policy_kwargs, **settings[task.name], **common)
    return model.learn_offline(steps)


def train_d3rlpy(method: str, task: Task, hidden: list[int], steps: int, seed: int) -> Any:
    import d3rlpy

    d3rlpy.seed(seed)
    demos = task.demos
    dataset = d3rlpy.dataset.MDPDataset(
        observations=demos.observations,
        actions=demos.actions,
        rewards=demos.rewards,
        terminals=demos.terminations,
        # d3rlpy wants an episode end to be one or the other: a terminal state wins.
        timeouts=demos.truncations & ~demos.terminations,
    )
    encoder = d3rlpy.models.VectorEncoderFactory(hidden)
    # d3rlpy's policies act in [-1, 1] (tanh); the env's box is mapped there, as sb3-flow's policies do.
    action_scaler = d3rlpy.preprocessing.MinMaxActionScaler(
        minimum=task.env.action_space.low.astype(np.float32), maximum=task.env.action_space.high.astype(np.float32)
    )
    common = dict(batch_size=256, actor_encoder_factory=encoder, critic_encoder_factory=encoder, action_scaler=action_scaler)
    if method == "IQL":
        config = d3rlpy.algos.IQLConfig(
            value_encoder_factory=encoder, actor_learning_rate=3e-4, critic_learning_rate=3e-4, **common
        )
    elif method == "TD3+BC":
        config = d3rlpy.algos.TD3PlusBCConfig(
            observation_scaler=d3rlpy.preprocessing.StandardObservationScaler(), actor_learning_rate=3e-4, **common
        )
    else:
        config = d3rlpy.algos.ReBRACConfig(actor_learning_rate=3e-4, critic_learning_rate=3e-4, **common)
    algorithm = config.create(device="cpu:0")
    algorithm.fit(
        dataset,
        n_steps=steps,
        n_steps_per_epoch=steps,
        show_progress=False,
        save_interval=steps + 1,
        logger_adapter=d3rlpy.logging.NoopAdapterFactory(),
    )
    return D3rlpyPolicy(algorithm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("pendulum", "cube-single"), default="pendulum")
    parser.add_argument("--steps", type=int, default=20_000, help="gradient steps of every method")
    parser.add_argument("--episodes", type=int, default=50, help="dataset episodes")
    parser.add_argument("--action-noise", type=float, default=0.5, help="Pendulum dataset action noise")
    parser.add_argument(
        "--pendulum-data",
        choices=("noisy", "mixed"),
        default="noisy",
        help="noisy: --episodes of the noisy controller; mixed: benchmarks.critic_sampling's 15 expert + 35 random episodes",
    )
    parser.add_argument(
        "--cube-data",
        choices=("play", "mixed"),
        default="play",
        help="play: --episodes of play data; mixed: plus --task-episodes task-directed oracle episodes",
    )
    parser.add_argument("--task-episodes", type=int, default=50, help="task-directed episodes of --cube-data mixed")
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256], help="hidden layers of every network")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(ALL_METHODS), choices=ALL_METHODS)
    parser.add_argument("--fql-alpha", type=float, default=None, help="override FQL's alpha (for the sweep)")
    parser.add_argument("--cache", default="benchmark_output/datasets", help="folder of generated datasets")
    parser.add_argument("--out", default=None, help="JSON output (default benchmark_output/offline_<task>.json)")
    args = parser.parse_args()
    set_torch_threads(1)
    if args.fql_alpha is not None:
        FQL_SETTINGS[args.task]["alpha"] = args.fql_alpha
    task = Task(args)

    results: dict[str, dict[str, Any]] = {}
    for method in args.methods:
        values, scores, seconds = [], [], []
        for seed in args.seeds:
            th.manual_seed(seed)
            start = time.perf_counter()
            trainer = train_d3rlpy if method in D3RLPY_METHODS else train_sb3_flow
            policy = trainer(method, task, args.hidden, args.steps, seed)
            seconds.append(time.perf_counter() - start)
            value, score = task.score(policy)
            values.append(value)
            scores.append(score)
            print(f"{method} seed {seed}: {value:.1f} (score {score:.1f}) in {seconds[-1]:.0f} s", flush=True)
        results[method] = {"values": values, "scores": scores, "seconds": seconds}

    value_name = "return" if task.name == "pendulum" else "success %"
    print(f"\n| method | {value_name} (mean ± std over {len(args.seeds)} seeds) | score | per seed | train time (s) |")
    print("|---|---|---|---|---|")
    for method, result in results.items():
        per_seed = ", ".join(f"{value:.1f}" for value in result["values"])
        print(
            f"| {method} | {mean_std(result['values'])} | {mean_std(result['scores'])} | {per_seed} | "
            f"{np.mean(result['seconds']):.0f} |"
        )
    payload: dict[str, Any] = {
        "settings": {**vars(args), "fql": FQL_SETTINGS[task.name], "fbrac": FBRAC_SETTINGS[task.name]},
        "dataset": task.demos.summary(),
        "results": results,
    }
    if task.name == "pendulum":
        payload.update(expert_return=task.expert, random_return=task.random)
    write_json(args.out or f"benchmark_output/offline_{task.name}.json", payload)


if __name__ == "__main__":
    main()
