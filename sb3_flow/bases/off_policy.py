"""What the critic-based flow algorithms (FQL, the BPTT baseline, and later IFQL / CFGRL) share on top of SB3's
OffPolicyAlgorithm.

- a replay buffer prefilled from :class:`~sb3_flow.common.demonstrations.Demonstrations` (the offline dataset),
  terminations and truncations kept apart, to which online transitions are appended (FQL's offline-to-online);
- offline training counted in gradient steps: :meth:`FlowOffPolicyAlgorithm.learn_offline`, with SB3's callbacks,
  logger and progress bar; then ``learn(total_timesteps)`` continues online with the same buffer, networks and
  optimizers;
- the training loop: learning rates (checked finite), one :meth:`gradient_step` per sampled batch, Polyak averaging
  of the target critic, logging; non-finite losses stop training before they reach the weights.
"""

from __future__ import annotations

import io
import os
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, ReplayBufferSamples, Schedule
from stable_baselines3.common.utils import configure_logger, get_parameters_by_name, polyak_update, update_learning_rate
from tqdm.auto import tqdm

from sb3_flow.common.buffers import DictOfflineReplayBuffer, OfflineData, OfflineDataMixin, OfflineReplayBuffer
from sb3_flow.common.critics import Q_AGGREGATIONS, aggregate_q
from sb3_flow.common.demonstrations import Demonstrations, in_env_image_layout
from sb3_flow.common.files import ModelFileMixin, atomic_target, existing_file, read_saved_numbers, with_suffix_if_missing
from sb3_flow.common.flow import sample_times
from sb3_flow.common.utils import (
    check_box_action_space,
    check_finite_learning_rate,
    check_finite_loss,
    check_positive_int,
    spaces_match,
)
from sb3_flow.policies.flow_policy import FlowPolicy
from sb3_flow.policies.flow_q import FlowQPolicy
from sb3_flow.wrappers.chunk import chunked_env

SelfFlowOffPolicy = TypeVar("SelfFlowOffPolicy", bound="FlowOffPolicyAlgorithm")
DatasetSource = Demonstrations | str | os.PathLike


def offline_data(demonstrations: Demonstrations, policy: FlowQPolicy) -> OfflineData:
    """
    Transitions of a dataset as the replay buffer keeps them.

    :param demonstrations: the dataset, actions in the env's units
    :param policy: the policy whose action space normalizes the actions
    :raises ValueError: for an empty dataset, one whose spaces differ from the policy's, or NaN / inf values
    """
    if len(demonstrations) == 0:
        raise ValueError("The dataset is empty: it has no transitions")
    demonstrations.check_spaces(policy.observation_space, policy.action_space)
    demonstrations.check_finite()
    n_rows = len(demonstrations)
    actions = policy.scale_action(demonstrations.actions.reshape(n_rows, *policy.action_space.shape)).reshape(n_rows, -1)
    return OfflineData(
        observations=demonstrations.observations,
        # check_spaces() rejected actions outside the box; the clip only absorbs rounding at the bounds.
        actions=np.clip(actions, -1.0, 1.0),
        next_observations=demonstrations.next_observations,
        rewards=demonstrations.rewards,
        terminations=demonstrations.terminations,
    )


