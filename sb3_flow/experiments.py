"""
What ``sb3-flow demo``, the command line and ``benchmarks/`` share: the standard pipeline from an expert to a
pretrained base policy, the tuned fine-tuning and steering settings, and the helpers that build agents with them.

The algorithm-free parts live in :mod:`sb3_flow.common` and are re-exported here, so that this module is the one
place the demo, the CLI and the benchmarks read: trained and cached experts and the scripted Pendulum controller
(:mod:`sb3_flow.common.experts`), paired and per-episode evaluation (:mod:`sb3_flow.common.evaluation`). The tuned
settings name algorithms, so they live here, above the algorithm folders.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env

from sb3_flow.bc import FlowBC
from sb3_flow.common.demonstrations import Demonstrations, collect_demonstrations
from sb3_flow.common.evaluation import evaluate_episodes, returns_on_starts
from sb3_flow.common.experts import EXPERT_ALGOS, load_expert, pendulum_swing_up, train_expert
from sb3_flow.wrappers import NoiseActionWrapper, ResidualActionWrapper, VecNoiseActionWrapper, VecResidualActionWrapper

__all__ = [
    "DSRL_NOISE_BOUND",
    "EXPERT_ALGOS",
    "FLOW_PPO_PENDULUM_FINETUNE",
    "HOPPER_PIPELINE",
    "PENDULUM_PIPELINE",
    "REINFLOW_HOPPER_FINETUNE",
    "REINFLOW_PENDULUM_FINETUNE",
    "STEERING_SAC",
    "PipelineSettings",
    "evaluate_episodes",
    "finetune_model",
    "load_expert",
    "pendulum_swing_up",
    "pretrain",
    "pretrained_base",
    "returns_on_starts",
    "steering_wrapper",
    "train_expert",
]


@dataclass(frozen=True)
class PipelineSettings:
    """
    The standard pipeline up to a base policy: a trained SB3 SAC expert, demonstrations with action noise (good but
    not optimal), then behaviour cloning.

    :param env_id: gymnasium environment id
    :param expert_steps: training steps of the SAC expert (trained once, then cached)
    :param n_episodes: demonstration episodes
    :param action_noise: Gaussian action noise of the demonstrations (fraction of the action half-width)
    :param bc_steps: gradient steps of behaviour cloning
    :param bc_learning_rate: learning rate of behaviour cloning
    :param seed: seed of the expert, the demonstrations and the behaviour cloning
    """

    env_id: str = "Pendulum-v1"
    expert_steps: int = 20_000
    n_episodes: int = 50
    action_noise: float = 0.3
    bc_steps: int = 5_000
    bc_learning_rate: float = 1e-3
    seed: int = 0


# The demo's defaults and the base of every Pendulum benchmark.
PENDULUM_PIPELINE = PipelineSettings()

# The Hopper-v5 base (compare_configs/hopper.yml and hopper_finetune.yml): a SAC expert of 100k steps (the RL-Zoo's
# learning_starts), 50 noisy episodes, FlowBC for 20k gradient steps.
HOPPER_PIPELINE = PipelineSettings(env_id="Hopper-v5", expert_steps=100_000, bc_steps=20_000)

# FlowPPO fine-tuning a Pendulum FlowBC base (8 environments): FPO++'s fine-tuning recommendations (per-draw ratios,
# a small clip range, a slow actor and a faster critic). The comparison configs compare_configs/pendulum.yml and
# finetune_pendulum.yml and the Zoo's flow_ppo_finetune.yml (sb3_flow/zoo/configs).
FLOW_PPO_PENDULUM_FINETUNE: dict[str, Any] = {
    "n_steps": 256,
    "batch_size": 256,
    "n_epochs": 10,
    "gamma": 0.9,
    "gae_lambda": 0.95,
    "learning_rate": 3e-5,
    "critic_learning_rate": 1e-3,
    "critic_warmup_rollouts": 3,
    "clip_range": 0.02,
    "n_mc_samples": 8,
    "ratio_mode": "per_sample",
}

# ReinFlow fine-tuning a Pendulum FlowBC base (8 environments, K = 4). The comparison configs
# compare_configs/pendulum.yml and finetune_pendulum.yml and the Zoo's reinflow.yml (sb3_flow/zoo/configs).
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

# ReinFlow on Hopper: the authors' settings (ReinFlow/ReinFlow: cfg/gym/finetune/hopper-v2) with 8 environments
# instead of 40. compare_configs/hopper.yml and hopper_finetune.yml use it with a faster actor (docs/benchmarks.md).
REINFLOW_HOPPER_FINETUNE: dict[str, Any] = {
    "n_steps": 500,
    "batch_size": 500,
    "n_epochs": 5,
    "gamma": 0.99,
    "gae_lambda": 0.95,
    "learning_rate": 4.5e-5,
    "critic_learning_rate": 6.5e-4,
    "critic_warmup_rollouts": 2,
    "clip_range": 0.01,
    "ent_coef": 0.03,
    "min_std": 0.10,
    "max_std": 0.24,
}

# Steering a frozen base with SAC: DSRL's largest initial noise (its action_magnitude) and SAC's settings.
DSRL_NOISE_BOUND = 1.5
STEERING_SAC: dict[str, Any] = {"learning_rate": 1e-3}


def pretrain(
    algorithm: type[BaseAlgorithm],
    env_id: str,
    demos: Demonstrations,
    steps: int,
    learning_rate: float = PENDULUM_PIPELINE.bc_learning_rate,
    seed: int = 0,
    progress_bar: bool = False,
    **kwargs: Any,
) -> Any:
    """
    Behaviour cloning on the CPU: ``algorithm`` (``FlowBC`` or ``GaussianBC``) trained for ``steps`` gradient steps.

    :param kwargs: further arguments of the algorithm (e.g. ``n_flow_steps``)
    :return: the trained model
    """
    model = algorithm("MlpPolicy", env_id, demos, learning_rate=learning_rate, seed=seed, device="cpu", **kwargs)
    return model.learn(steps, progress_bar=progress_bar)


def pretrained_base(
    settings: PipelineSettings = PENDULUM_PIPELINE, **bc_kwargs: Any
) -> tuple[BaseAlgorithm, Demonstrations, FlowBC]:
    """
    Run the standard pipeline: the cached SAC expert, its noisy demonstrations, a FlowBC base trained on them.

    :param settings: the pipeline's settings
    :param bc_kwargs: further FlowBC arguments (e.g. ``n_flow_steps``)
    :return: (expert, demonstrations, FlowBC model)
    """
    expert = train_expert(settings.env_id, "sac", settings.expert_steps, seed=settings.seed)
    demos = collect_demonstrations(settings.env_id, expert, settings.n_episodes, settings.action_noise, seed=settings.seed)
    base = pretrain(FlowBC, settings.env_id, demos, settings.bc_steps, settings.bc_learning_rate, settings.seed, **bc_kwargs)
    return expert, demos, base


def finetune_model(
    algorithm: type[BaseAlgorithm],
    env_id: str,
    base: Any,
    settings: dict[str, Any],
    seed: int,
    n_envs: int = 8,
    **overrides: Any,
) -> BaseAlgorithm:
    """
    An on-policy fine-tuning agent (``FlowPPO``, ``ReinFlow``) from ``base``, on ``n_envs`` environments, on the CPU.

    :param settings: the tuned settings, e.g. :data:`FLOW_PPO_PENDULUM_FINETUNE`
    :param overrides: arguments that replace or add to ``settings`` (e.g. ``noise="fixed"``)
    :return: the untrained agent
    """
    env = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    return algorithm("MlpPolicy", env, base_policy=base, seed=seed, device="cpu", **{**settings, **overrides})


def steering_wrapper(method: str, base_policy: Any, vectorized: bool = True, **kwargs: Any) -> Callable[[Any], Any] | None:
    """
    The wrapper a steering agent acts through, around a frozen base: ``"dsrl"`` (noise space, bound
    :data:`DSRL_NOISE_BOUND`) or ``"residual"`` (base action appended to the observation); ``None`` for an agent that
    acts in the environment's own action space (``"dsrl_na"``, ``"sac"``).

    :param base_policy: the frozen base
    :param vectorized: a VecEnv wrapper (one base call per batch) rather than a gymnasium one (``make_vec_env``'s
        ``wrapper_class``)
    :param kwargs: further wrapper arguments (e.g. ``residual_scale``)
    :return: a callable env -> wrapped env, or None
    """
    if method == "dsrl":
        wrapper = VecNoiseActionWrapper if vectorized else NoiseActionWrapper
        return partial(wrapper, base_policy=base_policy, noise_bound=DSRL_NOISE_BOUND, **kwargs)
    if method == "residual":
        wrapper = VecResidualActionWrapper if vectorized else ResidualActionWrapper
        return partial(wrapper, base_policy=base_policy, append_base_action=True, **kwargs)
    if method in ("dsrl_na", "sac"):
        return None
    raise ValueError(f"method must be 'dsrl', 'residual', 'dsrl_na' or 'sac', got {method!r}")
