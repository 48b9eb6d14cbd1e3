"""
Distill back: turn a steered flow policy (an agent acting through a frozen base) into one standalone
:class:`~sb3_flow.policies.FlowPolicy`, by flow-matching behaviour cloning on the steered policy's own rollouts.

A steered policy is an agent plus the way it reaches the environment: SAC / TD3 / PPO on a DSRL
:class:`~sb3_flow.wrappers.NoiseActionWrapper` or a :class:`~sb3_flow.wrappers.ResidualActionWrapper` (a mean or a
variance residual), or an agent that already acts in the environment's own action space around a frozen base
(:class:`~sb3_flow.DSRLNA`, :class:`~sb3_flow.policies.BestOfNPolicy`, :class:`~sb3_flow.policies.CriticGuidedPolicy`).
:class:`SteeredPolicy` sees it from the original environment (observation -> the environment action the steering
executes), so that :func:`~sb3_flow.common.demonstrations.collect_demonstrations` records its rollouts in the base's
own spaces, and :func:`distill` trains a :class:`~sb3_flow.bc.FlowBC` on them: the improvement then lives in one flow
policy, with no wrapper, agent or critic at inference.
"""

from __future__ import annotations

import copy
import math
import os
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.utils import is_vectorized_observation, set_random_seed
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper, VecNormalize, VecTransposeImage

from sb3_flow.bc.bc import FlowBC
from sb3_flow.common.demonstrations import Demonstrations, collect_demonstrations
from sb3_flow.common.observations import batch_of_one
from sb3_flow.common.utils import check_finite_number, check_policy_matches_env, check_positive_int, spaces_match
from sb3_flow.policies.critic_samplers import CriticSamplerPolicy
from sb3_flow.policies.flow_policy import FlowPolicy
from sb3_flow.policies.loading import flow_part
from sb3_flow.wrappers.noise import NoiseActionWrapper, VecNoiseActionWrapper, decode_noise_actions
from sb3_flow.wrappers.residual import ResidualActionWrapper, ResidualCore, VecResidualActionWrapper

_STEERED_KINDS = (
    "an SB3 agent with the environment it was trained in, a NoiseActionWrapper (DSRL) or ResidualActionWrapper (residual, "
    "variance residual) around the original environment (or their Vec forms); a DSRLNA model; or a BestOfNPolicy / "
    "CriticGuidedPolicy"
)


class _Steering:
    """How an agent's action becomes an environment action: what the agent sees, and what the environment executes."""

    method = "direct"

    def __init__(self, base_policy: FlowPolicy):
        self.base_policy = base_policy

    def agent_observations(self, observations: Any) -> tuple[Any, Any]:
        """The batch the agent sees for a batch of original observations, and what :meth:`env_actions` needs of it."""
        return observations, None

    def env_actions(self, observations: Any, context: Any, agent_actions: np.ndarray) -> np.ndarray:
        """The batch of environment actions executed for the agent's batch of actions."""
        return np.asarray(agent_actions, dtype=np.float32)


class _NoiseSteering(_Steering):
    """DSRL: the base integrated deterministically from ``noise_bound * u``, as :class:`NoiseActionWrapper` does."""

    method = "dsrl"

    def __init__(self, wrapper: NoiseActionWrapper | VecNoiseActionWrapper):
        # The wrapper's own frozen copy: decoding only reads it (no gradients, no state).
        super().__init__(wrapper.base_policy)
        self.noise_bound = wrapper.noise_bound

    def env_actions(self, observations: Any, context: Any, agent_actions: np.ndarray) -> np.ndarray:
        unit_noise = _finite_rows(agent_actions, self.base_policy.action_dim, "noise")
        return decode_noise_actions(self.base_policy, observations, np.clip(unit_noise, -1.0, 1.0), self.noise_bound)