class FlowOffPolicyAlgorithm(ModelFileMixin, OffPolicyAlgorithm):
    """
    Base class of the critic-based flow algorithms; see the module docstring.

    :param policy: policy class or alias
    :param env: environment or its id (it defines the spaces even for offline training)
    :param learning_rate: learning rate of every network, constant or schedule
    :param dataset: offline transitions (a :class:`Demonstrations` or the path of a saved one) put in the replay
        buffer before any online data; more can be added with :meth:`add_dataset`
    :param buffer_size: online transitions kept (the dataset is kept besides them, never overwritten)
    :param learning_starts: environment steps of uniform random actions before online training (0: act with the
        policy from the start, as after offline pretraining)
    :param batch_size: minibatch size
    :param tau: Polyak coefficient of the target critic
    :param gamma: discount factor
    :param q_agg: "mean" or "min" over the critics in the TD target
    :param action_horizon: H > 1 makes the method act in chunks of H actions (Q-chunking, Li et al., 2025,
        https://arxiv.org/abs/2507.07969): the env is wrapped in :class:`~sb3_flow.wrappers.ActionChunkWrapper` (an env
        id or a gymnasium env; a VecEnv must come from :func:`~sb3_flow.wrappers.make_chunked_vec_env`), datasets of
        single actions are chunked as they are added, the critic scores chunks and the TD target bootstraps with
        ``gamma ** H``. ``learn(total_timesteps)`` then counts chunks (up to H environment steps each)
    :param n_flow_steps: Euler steps K of the flow (overrides ``policy_kwargs["n_flow_steps"]``)
    :param train_freq: online steps between updates
    :param gradient_steps: gradient steps per update
    :param replay_buffer_class: a replay buffer with :class:`OfflineDataMixin` (default: chosen by observation space)
    :param replay_buffer_kwargs: its keyword arguments
    :param policy_kwargs: policy keyword arguments
    :param stats_window_size: SB3 logging window
    :param tensorboard_log: tensorboard folder
    :param verbose: verbosity
    :param seed: random seed
    :param device: "auto", "cpu" or "cuda"
    :param _init_setup_model: whether the subclass builds the networks in its constructor (False only inside ``load``)
    """

    policy: FlowQPolicy
    replay_buffer: OfflineReplayBuffer | DictOfflineReplayBuffer
    # Names of the policy's test-time knobs that the algorithm also takes as options (e.g. IFQL's n_samples).
    policy_knobs: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        policy: str | type[FlowQPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        dataset: DatasetSource | None = None,
        buffer_size: int = 1_000_000,
        learning_starts: int = 0,
        batch_size: int = 256,
        tau: float = 0.005,
        gamma: float = 0.99,
        q_agg: str = "mean",
        action_horizon: int = 1,
        n_flow_steps: int | None = None,
        train_freq: int | tuple[int, str] = 1,
        gradient_steps: int = 1,
        replay_buffer_class: type[ReplayBuffer] | None = None,
        replay_buffer_kwargs: dict[str, Any] | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ):
        # SB3's load builds the model with env=None and no setup, then sets the saved spaces.
        if env is None and _init_setup_model:
            raise ValueError(f"{type(self).__name__} needs an environment (or env id): it defines the spaces")
        if q_agg not in Q_AGGREGATIONS:
            raise ValueError(f"q_agg must be one of {Q_AGGREGATIONS}, got {q_agg!r}")
        policy_kwargs = dict(policy_kwargs or {})
        self.action_horizon = check_positive_int(action_horizon, "action_horizon")
        if self.action_horizon > 1 and env is not None:
            env = chunked_env(env, self.action_horizon, gamma)
        # An algorithm option, merged into the policy's arguments only when the policy is built (_setup_model), so
        # that policy_kwargs stays what the user passed and load(..., policy_kwargs=...) compares equal.
        self.n_flow_steps = None if n_flow_steps is None else check_positive_int(n_flow_steps, "n_flow_steps")
        super().__init__(
            policy,
            env,
            learning_rate,
            buffer_size=check_positive_int(buffer_size, "buffer_size"),
            learning_starts=check_positive_int(learning_starts, "learning_starts", minimum=0),
            batch_size=check_positive_int(batch_size, "batch_size"),
            tau=tau,
            gamma=gamma,
            train_freq=train_freq,
            gradient_steps=gradient_steps,
            replay_buffer_class=replay_buffer_class,
            replay_buffer_kwargs=replay_buffer_kwargs,
            policy_kwargs=policy_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            verbose=verbose,
            device=device,
            seed=seed,
            support_multi_env=True,
            sde_support=False,
            supported_action_spaces=None,
        )
        if not 0.0 < tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {tau}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        self.q_agg = q_agg
        self._dataset_source = dataset
        # Gradient steps taken by learn_offline, in total (``num_timesteps`` counts environment steps only).
        self.n_offline_steps = 0
        # The environment-step count while learn_offline runs (num_timesteps then counts gradient steps).
        self._offline_env_steps: int | None = None

    def _setup_model(self) -> None:
        check_box_action_space(self.action_space, type(self).__name__)
        if self.replay_buffer_class is None:
            dict_obs = isinstance(self.observation_space, spaces.Dict)
            self.replay_buffer_class = DictOfflineReplayBuffer if dict_obs else OfflineReplayBuffer
        if not issubclass(self.replay_buffer_class, OfflineDataMixin):
            raise TypeError(f"{type(self).__name__}'s replay buffer must hold offline data (OfflineDataMixin)")
        user_policy_kwargs = self.policy_kwargs
        options = self._policy_options()
        given_twice = [name for name in options if name in user_policy_kwargs and user_policy_kwargs[name] != options[name]]
        if given_twice:
            raise ValueError(
                f"{given_twice} given both as {type(self).__name__}'s arguments and in policy_kwargs, with different "
                "values: pass them as the algorithm's arguments only"
            )
        self.policy_kwargs = {**user_policy_kwargs, **options}
        try:
            super()._setup_model()
        finally:
            self.policy_kwargs = user_policy_kwargs
        if not isinstance(self.policy, FlowQPolicy):
            raise TypeError(f"{type(self).__name__} needs a FlowQPolicy, got {type(self.policy).__name__}")
        self.critic_batch_norm_stats = get_parameters_by_name(self.policy.critic, ["running_"])
        self.critic_batch_norm_stats_target = get_parameters_by_name(self.policy.critic_target, ["running_"])
        if self._dataset_source is not None:
            self.add_dataset(self._dataset_source)
            self._dataset_source = None

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_dataset_source", "_offline_env_steps"]

    def _policy_options(self) -> dict[str, Any]:
        """
        Algorithm options that are the policy's arguments (``n_flow_steps``, and the initial values of the policy's
        test-time knobs listed in ``policy_knobs``), merged into ``policy_kwargs`` when the policy is built. The knobs
        live on the policy afterwards (``model.policy.n_samples``), and a save records their current values.
        """
        options = {} if self.n_flow_steps is None else {"n_flow_steps": self.n_flow_steps}
        options.update({name: getattr(self, name) for name in self.policy_knobs})
        return options

    def add_dataset(self, dataset: DatasetSource) -> None:
        """
        Put offline transitions in the replay buffer (after any already there).

        :param dataset: a :class:`Demonstrations` or the path of a saved one
        :raises ValueError: when it is empty, holds NaN / inf, or does not fit the environment's spaces
        """
        demonstrations = dataset if isinstance(dataset, Demonstrations) else Demonstrations.load(dataset)
        if self.action_horizon > 1:
            demonstrations = self._chunked(demonstrations)
        if self._vec_normalize_env is not None:
            # Offline training would normalize with statistics the data never updated (and clip at their bounds).
            raise ValueError(
                f"{type(self).__name__}: offline datasets and VecNormalize are not supported together yet; normalize the "
                "dataset's observations and rewards beforehand, or train without VecNormalize"
            )
        demonstrations = in_env_image_layout(demonstrations, self.env, self.action_space)
        self.replay_buffer.add_offline(offline_data(demonstrations, self.policy))

    def _chunked(self, demonstrations: Demonstrations) -> Demonstrations:
        """
        A dataset of single actions as chunks of ``action_horizon`` (one already chunked is kept): every row starts a
        chunk inside its episode (:meth:`~sb3_flow.Demonstrations.chunked`); the chunks cut short by a truncation are
        left out, as QC's ``valid`` mask leaves them out of its critic loss (they would bootstrap with ``gamma ** H``
        from an observation fewer than H steps later), while the chunks that end in a termination stay (no bootstrap).
        """
        chunk_size = int(np.prod(self.action_space.shape))
        if demonstrations.actions.reshape(len(demonstrations), -1).shape[1] == chunk_size:
            return demonstrations
        chunked = demonstrations.chunked(self.action_horizon, self.gamma)
        keep = chunked.chunk_steps == self.action_horizon
        keep |= chunked.demonstrations.terminations
        return chunked.demonstrations.select(np.flatnonzero(keep))

    @property
    def bc_policy(self) -> FlowPolicy:
        """
        The flow policy (a :class:`~sb3_flow.policies.FlowPolicy`, usable as any method's base): behaviour-cloned in
        FQL; in FBRAC it is the actor itself, trained against Q.
        """
        return self.policy.bc_policy

    def sample_batch(self, batch_size: int) -> Any:
        """
        One minibatch for :meth:`gradient_step`: uniform over the offline and online transitions of the replay buffer.

        :param batch_size: number of transitions
        """
        return self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)

    def gradient_step(self, data: ReplayBufferSamples) -> dict[str, float]:
        """
        The algorithm's losses and optimizer steps for one minibatch (the target critic is updated by the caller).

        :param data: a minibatch of the replay buffer (normalized actions; ``dones`` are terminations only)
        :return: scalars to average over the update and log under ``train/``
        """
        raise NotImplementedError

    def noise_draws(self, batch_size: int) -> th.Tensor:
        """Standard normal initial noises z for a batch, shape (batch, action_dim)."""
        return th.randn((batch_size, self.policy.action_dim), device=self.device)

    def td_targets(self, data: ReplayBufferSamples, next_actions: th.Tensor) -> th.Tensor:
        """
        ``r + gamma * (1 - terminated) * agg_k Q_target_k(s', a')`` with ``q_agg``: a truncated episode end still
        bootstraps (the buffer's ``dones`` are terminations only).

        :param data: a minibatch
        :param next_actions: normalized actions at the next observations, shape (batch, action_dim)
        :return: shape (batch,)
        """
        with th.no_grad():
            next_q = aggregate_q(self.policy.q_values(data.next_observations, next_actions, target=True), self.q_agg)
            return self.bootstrapped_targets(data, next_q)

    def bootstrapped_targets(self, data: ReplayBufferSamples, next_values: th.Tensor) -> th.Tensor:
        """
        ``r + gamma * (1 - terminated) * next_values``: the one place where terminations (not truncations) stop the
        bootstrap.

        :param data: a minibatch
        :param next_values: values of the next observations, shape (batch,)
        :return: shape (batch,)
        """
        # A Python float (or the n-step buffer's tensor): never a CPU tensor beside CUDA ones. Over chunks of H actions
        # the next observation is H steps later: QC's gamma ** H.
        if getattr(data, "discounts", None) is not None:
            discounts = data.discounts.flatten()
        else:
            discounts = self.gamma ** getattr(self, "action_horizon", 1)
        return data.rewards.flatten() + (1.0 - data.dones.flatten()) * discounts * next_values

    def critic_loss(self, data: ReplayBufferSamples, next_actions: th.Tensor) -> th.Tensor:
        """Squared TD error of every critic, averaged over critics and batch (FQL's critic loss)."""
        targets = self.td_targets(data, next_actions)
        return (self.policy.q_values(data.observations, data.actions) - targets.unsqueeze(0)).pow(2).mean()

    def bc_flow_loss(self, data: ReplayBufferSamples) -> th.Tensor:
        """The flow's CFM loss on the minibatch's actions, one uniform (t, noise) draw each, as FQL trains its flow."""
        actions = data.actions.reshape(len(data.actions), -1)
        times = sample_times((len(actions), 1), "uniform", device=self.device)
        noises = self.noise_draws(len(actions)).unsqueeze(1)
        return self.policy.bc_policy.cfm_loss(data.observations, actions, times, noises).mean()

    @staticmethod
    def q_maximization_loss(q_values: th.Tensor, normalize: bool) -> th.Tensor:
        """
        ``-mean Q`` of the policy's actions, divided by ``mean |Q|`` (no gradient) when ``normalize`` (FQL's
        ``normalize_q_loss``: the policy-extraction weight then does not depend on the reward scale).

        :param q_values: shape (batch,)
        :param normalize: divide by mean |Q|
        """
        loss = -q_values.mean()
        return loss / q_values.abs().mean().detach().clamp(min=1e-8) if normalize else loss

    def optimizer_step(self, optimizer: th.optim.Optimizer, loss: th.Tensor, what: str) -> None:
        """Check the loss, then step ``optimizer`` on it (the networks are stepped in turn within a gradient step)."""
        untouched = f"no step was taken on the {what} (networks stepped earlier in this gradient step were updated)"
        check_finite_loss(loss, type(self).__name__, what, self._n_updates, untouched)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def _set_learning_rates(self) -> None:
        learning_rate = self.lr_schedule(self._current_progress_remaining)
        check_finite_learning_rate(learning_rate, type(self).__name__, self._current_progress_remaining)
        for optimizer in self.policy.optimizers():
            update_learning_rate(optimizer, learning_rate)
        self.logger.record("train/learning_rate", learning_rate)

    def train(self, gradient_steps: int, batch_size: int = 256) -> None:
        """``gradient_steps`` minibatch updates from the replay buffer (offline and online data together)."""
        self.policy.set_training_mode(True)
        self._set_learning_rates()
        stats: dict[str, list[float]] = {}
        for _ in range(gradient_steps):
            data = self.sample_batch(batch_size)
            for name, value in self.gradient_step(data).items():
                stats.setdefault(name, []).append(value)
            polyak_update(self.policy.critic.parameters(), self.policy.critic_target.parameters(), self.tau)
            polyak_update(self.critic_batch_norm_stats, self.critic_batch_norm_stats_target, 1.0)
            self._n_updates += 1
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        for name, values in stats.items():
            self.logger.record(f"train/{name}", float(np.mean(values)))

    def learn_offline(
        self: SelfFlowOffPolicy,
        n_gradient_steps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1000,
        tb_log_name: str | None = None,
        progress_bar: bool = False,
    ) -> SelfFlowOffPolicy:
        """
        Train on the replay buffer's data without acting: ``n_gradient_steps`` gradient steps. The environment is not
        touched (a model loaded without one can train offline), and an online episode in progress goes on afterwards.

        While it runs, ``num_timesteps`` counts the offline gradient steps taken so far (over all calls), as in
        :class:`~sb3_flow.FlowBC`, so that SB3's callbacks (``EvalCallback(eval_freq=N)`` evaluates every N gradient
        steps, ``CheckpointCallback``) and the logger's x-axis mean gradient steps; a save during the offline phase
        still records the environment-step count. Afterwards ``num_timesteps`` is the environment-step count again and
        ``n_offline_steps`` holds the gradient steps taken offline. ``learn(total_timesteps)`` then continues online.
        Callbacks see the locals ``total_timesteps`` (the offline step count to reach) and ``n_gradient_steps``.

        :param n_gradient_steps: number of gradient steps
        :param callback: SB3 callback(s), called once per gradient step
        :param log_interval: dump the logs every this many gradient steps
        :param tb_log_name: tensorboard run name (default: the class name with "_offline")
        :param progress_bar: show a progress bar
        :return: self
        """
        n_gradient_steps = check_positive_int(n_gradient_steps, "n_gradient_steps")
        if self.replay_buffer.size() == 0:
            raise ValueError(f"{type(self).__name__}.learn_offline needs data: pass dataset= or call add_dataset() first")
        total_timesteps = self.n_offline_steps + n_gradient_steps
        if not self._custom_logger:
            self._logger = configure_logger(
                self.verbose, self.tensorboard_log, tb_log_name or f"{type(self).__name__}_offline", True
            )
        callback = self._init_callback(callback, progress_bar=False)
        self._offline_env_steps = self.num_timesteps
        self.num_timesteps = self.n_offline_steps
        callback.on_training_start(locals(), globals())
        try:
            with tqdm(total=n_gradient_steps, desc=f"{type(self).__name__} offline", disable=not progress_bar) as bar:
                for step in range(n_gradient_steps):
                    self._update_current_progress_remaining(step, n_gradient_steps)
                    self.train(gradient_steps=1, batch_size=self.batch_size)
                    self.n_offline_steps += 1
                    self.num_timesteps = self.n_offline_steps
                    bar.update(1)
                    callback.update_locals(locals())
                    if not callback.on_step():
                        break
                    if log_interval > 0 and self.n_offline_steps % log_interval == 0:
                        self.logger.record("time/offline_gradient_steps", self.n_offline_steps)
                        self.logger.dump(step=self.n_offline_steps)
            callback.on_training_end()
        finally:
            self.num_timesteps, self._offline_env_steps = self._offline_env_steps, None
        return self

    def save(self, path: Any, exclude: Any = None, include: Any = None) -> None:
        """SB3's ``save`` (atomic); during :meth:`learn_offline` it records the environment-step count."""
        if getattr(self, "_offline_env_steps", None) is None:
            super().save(path, exclude=exclude, include=include)
            return
        gradient_steps, self.num_timesteps = self.num_timesteps, self._offline_env_steps
        try:
            super().save(path, exclude=exclude, include=include)
        finally:
            self.num_timesteps = gradient_steps

    def save_replay_buffer(self, path: str | os.PathLike | io.BufferedIOBase) -> None:
        """
        Save the replay buffer, dataset included, as SB3 does (a pickle); an existing file is replaced only once the
        new one is complete.

        :param path: the file (``.pkl`` is appended when it has no suffix, as SB3 does), or a file object
        """
        if isinstance(path, io.IOBase):
            super().save_replay_buffer(path)
            return
        with atomic_target(with_suffix_if_missing(path, ".pkl")) as temporary:
            super().save_replay_buffer(temporary)

    def load_replay_buffer(self, path: str | os.PathLike | io.BufferedIOBase, truncate_last_traj: bool = True) -> None:
        """
        SB3's ``load_replay_buffer``, refusing a buffer that cannot hold this model's data.

        :raises TypeError: for a buffer without an offline block (e.g. SAC's)
        :raises ValueError: for one built for other spaces or another number of environments
        """
        previous = self.replay_buffer
        super().load_replay_buffer(path, truncate_last_traj)
        loaded = self.replay_buffer
        problem = None
        if not isinstance(loaded, OfflineDataMixin):
            problem = f"it is a {type(loaded).__name__}, without an offline block (OfflineDataMixin)"
        elif not spaces_match(loaded.observation_space, self.observation_space) or loaded.n_envs != self.n_envs:
            problem = f"it was made for {loaded.observation_space} with {loaded.n_envs} envs"
        if problem is not None:
            self.replay_buffer = previous
            raise (TypeError if "offline block" in problem else ValueError)(
                f"{path} is not a replay buffer for this {type(self).__name__}: {problem}"
            )

    @classmethod
    def load(  # type: ignore[override]
        cls: type[SelfFlowOffPolicy],
        path: Any,
        env: Any = None,
        device: th.device | str = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        dataset: DatasetSource | None = None,
        **kwargs: Any,
    ) -> SelfFlowOffPolicy:
        """
        Load a saved model (see SB3's ``load``). The replay buffer is not in the model file: restore it with
        :meth:`load_replay_buffer`, or put a dataset in it with ``dataset=`` (or :meth:`add_dataset`).

        :param dataset: offline transitions to put in the new model's replay buffer
        """
        if env is not None and isinstance(path, (str, os.PathLike)):
            # A model that acts in chunks is loaded onto an env that does too (an env id or a plain env is wrapped).
            saved = read_saved_numbers(
                str(existing_file(path, ".zip", what=f"saved {cls.__name__} model")), ("action_horizon", "gamma")
            )
            if saved.get("action_horizon", 1) > 1:
                env = chunked_env(env, int(saved["action_horizon"]), float(saved["gamma"]))
        model = super().load(path, env, device, custom_objects, print_system_info, force_reset, **kwargs)
        if dataset is not None:
            model.add_dataset(dataset)
        return model

    def learn(
        self: SelfFlowOffPolicy,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 4,
        tb_log_name: str | None = None,
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfFlowOffPolicy:
        """
        Online training: ``total_timesteps`` environment steps, appended to the replay buffer that holds the dataset
        (SB3's ``learn``; the tensorboard run is named after the algorithm unless ``tb_log_name`` is given).
        """
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name or type(self).__name__,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )
