"""In-sample critics (IQL) on the off-policy core: what IFQL and CFGRL share.

``V(s)`` is regressed with IQL's expectile loss onto ``agg_k Q_target_k(s, a)`` at the data's actions, and each
``Q_k(s, a)`` onto ``r + gamma * (1 - terminated) * V(s')``: no action outside the data is ever queried, so the critic
needs no policy and no behaviour constraint (Kostrikov, Nair and Levine, 2022). The BC flow trains beside them; the
methods differ only in how they use the critic to act (best-of-N, advantage conditioning).
"""

from __future__ import annotations

from typing import Any

import torch as th
from stable_baselines3.common.type_aliases import ReplayBufferSamples

from sb3_flow.bases.off_policy import FlowOffPolicyAlgorithm
from sb3_flow.common.critics import aggregate_q, check_expectile, expectile_loss
from sb3_flow.policies.flow_q import InSampleFlowQPolicy


class InSampleFlowAlgorithm(FlowOffPolicyAlgorithm):
    """
    Base of the flow methods with IQL critics. Per minibatch: a value step, a critic step, then a flow step
    (:meth:`flow_loss`, the BC flow's CFM loss here). The steps are taken in turn (the critic's target uses the value
    just stepped, CFGRL's labels the critics just stepped), as SB3's SAC steps its networks; the references take one
    joint step of the summed losses, with every term at the parameters before the step. The critic loss is averaged
    over the critics where the references sum it (half the scale; Adam makes that immaterial).

    Paper: https://arxiv.org/abs/2110.06169 (Kostrikov, Nair and Levine, 2022, "Offline Reinforcement Learning with
    Implicit Q-Learning")
    Reference implementation: https://github.com/seohongpark/fql (``agents/ifql.py``: ``value_loss``, ``critic_loss``)

    :param expectile: tau of the value's expectile loss (IFQL / CFGRL: 0.9; IDQL: 0.7)
    :param kwargs: see :class:`~sb3_flow.bases.off_policy.FlowOffPolicyAlgorithm`; ``q_agg`` aggregates the target
        critics in the value loss (IFQL: min)
    """

    policy: InSampleFlowQPolicy

    def __init__(self, *args: Any, expectile: float = 0.9, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.expectile = check_expectile(expectile)

    def _setup_model(self) -> None:
        super()._setup_model()
        if not isinstance(self.policy, InSampleFlowQPolicy):
            raise TypeError(f"{type(self).__name__} needs an InSampleFlowQPolicy, got {type(self.policy).__name__}")

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        optimizers = ["policy.bc_policy.optimizer", "policy.critic_optimizer", "policy.value_optimizer"]
        return ["policy", *optimizers], []

    def value_loss(self, data: ReplayBufferSamples) -> th.Tensor:
        """
        IQL's expectile regression of V(s) onto ``agg_k Q_target_k(s, a)`` at the data's actions.

        :param data: a minibatch
        """
        with th.no_grad():
            target_q = aggregate_q(self.policy.q_values(data.observations, data.actions, target=True), self.q_agg)
        return expectile_loss(target_q - self.policy.values(data.observations), self.expectile).mean()

    def in_sample_critic_loss(self, data: ReplayBufferSamples) -> th.Tensor:
        """
        Squared error of every Q_k(s, a) to ``r + gamma * (1 - terminated) * V(s')``, averaged over critics and batch.

        :param data: a minibatch
        """
        with th.no_grad():
            targets = self.bootstrapped_targets(data, self.policy.values(data.next_observations))
        return (self.policy.q_values(data.observations, data.actions) - targets.unsqueeze(0)).pow(2).mean()

    def flow_loss(self, data: ReplayBufferSamples) -> tuple[th.Tensor, dict[str, float]]:
        """
        The flow's loss and its logs (the BC flow's CFM loss; CFGRL conditions it on the advantage).

        :param data: a minibatch
        """
        loss = self.bc_flow_loss(data)
        return loss, {}

    def gradient_step(self, data: ReplayBufferSamples) -> dict[str, float]:
        value_loss = self.value_loss(data)
        self.optimizer_step(self.policy.value_optimizer, value_loss, "value loss")
        critic_loss = self.in_sample_critic_loss(data)
        self.optimizer_step(self.policy.critic_optimizer, critic_loss, "critic loss")
        flow_loss, logs = self.flow_loss(data)
        self.optimizer_step(self.policy.bc_policy.optimizer, flow_loss, "flow loss")
        return {"value_loss": value_loss.item(), "critic_loss": critic_loss.item(), "bc_flow_loss": flow_loss.item(), **logs}
