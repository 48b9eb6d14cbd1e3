"""Behaviour cloning from demonstrations: flow matching (FlowBC) and the unimodal Gaussian baseline (GaussianBC)."""

from __future__ import annotations

import os
from abc import abstractmethod
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import update_learning_rate
from tqdm.auto import tqdm

from sb3_flow.common.demonstrations import Demonstrations, in_env_image_layout
from sb3_flow.common.files import ModelFileMixin
from sb3_flow.common.flow import PI0_BETA_PARAMS, TIME_SAMPLING_MODES, check_n_flow_steps, sample_times
from sb3_flow.common.observations import index_rows, to_tensor
from sb3_flow.common.utils import (
    check_box_action_space,
    check_finite_learning_rate,
    check_finite_loss,
    check_finite_number,
    check_positive_int,
)
from sb3_flow.policies.flow_policy import CnnFlowPolicy, FlowPolicy, MultiInputFlowPolicy
from sb3_flow.policies.gaussian import CnnGaussianPolicy, GaussianPolicy, MultiInputGaussianPolicy
from sb3_flow.policies.return_head import ReturnHeadFlowPolicy

SelfBaseBC = TypeVar("SelfBaseBC", bound="BaseBC")


class BaseBC(ModelFileMixin, BaseAlgorithm):
    """
    Offline behaviour cloning as an SB3 algorithm: ``learn(total_timesteps)`` runs that many *gradient steps* on
    minibatches of the demonstrations; the environment supplies the spaces and (optionally) periodic evaluation.

    :param policy: policy class or alias ("MlpPolicy", "CnnPolicy", "MultiInputPolicy")
    :param env: environment (or id) whose spaces the policy is built for
    :param demonstrations: a :class:`Demonstrations` or the path of a saved one (may be set later with
        :meth:`set_demonstrations`, e.g. after ``load``)
    :param learning_rate: learning rate, constant or a schedule of the remaining progress
    :param batch_size: minibatch size
    :param max_grad_norm: gradient-norm clipping (None: no clipping)
    :param eval_freq: evaluate every this many gradient steps (0: never)
    :param n_eval_episodes: episodes per evaluation
    :param eval_env: environment for evaluation (default: ``env``)
    :param policy_kwargs: keyword arguments for the policy
    :param stats_window_size: SB3 logging window
    :param tensorboard_log: tensorboard log folder (None: no tensorboard)
    :param verbose: 0 silent, 1 training information
    :param seed: random seed
    :param device: "auto", "cpu" or "cuda"
    """

    policy: BasePolicy
    policy_base: ClassVar[type[BasePolicy]] = BasePolicy
    loss_name: ClassVar[str] = "loss"

    def __init__(
        self,
        policy: str | type[BasePolicy],
        env: GymEnv | str,
        demonstrations: Demonstrations | str | os.PathLike | None = None,
        learning_rate: float | Schedule = 3e-4,
        batch_size: int = 256,
        max_grad_norm: float | None = 10.0,
        eval_freq: int = 0,
        n_eval_episodes: int = 10,
        eval_env: GymEnv | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ):
        if env is None and _init_setup_model:
            raise ValueError(f"{type(self).__name__} needs an environment (or env id): it defines the policy's spaces")
        super().__init__(
            policy,
            env,
            learning_rate,
            policy_kwargs=policy_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            verbose=verbose,
            device=device,
            support_multi_env=True,
            seed=seed,
        )
        if env is not None:
            check_box_action_space(self.action_space, type(self).__name__)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.max_grad_norm = max_grad_norm
        self.eval_freq = eval_freq
        self.n_eval_episodes = n_eval_episodes
        self.eval_env = eval_env
        self.eval_results: list[tuple[int, float, float]] = []
        self.demonstrations: Demonstrations | None = None
        self._demo_tensors: dict[str, Any] | None = None
        self._demo_returns: th.Tensor | None = None
        if demonstrations is not None:
            self.set_demonstrations(demonstrations)
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        self.policy = self.policy_class(self.observation_space, self.action_space, self.lr_schedule, **self.policy_kwargs)
        self.policy = self.policy.to(self.device)
        if not isinstance(self.policy, self.policy_base):
            raise TypeError(f"{type(self).__name__} needs a {self.policy_base.__name__}, got {type(self.policy).__name__}")

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "demonstrations", "_demo_tensors", "_demo_returns", "eval_env"]

    def set_demonstrations(self, demonstrations: Demonstrations | str | os.PathLike) -> None:
        """
        Use these demonstrations for the next ``learn``. Image observations recorded channel-last from the raw
        environment are transposed as SB3 transposes the environment's (``VecTransposeImage``); the caller's object is
        not modified.

        :param demonstrations: a :class:`Demonstrations` or the path of a saved ``.npz``
        :raises ValueError: when they are empty, hold NaN or inf, or do not fit the environment's spaces
        """
        if not isinstance(demonstrations, Demonstrations):
            demonstrations = Demonstrations.load(demonstrations)
        if len(demonstrations) == 0:
            raise ValueError("The demonstrations are empty")
        demonstrations = in_env_image_layout(demonstrations, self.env, self.action_space)
        demonstrations.check_spaces(self.observation_space, self.action_space)
        demonstrations.check_finite(("observations", "actions"))
        self.demonstrations = demonstrations
        self._demo_tensors = None
        self._demo_returns = None

    def _demonstration_tensors(self) -> dict[str, Any]:
        # Moved to the device once; actions normalized to [-1, 1] like the policy's outputs.
        if self._demo_tensors is None:
            assert self.demonstrations is not None
            obs_tensor = to_tensor(self.demonstrations.observations, self.device)
            assert isinstance(self.action_space, spaces.Box)
            actions = self.policy.scale_action(self.demonstrations.actions.reshape(len(self.demonstrations), -1))
            self._demo_tensors = {
                "observations": obs_tensor,
                # check_spaces() rejected actions outside the box; the clip only absorbs rounding at the bounds.
                "actions": th.as_tensor(np.clip(actions, -1.0, 1.0), dtype=th.float32, device=self.device),
            }
        return self._demo_tensors

    def _sample_batch(self) -> tuple[Any, th.Tensor, th.Tensor]:
        tensors = self._demonstration_tensors()
        index = th.randint(0, len(tensors["actions"]), (self.batch_size,), device=self.device)
        batch_obs = index_rows(tensors["observations"], index)
        return batch_obs, tensors["actions"][index], index

    @abstractmethod
    def compute_loss(self, observations: Any, actions: th.Tensor, rows: th.Tensor | None = None) -> th.Tensor:
        """
        Scalar training loss of a minibatch of (observation, normalized action) pairs.

        :param observations: observations (tensors)
        :param actions: normalized actions
        :param rows: the minibatch's row indices in the demonstrations (for per-row targets such as returns)
        """

    def train_step(self) -> float:
        """One gradient step on one minibatch; returns the loss."""
        self.policy.set_training_mode(True)
        learning_rate = self.lr_schedule(self._current_progress_remaining)
        check_finite_learning_rate(learning_rate, type(self).__name__, self._current_progress_remaining)
        update_learning_rate(self.policy.optimizer, learning_rate)
        observations, actions, rows = self._sample_batch()
        loss = self.compute_loss(observations, actions, rows)
        check_finite_loss(loss, type(self).__name__, self.loss_name, self._n_updates)
        self.policy.optimizer.zero_grad()
        loss.backward()
        if self.max_grad_norm is not None:
            th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
        self.policy.optimizer.step()
        self._n_updates += 1
        return loss.item()

    def evaluate(self, n_eval_episodes: int | None = None, deterministic: bool = True) -> tuple[float, float]:
        """Mean and std of the episode return of the current policy on ``eval_env`` (or the training env)."""
        env = self.eval_env if self.eval_env is not None else self.env
        if env is None:
            raise ValueError(f"{type(self).__name__}.evaluate needs an environment: pass eval_env or load with env=...")
        episodes = self.n_eval_episodes if n_eval_episodes is None else n_eval_episodes
        mean_reward, std_reward = evaluate_policy(self.policy, env, n_eval_episodes=episodes, deterministic=deterministic)
        return float(mean_reward), float(std_reward)

    def learn(
        self: SelfBaseBC,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 100,
        tb_log_name: str | None = None,
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfBaseBC:
        """
        Run ``total_timesteps`` gradient steps. Callbacks are called once per gradient step.

        :param total_timesteps: number of gradient steps
        :param callback: SB3 callback(s)
        :param log_interval: log the mean loss every this many gradient steps
        :param tb_log_name: tensorboard run name (default: the class name)
        :param reset_num_timesteps: restart the step counter
        :param progress_bar: show a progress bar
        :return: self
        """
        if self.demonstrations is None:
            raise ValueError(f"{type(self).__name__}.learn needs demonstrations: pass them or call set_demonstrations()")
        total_timesteps, callback = self._setup_learn(
            total_timesteps, callback, reset_num_timesteps, tb_log_name or type(self).__name__
        )
        callback.on_training_start(locals(), globals())
        losses: list[float] = []
        with tqdm(total=total_timesteps - self.num_timesteps, desc=type(self).__name__, disable=not progress_bar) as bar:
            while self.num_timesteps < total_timesteps:
                self._update_current_progress_remaining(self.num_timesteps, total_timesteps)
                losses.append(self.train_step())
                self.num_timesteps += 1
                bar.update(1)
                callback.update_locals(locals())
                if not callback.on_step():
                    break
                if log_interval > 0 and self.num_timesteps % log_interval == 0:
                    self._log_training(losses)
                    losses = []
                if self.eval_freq > 0 and self.num_timesteps % self.eval_freq == 0:
                    self._log_evaluation()
        if losses:
            self._log_training(losses)
        callback.on_training_end()
        return self

    def _log_training(self, losses: list[float]) -> None:
        self.logger.record(f"train/{self.loss_name}", float(np.mean(losses)))
        self.logger.record("train/learning_rate", self.lr_schedule(self._current_progress_remaining))
        self.logger.record("train/n_updates", self._n_updates)
        self.logger.dump(step=self.num_timesteps)

    def _log_evaluation(self) -> None:
        mean_reward, std_reward = self.evaluate()
        self.eval_results.append((self.num_timesteps, mean_reward, std_reward))
        self.logger.record("eval/mean_reward", mean_reward)
        self.logger.record("eval/std_reward", std_reward)
        self.logger.dump(step=self.num_timesteps)

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        # The optimizer's state (Adam's moments) is saved too, so that training resumes where it stopped.
        return ["policy", "policy.optimizer"], []


class FlowBC(BaseBC):
    """
    Flow-matching behaviour cloning: minimize the conditional flow matching loss of the demonstrated actions
    (Lipman et al., 2023; as a policy, Black et al., 2024, pi0). ``model.policy`` is the :class:`FlowPolicy` every
    sb3-flow fine-tuning method accepts as its base.

    :param n_flow_steps: integration steps of the policy (K); overrides ``policy_kwargs["n_flow_steps"]``
    :param n_noise_draws: (t, noise) draws per demonstrated action in each minibatch
    :param time_sampling: training-time distribution: "uniform", "beta" or "grid" (the policy's K-point grid)
    :param beta_params: (a, b) for ``time_sampling="beta"`` (default: pi0's, in this library's time convention)
    :param return_gamma: discount of the Monte-Carlo returns that a
        :class:`~sb3_flow.policies.return_head.ReturnHeadFlowPolicy`'s head is trained on (its policy only)

    The other parameters are those of :class:`BaseBC`.
    """

    policy: FlowPolicy
    policy_base = FlowPolicy
    loss_name = "cfm_loss"
    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": FlowPolicy,
        "CnnPolicy": CnnFlowPolicy,
        "MultiInputPolicy": MultiInputFlowPolicy,
    }

    def __init__(
        self,
        policy: str | type[FlowPolicy],
        env: GymEnv | str,
        demonstrations: Demonstrations | str | os.PathLike | None = None,
        learning_rate: float | Schedule = 3e-4,
        batch_size: int = 256,
        n_flow_steps: int | None = None,
        n_noise_draws: int = 1,
        return_gamma: float = 0.99,
        time_sampling: str = "uniform",
        beta_params: tuple[float, float] = PI0_BETA_PARAMS,
        policy_kwargs: dict[str, Any] | None = None,
        _init_setup_model: bool = True,
        **kwargs: Any,
    ):
        if time_sampling not in TIME_SAMPLING_MODES:
            raise ValueError(f"time_sampling must be one of {TIME_SAMPLING_MODES}, got {time_sampling!r}")
        n_noise_draws = check_positive_int(n_noise_draws, "n_noise_draws")
        policy_kwargs = dict(policy_kwargs or {})
        if n_flow_steps is not None:
            policy_kwargs["n_flow_steps"] = check_n_flow_steps(n_flow_steps)
        self.n_noise_draws = n_noise_draws
        self.time_sampling = time_sampling
        self.beta_params = tuple(beta_params)
        self.return_gamma = check_finite_number(return_gamma, "return_gamma", minimum=0.0)
        if self.return_gamma > 1.0:
            raise ValueError(f"return_gamma must be in [0, 1], got {return_gamma}")
        super().__init__(
            policy,
            env,
            demonstrations,
            learning_rate=learning_rate,
            batch_size=batch_size,
            policy_kwargs=policy_kwargs,
            _init_setup_model=_init_setup_model,
            **kwargs,
        )

    def compute_loss(self, observations: Any, actions: th.Tensor, rows: th.Tensor | None = None) -> th.Tensor:
        shape = (actions.shape[0], self.n_noise_draws)
        times = sample_times(shape, self.time_sampling, self.policy.n_flow_steps, self.beta_params, device=actions.device)
        noises = th.randn((*shape, actions.shape[1]), device=actions.device)
        features = self.policy.extract_features(observations, self.policy.features_extractor)
        loss = self.policy.cfm_loss_from_features(features, actions, times, noises).mean()
        if isinstance(self.policy, ReturnHeadFlowPolicy) and rows is not None:
            # The return head regresses the data's discounted Monte-Carlo returns beside the flow (no TD learning).
            loss = loss + self.policy.return_head_loss(features, actions, self._returns_to_go()[rows])
        return loss

    def _returns_to_go(self) -> th.Tensor:
        if self._demo_returns is None:
            assert self.demonstrations is not None
            if not np.all(np.isfinite(self.demonstrations.rewards)):
                raise ValueError("The demonstrations' rewards hold NaN or inf: the return head cannot be trained on them")
            returns = self.demonstrations.returns_to_go(self.return_gamma)
            self._demo_returns = th.as_tensor(returns, device=self.device)
            assert isinstance(self.policy, ReturnHeadFlowPolicy)
            self.policy.set_return_statistics(self._demo_returns)
        return self._demo_returns


class GaussianBC(BaseBC):
    """
    Maximum-likelihood behaviour cloning of a diagonal Gaussian policy: the unimodal baseline that shows what the
    flow policy's expressivity buys (it averages the modes of multimodal demonstrations).

    The parameters are those of :class:`BaseBC`.
    """

    policy: GaussianPolicy
    policy_base = GaussianPolicy
    loss_name = "nll_loss"
    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": GaussianPolicy,
        "CnnPolicy": CnnGaussianPolicy,
        "MultiInputPolicy": MultiInputGaussianPolicy,
    }

    def compute_loss(self, observations: Any, actions: th.Tensor, rows: th.Tensor | None = None) -> th.Tensor:
        return -self.policy.log_prob(observations, actions).mean()