class _ResidualSteering(_Steering):
    """Residual: ``clip(base action + residual_scale * r)``, as :class:`ResidualActionWrapper` does at inference."""

    method = "residual"

    def __init__(self, core: ResidualCore, observation_space: spaces.Space, action_space: spaces.Space, seed: int | None):
        # A core of our own, with the same base and settings: the wrapper's progressive-exploration counter and random
        # generators stay as they were, and the residual is always applied (progressive exploration is for training).
        self.core = ResidualCore(
            observation_space, action_space, core.base_policy, core.residual_scale, core.append_base_action,
            core.base_noise, 0, seed, core.base_policy.device,
        )  # fmt: skip
        super().__init__(self.core.base_policy)

    def agent_observations(self, observations: Any) -> tuple[Any, Any]:
        base_actions = self.core.base_actions(observations)
        return self.core.augment(observations, base_actions), base_actions

    def env_actions(self, observations: Any, context: Any, agent_actions: np.ndarray) -> np.ndarray:
        residuals = _finite_rows(agent_actions, self.base_policy.action_dim, "residual")
        return self.core.combine(context, residuals)[0]


def _finite_rows(actions: np.ndarray, action_dim: int, what: str) -> np.ndarray:
    rows = np.asarray(actions, dtype=np.float32).reshape(-1, action_dim)
    if not np.all(np.isfinite(rows)):
        raise ValueError(f"the agent returned non-finite {what} actions: {rows}")
    return rows


class SteeredPolicy:
    """
    A steered policy seen from the original environment: ``predict`` maps original observations to the environment
    actions that the agent's steering executes (the ``info["env_action"]`` of its wrapper), one agent call and one
    base call per batch. Built by :func:`steered_policy`; the agent, its environment and its wrapper are only read.

    A residual wrapper's progressive exploration is not applied here (the residual always is, as at the end of
    training); its ``base_noise="random"`` draws come from a generator of this object's own.

    :param agent: the agent (anything with SB3's ``predict``)
    :param steering: how its actions become environment actions
    :param env: the original environment (a single gymnasium env, below any steering wrapper)
    :param normalizers: ``VecNormalize`` layers between the steering and the agent, innermost first: the agent sees
        observations normalized by their statistics, as in training
    """

    def __init__(self, agent: Any, steering: _Steering, env: gym.Env, normalizers: list[VecNormalize]):
        self.agent = agent
        self._steering = steering
        self.env = env
        self._normalizers = normalizers
        self.observation_space = env.observation_space
        self.action_space = env.action_space

    @property
    def method(self) -> str:
        """``"dsrl"``, ``"residual"`` or ``"direct"`` (an agent that acts in the environment's own action space)."""
        return self._steering.method

    @property
    def base_policy(self) -> FlowPolicy:
        """The frozen base flow the agent steers (read only: the steering's or the agent's own copy)."""
        return self._steering.base_policy

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """
        SB3's ``predict`` in the original environment's spaces: one observation or a batch of them.

        :param deterministic: passed to the agent's ``predict``
        :return: the environment actions (and the agent's state, for recurrent agents)
        """
        vectorized = is_vectorized_observation(observation, self.observation_space)
        batch = observation if vectorized else batch_of_one(observation)
        agent_batch, context = self._steering.agent_observations(batch)
        for normalizer in self._normalizers:
            agent_batch = normalizer.normalize_obs(agent_batch)
        agent_actions, state = self.agent.predict(agent_batch, state, episode_start, deterministic)
        actions = self._steering.env_actions(batch, context, agent_actions).reshape((-1, *self.action_space.shape))
        return (actions if vectorized else actions[0]), state


def _check_agent(agent: Any) -> None:
    missing = [name for name in ("predict", "observation_space", "action_space") if not hasattr(agent, name)]
    if missing:
        raise TypeError(f"agent must be an SB3 model or policy (it lacks {', '.join(missing)}); expected {_STEERED_KINDS}")


def _direct_base(agent: Any) -> FlowPolicy | None:
    """The frozen base of an agent that acts in the environment's own action space around it, else None."""
    if isinstance(agent, CriticSamplerPolicy):
        return agent.flow
    # DSRL-NA (and any model built like it): an SB3 model whose predict returns environment actions of its frozen base.
    if isinstance(agent, BaseAlgorithm) and isinstance(getattr(agent, "base_policy", None), FlowPolicy):
        return agent.base_policy
    return None


