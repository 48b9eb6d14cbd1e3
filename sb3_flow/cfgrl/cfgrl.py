"""CFGRL: a flow conditioned on an optimality label from IQL critics, guided toward "optimal" at test time."""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch as th
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, ReplayBufferSamples, Schedule

from sb3_flow.bases.in_sample import InSampleFlowAlgorithm
from sb3_flow.bases.off_policy import DatasetSource
from sb3_flow.cfgrl.policies import NOT_OPTIMAL_LABEL, OPTIMAL_LABEL, CFGRLPolicy, CnnCFGRLPolicy, MultiInputCFGRLPolicy
from sb3_flow.common.critics import aggregate_q
from sb3_flow.common.demonstrations import Demonstrations
from sb3_flow.common.flow import sample_times
from sb3_flow.common.utils import check_finite_number
from sb3_flow.policies.conditional import NULL_LABEL

ADVANTAGE_SOURCES = ("iql", "monte_carlo")


class MonteCarloBatch(NamedTuple):
    """An offline minibatch with the discounted Monte-Carlo return of each row (``advantage="monte_carlo"``)."""

    samples: ReplayBufferSamples
    returns: th.Tensor


class CFGRL(InSampleFlowAlgorithm):
    """
    Classifier-free guidance RL: the flow is trained on the data's actions conditioned on an optimality label
    ``o = 1[A(s, a) >= advantage_threshold]`` with ``A = min_k Q_k(s, a) - V(s)`` from IQL critics trained beside it;
    the label is dropped to null with probability ``label_dropout``, so one network learns the unconditional (BC) flow
    and the optimal-conditioned one. Acting samples ``v = v(null) + w (v(optimal) - v(null))``; the guidance weight w
    is chosen at test time (``model.policy.guidance_weight``) without retraining: w = 0 is behaviour cloning, w = 1
    plain conditioning, w > 1 extrapolates toward the optimal actions.

    Paper: https://arxiv.org/abs/2505.23458 (Frans, Park, Abbeel and Levine, 2025, "Diffusion Guidance Is a
    Controllable Policy Improvement Operator")
    Reference implementation: https://github.com/kvfrans/cfgrl_submit (``ogbench/agents/flowiql.py``)

    :param policy: "MlpPolicy", "CnnPolicy", "MultiInputPolicy" or a CFGRLPolicy class
    :param env: environment or its id
    :param dataset: offline transitions (:class:`~sb3_flow.Demonstrations` or its path)
    :param guidance_weight: w used when acting (authors' code: 1.0; their evaluations sweep {0.5, 1, 1.5, 2, 3} and
        up to 100); a test-time knob of the policy
    :param advantage: ``"iql"`` (the authors': ``A = min_k Q_k(s, a) - V(s)`` from IQL critics) or ``"monte_carlo"``
        (the RECAP / pi0.6*-style advantage indicator: ``A = G - V(s)`` with G the data's discounted Monte-Carlo return
        and V regressed on G; no TD learning; offline only, as the returns come from the dataset's episodes)
    :param advantage_threshold: the label is "optimal" where ``A >= advantage_threshold`` (authors: 0)
    :param label_dropout: probability of training a row with the null label (authors: 0.1)
    :param expectile: IQL expectile (authors: 0.9)
    :param q_agg: "min" (authors) or "mean" over the critics, in the value loss and the advantage
    :param learning_rate: learning rate of every network (authors: 3e-4)
    :param batch_size: minibatch size (authors: 1024 on OGBench; 256 here, as the other methods)
    :param tau: Polyak coefficient of the target critic (authors: 0.005)
    :param gamma: discount factor (authors: 0.99)
    :param n_flow_steps: Euler steps K (authors: 16); overrides ``policy_kwargs``
    :param kwargs: the off-policy options of :class:`~sb3_flow.FQL` (buffer_size, learning_starts, train_freq,
        gradient_steps, replay_buffer_class, policy_kwargs, tensorboard_log, verbose, seed, device, ...)
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": CFGRLPolicy,
        "CnnPolicy": CnnCFGRLPolicy,
        "MultiInputPolicy": MultiInputCFGRLPolicy,
    }
    policy_knobs = ("guidance_weight",)
    policy: CFGRLPolicy

    def __init__(
        self,
        policy: str | type[CFGRLPolicy],
        env: GymEnv | str,
        dataset: DatasetSource | None = None,
        guidance_weight: float = 1.0,
        advantage: str = "iql",
        advantage_threshold: float = 0.0,
        label_dropout: float = 0.1,
        expectile: float = 0.9,
        q_agg: str = "min",
        learning_rate: float | Schedule = 3e-4,
        batch_size: int = 256,
        tau: float = 0.005,
        gamma: float = 0.99,
        n_flow_steps: int | None = 16,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
        **kwargs: Any,
    ):
        super().__init__(
            policy,
            env,
            expectile=expectile,
            dataset=dataset,
            learning_rate=learning_rate,
            batch_size=batch_size,
            tau=tau,
            gamma=gamma,
            q_agg=q_agg,
            n_flow_steps=n_flow_steps,
            device=device,
            _init_setup_model=_init_setup_model,
            **kwargs,
        )
        if advantage not in ADVANTAGE_SOURCES:
            raise ValueError(f"advantage must be one of {ADVANTAGE_SOURCES}, got {advantage!r}")
        self.advantage = advantage
        # Monte-Carlo returns of the offline rows, in the replay buffer's order (the "monte_carlo" advantage).
        self._offline_returns: np.ndarray | None = None
        self.guidance_weight = check_finite_number(guidance_weight, "guidance_weight")
        self.advantage_threshold = check_finite_number(advantage_threshold, "advantage_threshold")
        self.label_dropout = check_finite_number(label_dropout, "label_dropout", minimum=0.0)
        if self.label_dropout >= 1.0:
            raise ValueError(f"label_dropout must be in [0, 1): at 1 no row trains the labelled flow, got {label_dropout}")
        if _init_setup_model:
            self._setup_model()

    def _policy_options(self) -> dict[str, Any]:
        return {**super()._policy_options(), "q_agg": self.q_agg}

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_offline_returns"]

    def add_dataset(self, dataset: DatasetSource) -> None:
        """
        Put offline transitions in the replay buffer; with ``advantage="monte_carlo"`` also keep their discounted
        Monte-Carlo returns (:meth:`~sb3_flow.Demonstrations.returns_to_go`), row for row.

        :param dataset: a :class:`~sb3_flow.Demonstrations` or the path of a saved one
        """
        demonstrations = dataset if isinstance(dataset, Demonstrations) else Demonstrations.load(dataset)
        if self.advantage == "monte_carlo" and self.action_horizon > 1:
            raise ValueError("advantage='monte_carlo' takes returns per step: it does not combine with action_horizon > 1")
        super().add_dataset(demonstrations)
        if self.advantage == "monte_carlo":
            returns = demonstrations.returns_to_go(self.gamma)
            parts = [returns] if self._offline_returns is None else [self._offline_returns, returns]
            self._offline_returns = np.concatenate(parts).astype(np.float32)

    def sample_batch(self, batch_size: int) -> Any:
        if self.advantage != "monte_carlo":
            return super().sample_batch(batch_size)
        if self._offline_returns is None:
            raise ValueError("advantage='monte_carlo' needs a dataset: pass dataset= or call add_dataset()")
        rows = np.random.randint(0, len(self._offline_returns), size=batch_size)
        samples = self.replay_buffer._offline_samples(rows, self._vec_normalize_env)
        return MonteCarloBatch(samples, th.as_tensor(self._offline_returns[rows], device=self.device))

    def learn(self, *args: Any, **kwargs: Any) -> Any:
        """Online training (see :meth:`FlowOffPolicyAlgorithm.learn`); not with ``advantage="monte_carlo"``."""
        if self.advantage == "monte_carlo":
            raise ValueError(
                "advantage='monte_carlo' learns offline only (learn_offline): online transitions have no Monte-Carlo "
                "returns until their episode ends; use advantage='iql' to continue online"
            )
        return super().learn(*args, **kwargs)

    def gradient_step(self, data: Any) -> dict[str, float]:
        if not isinstance(data, MonteCarloBatch):
            return super().gradient_step(data)
        # RECAP-style: V regresses the Monte-Carlo returns, the label is 1[G - V(s) >= threshold]; no critic step.
        samples, returns = data
        value_loss = (self.policy.values(samples.observations) - returns).pow(2).mean()
        self.optimizer_step(self.policy.value_optimizer, value_loss, "value loss")
        with th.no_grad():
            advantages = returns - self.policy.values(samples.observations)
        flow_loss, logs = self.labelled_flow_loss(samples, advantages)
        self.optimizer_step(self.policy.bc_policy.optimizer, flow_loss, "flow loss")
        return {"value_loss": value_loss.item(), "bc_flow_loss": flow_loss.item(), **logs}

    def optimality_labels(self, data: ReplayBufferSamples) -> th.Tensor:
        """
        "optimal" (2) where ``agg_k Q_k(s, a) - V(s) >= advantage_threshold``, else "not optimal" (1), then null (0)
        with probability ``label_dropout``.

        :param data: a minibatch
        :return: one label per row, shape (batch,)
        """
        with th.no_grad():
            q_values = aggregate_q(self.policy.q_values(data.observations, data.actions), self.q_agg)
            advantages = q_values - self.policy.values(data.observations)
        return self.labels_from_advantages(advantages)

    def labels_from_advantages(self, advantages: th.Tensor) -> th.Tensor:
        """
        "optimal" (2) where ``advantages >= advantage_threshold``, else "not optimal" (1), then null (0) with
        probability ``label_dropout``.

        :param advantages: one per row, shape (batch,)
        """
        optimal = advantages >= self.advantage_threshold
        labels = th.where(optimal, OPTIMAL_LABEL, NOT_OPTIMAL_LABEL)
        dropped = th.rand(labels.shape, device=labels.device) < self.label_dropout
        return th.where(dropped, NULL_LABEL, labels)

    def flow_loss(self, data: ReplayBufferSamples) -> tuple[th.Tensor, dict[str, float]]:
        return self.labelled_flow_loss(data, None)

    def labelled_flow_loss(
        self, data: ReplayBufferSamples, advantages: th.Tensor | None
    ) -> tuple[th.Tensor, dict[str, float]]:
        """
        The conditioned flow's CFM loss on the data's actions with their labels.

        :param data: a minibatch
        :param advantages: the rows' advantages (None: from the IQL critics, :meth:`optimality_labels`)
        """
        labels = self.optimality_labels(data) if advantages is None else self.labels_from_advantages(advantages)
        actions = data.actions.reshape(len(data.actions), -1)
        times = sample_times((len(actions), 1), "uniform", device=self.device)
        noises = self.noise_draws(len(actions)).unsqueeze(1)
        # The labels were made above, in range: no check (it would read them back from the device every step).
        loss = self.policy.bc_policy.labelled_cfm_loss(data.observations, actions, labels, times, noises, False).mean()
        return loss, {"optimal_fraction": (labels == OPTIMAL_LABEL).float().mean().item()}