def _single_env(env: VecEnv) -> gym.Env:
    if not isinstance(env, DummyVecEnv):
        raise ValueError(
            f"the rollouts need the original environment as a single gymnasium env, and {type(env).__name__} keeps its "
            "environments out of reach: pass env=<the gymnasium env> (with its steering wrapper) instead"
        )
    return env.envs[0]


def _unwrap_vec(env: VecEnv) -> tuple[VecEnv | None, gym.Env, list[VecNormalize]]:
    """
    Walk a VecEnv from the agent down: the Vec steering wrapper (or None), the first single env below, and the
    ``VecNormalize`` layers above the steering, innermost first.
    """
    steering, normalizers, layer = None, [], env
    while isinstance(layer, VecEnvWrapper):
        if isinstance(layer, (VecNoiseActionWrapper, VecResidualActionWrapper)):
            if steering is not None:
                raise ValueError("the environment holds two steering wrappers; distill steers through one")
            steering = layer
        elif isinstance(layer, VecNormalize) and layer.norm_obs:
            if steering is not None:
                # Below the steering the base itself sees normalized observations: the flow would need them too.
                raise ValueError(
                    "a VecNormalize below the steering wrapper normalizes the base policy's observations; put the "
                    "steering wrapper directly on the raw VecEnv, under VecNormalize, as the wrappers' docs say"
                )
            normalizers.insert(0, layer)
        elif not isinstance(layer, VecTransposeImage) and not (
            spaces_match(layer.observation_space, layer.venv.observation_space)
            and spaces_match(layer.action_space, layer.venv.action_space)
        ):
            # (The agent's own predict transposes images, so VecTransposeImage changes nothing it computes.)
            raise ValueError(
                f"{type(layer).__name__} changes the spaces between the agent and the steering wrapper; distill can "
                "only reproduce VecNormalize there"
            )
        layer = layer.venv
    return steering, _single_env(layer), normalizers


def _unwrap_gym(env: gym.Env) -> tuple[gym.Wrapper | None, gym.Env]:
    """The gymnasium steering wrapper in ``env``'s chain (or None), and the original env below it (or ``env``)."""
    layer: Any = env
    while isinstance(layer, gym.Wrapper):
        if isinstance(layer, (NoiseActionWrapper, ResidualActionWrapper)):
            if not (
                spaces_match(env.observation_space, layer.observation_space)
                and spaces_match(env.action_space, layer.action_space)
            ):
                raise ValueError(
                    f"a wrapper above {type(layer).__name__} changes the spaces the agent sees; distill reproduces the "
                    "steering wrapper only: put it outermost"
                )
            below = layer.env
            if _unwrap_gym(below)[0] is not None:
                raise ValueError("the environment holds two steering wrappers; distill steers through one")
            return layer, below
        layer = layer.env
    return None, env


def steered_policy(agent: Any, env: gym.Env | VecEnv | str | None = None, seed: int | None = None) -> SteeredPolicy:
    """
    The steered policy of ``agent`` in the original environment's spaces (see :class:`SteeredPolicy`).

    :param agent: an SB3 model (or policy) trained on a steering wrapper (``NoiseActionWrapper``,
        ``ResidualActionWrapper``, their Vec forms); or an agent that acts in the environment's own action space around
        a frozen base: a ``DSRLNA`` model, a ``BestOfNPolicy`` or ``CriticGuidedPolicy``
    :param env: the environment the agent acts in, as it was trained: the wrapped env (a gymnasium env whose chain
        holds the steering wrapper, or a VecEnv, e.g. ``model.get_env()``); for an agent acting in the environment's
        own spaces, the original env or its id. Default: the agent's own ``get_env()``
    :param seed: seed of the residual base's random initial noise (``base_noise="random"``)
    :return: the steered policy; its ``env`` is the original environment (below the steering wrapper)
    :raises TypeError: when ``agent`` is no SB3 model or policy, or is not steered (no steering wrapper in its
        environment and no base of its own)
    :raises ValueError: naming both, when the agent's spaces are not the ones its environment gives it; for an
        environment distill cannot reproduce (a VecNormalize under the steering wrapper, a SubprocVecEnv)
    """
    _check_agent(agent)
    if env is None:
        env = agent.get_env() if isinstance(agent, BaseAlgorithm) else None
        if env is None:
            raise ValueError(f"{type(agent).__name__} has no environment: pass env=<the environment it acts in>")
    if isinstance(env, str):
        env = gym.make(env)
    normalizers: list[VecNormalize] = []
    if isinstance(env, VecEnv):
        vec_steering, single, normalizers = _unwrap_vec(env)
        gym_steering, original = _unwrap_gym(single)
        if vec_steering is not None and gym_steering is not None:
            raise ValueError("the environment holds two steering wrappers; distill steers through one")
        wrapper = vec_steering or gym_steering
    else:
        wrapper, original = _unwrap_gym(env)
    if not isinstance(original.action_space, spaces.Box):
        raise ValueError(f"distill needs a Box action space, got {original.action_space}")
    direct_base = _direct_base(agent)
    if wrapper is None:
        if direct_base is None:
            raise TypeError(
                f"{type(agent).__name__} is not a steered policy: its environment holds no steering wrapper and it has no "
                f"base flow of its own. Expected {_STEERED_KINDS}. To clone any other expert, collect_demonstrations "
                "and train FlowBC on them"
            )
        if normalizers:
            raise ValueError(
                f"{type(agent).__name__}'s base sees VecNormalize's observations: a flow distilled from it would need "
                "them too; distill it on the unnormalized environment"
            )
        check_policy_matches_env(
            agent.observation_space, agent.action_space, original.observation_space, original.action_space, "steered agent"
        )
        return SteeredPolicy(agent, _Steering(direct_base), original, normalizers)
    if direct_base is not None:
        raise ValueError(
            f"{type(agent).__name__} acts in the environment's own action space around its own base, but the environment "
            f"holds a {type(wrapper).__name__}: pass the original environment"
        )
    # The agent acts on what the outermost layer shows it: the wrapper's spaces (VecNormalize keeps them).
    check_policy_matches_env(
        agent.observation_space, agent.action_space, env.observation_space, env.action_space, "steered agent"
    )
    if isinstance(wrapper, (NoiseActionWrapper, VecNoiseActionWrapper)):
        steering: _Steering = _NoiseSteering(wrapper)
    else:
        steering = _ResidualSteering(wrapper.core, original.observation_space, original.action_space, seed)
    return SteeredPolicy(agent, steering, original, normalizers)


def collect_steered_demonstrations(
    agent: Any,
    env: gym.Env | VecEnv | str | None = None,
    n_episodes: int = 50,
    deterministic: bool = True,
    seed: int | None = None,
    progress_bar: bool = False,
) -> Demonstrations:
    """
    Roll out a steered policy and record it in the original environment's spaces: the observation the base sees, the
    environment action the steering executed, the environment's reward, termination and truncation.

    The agent's environment (below the steering wrapper) is reset and stepped, as by ``evaluate_policy``; reset it
    before training the agent further.

    :param agent: the steered agent (see :func:`steered_policy`)
    :param env: the environment it acts in (see :func:`steered_policy`); default: its own ``get_env()``
    :param n_episodes: number of episodes
    :param deterministic: the agent's deterministic actions (one action per state: DSRL, DSRL-NA, a mean residual),
        or sampled ones (a variance residual's deterministic action is the base's own: sample it, and keep the best
        episodes with a return filter)
    :param seed: seeds the episodes' resets (episode ``i`` with ``seed + i``), the agent's sampling and a residual's
        random base noise
    :param progress_bar: show a progress bar over episodes
    :return: the rollouts
    """
    n_episodes = check_positive_int(n_episodes, "n_episodes")
    steered = steered_policy(agent, env, seed)
    return _rollouts(steered, n_episodes, deterministic, seed, progress_bar)


def _rollouts(
    steered: SteeredPolicy, n_episodes: int, deterministic: bool, seed: int | None, progress_bar: bool
) -> Demonstrations:
    if seed is not None:
        set_random_seed(seed)  # the agent samples from torch's global generator (deterministic=False)
    return collect_demonstrations(
        steered.env, steered, n_episodes, seed=seed, deterministic=deterministic, progress_bar=progress_bar
    )


def filter_episodes(
    demonstrations: Demonstrations, min_return: float | None = None, top_fraction: float | None = None
) -> Demonstrations:
    """
    The whole episodes of ``demonstrations`` that pass a return filter, in their order (copies); all of them without
    one.

    :param demonstrations: the episodes
    :param min_return: keep the episodes whose return is at least this
    :param top_fraction: keep the ``ceil(top_fraction * n_episodes)`` episodes with the highest returns (in (0, 1];
        ties go to the earlier episode)
    :raises ValueError: when both filters are given, for a value out of range, or when no episode passes
    """
    if min_return is not None and top_fraction is not None:
        raise ValueError("give min_return or top_fraction, not both")
    returns = demonstrations.episode_returns()
    if min_return is not None:
        min_return = check_finite_number(min_return, "min_return")
        keep = returns >= min_return
        if not keep.any():
            raise ValueError(
                f"no episode has a return >= min_return={min_return:g} (the best of {len(returns)}: {returns.max():.1f}); "
                "lower it or collect more episodes"
            )
    elif top_fraction is not None:
        top_fraction = check_finite_number(top_fraction, "top_fraction", minimum=0.0, strict=True)
        if top_fraction > 1.0:
            raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
        best = np.argsort(-returns, kind="stable")[: math.ceil(top_fraction * len(returns))]
        keep = np.zeros(len(returns), dtype=bool)
        keep[best] = True
    else:
        return demonstrations
    episode_of_row = np.cumsum(demonstrations.episode_starts) - 1
    return demonstrations.select(np.flatnonzero(keep[episode_of_row]))


def _student(
    base: FlowPolicy, env: gym.Env, data: Demonstrations, warm_start: bool, flow_bc_kwargs: dict[str, Any], seed: int | None
) -> FlowBC:
    """A FlowBC on ``data`` with the base's architecture (unless ``policy_kwargs`` say otherwise), warm-started from it."""
    kwargs = dict(flow_bc_kwargs)
    architecture = base.flow_policy_parameters()
    for name in ("observation_space", "action_space", "lr_schedule"):
        architecture.pop(name, None)
    policy_kwargs = {**copy.deepcopy(architecture), **(kwargs.pop("policy_kwargs", None) or {})}
    kwargs.setdefault("seed", seed)
    model = FlowBC(FlowPolicy, env, data, policy_kwargs=policy_kwargs, **kwargs)
    if warm_start:
        try:
            weights = flow_part(base).state_dict()
            model.policy.load_state_dict(weights)
        except (ValueError, RuntimeError) as error:
            raise ValueError(
                f"the distilled flow cannot start from the base's weights ({' '.join(str(error).split())}); keep the "
                "base's architecture in flow_bc_kwargs, or pass warm_start=False"
            ) from error
    return model


def distill(
    agent: Any,
    env: gym.Env | VecEnv | str | None = None,
    n_episodes: int = 50,
    n_gradient_steps: int = 5_000,
    deterministic: bool = True,
    demonstrations: Demonstrations | str | os.PathLike | None = None,
    min_return: float | None = None,
    top_fraction: float | None = None,
    warm_start: bool = True,
    flow_bc_kwargs: dict[str, Any] | None = None,
    seed: int | None = None,
    progress_bar: bool = False,
    verbose: int = 0,
) -> FlowBC:
    """
    Distill a steered policy back into one flow policy: roll it out (:func:`collect_steered_demonstrations`),
    optionally keep the best episodes (:func:`filter_episodes`) and mix in demonstrations, then flow-matching
    behaviour cloning (:class:`~sb3_flow.bc.FlowBC`) on that data. The result acts alone: no wrapper, agent or
    critic at inference, one flow integration per action. The agent, its base and its wrapper are left as they were.

    The flow keeps the base's architecture (network, features extractor, ``n_flow_steps``) and, with ``warm_start``,
    starts from the base's weights: the steered actions stay close to the base's (on its manifold for DSRL, within the
    residual's scale for a residual), so fine-tuning from the base needs few gradient steps, and the states the rollouts
    never visit keep the base's behaviour instead of a random network's.

    :param agent: the steered agent (see :func:`steered_policy`)
    :param env: the environment it acts in (see :func:`steered_policy`); default: its own ``get_env()``. The FlowBC
        model keeps the original environment below the steering wrapper (its ``evaluate`` runs there)
    :param n_episodes: rollout episodes
    :param n_gradient_steps: FlowBC gradient steps
    :param deterministic: roll out the agent's deterministic actions (default: the steered policy as it is deployed;
        a stochastic steered policy, e.g. a variance residual, is sampled with ``False``, best with a return filter)
    :param demonstrations: demonstrations to mix in (e.g. the base's own), a :class:`Demonstrations` or an ``.npz``
        path, appended to the rollouts as they are (the return filter applies to the rollouts only)
    :param min_return: keep the rollout episodes with at least this return
    :param top_fraction: keep this fraction of the rollout episodes, the best by return
    :param warm_start: start from the base's weights (else from a fresh network of the base's architecture)
    :param flow_bc_kwargs: further FlowBC arguments (``learning_rate``, ``batch_size``, ``n_flow_steps``,
        ``policy_kwargs``, ``device``, ...)
    :param seed: seeds the rollouts (see :func:`collect_steered_demonstrations`) and FlowBC
    :param progress_bar: show progress bars over the rollouts and the gradient steps
    :param verbose: 1 prints the rollouts' returns and what the filter kept
    :return: the trained FlowBC model; ``model.policy`` is the distilled FlowPolicy, ``model.demonstrations`` the data
    :raises ValueError: for counts that are not positive, a bad filter, demonstrations that do not fit the original
        environment's spaces, and the errors of :func:`steered_policy`
    """
    n_episodes = check_positive_int(n_episodes, "n_episodes")
    n_gradient_steps = check_positive_int(n_gradient_steps, "n_gradient_steps")
    if min_return is not None and top_fraction is not None:
        raise ValueError("give min_return or top_fraction, not both")
    steered = steered_policy(agent, env, seed)
    extra = None
    if demonstrations is not None:
        extra = demonstrations if isinstance(demonstrations, Demonstrations) else Demonstrations.load(demonstrations)
        # Before minutes of rollouts: they are mixed with data recorded in the original environment's spaces.
        extra.check_spaces(steered.observation_space, steered.action_space)
    rollouts = _rollouts(steered, n_episodes, deterministic, seed, progress_bar)
    kept = filter_episodes(rollouts, min_return, top_fraction)
    if verbose >= 1:
        summary, kept_summary = rollouts.summary(), kept.summary()
        print(
            f"rollouts of the steered policy ({steered.method}): {summary['n_episodes']} episodes, return "
            f"{summary['mean_return']:.1f} ± {summary['std_return']:.1f}; kept {kept_summary['n_episodes']} "
            f"(return {kept_summary['mean_return']:.1f} ± {kept_summary['std_return']:.1f})"
            + (f", mixed with {extra.n_episodes} demonstration episodes" if extra is not None else "")
        )
    data = kept if extra is None else Demonstrations.concatenate([kept, extra])
    model = _student(steered.base_policy, steered.env, data, warm_start, flow_bc_kwargs or {}, seed)
    return model.learn(n_gradient_steps, progress_bar=progress_bar)


__all__ = [
    "SteeredPolicy",
    "collect_steered_demonstrations",
    "distill",
    "filter_episodes",
    "steered_policy",
]
