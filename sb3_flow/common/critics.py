"""Critic networks shared by the methods that learn from a critic: Q ensembles with optional layer normalization."""

from __future__ import annotations

import torch as th
from torch import nn

from sb3_flow.common.utils import check_finite_number

Q_AGGREGATIONS = ("mean", "min")


def mlp(
    input_dim: int, output_dim: int, net_arch: list[int], activation_fn: type[nn.Module], layer_norm: bool
) -> nn.Sequential:
    """
    ``Linear -> [LayerNorm] -> activation`` per hidden layer, then a linear output (FQL's ``MLP``; layer norm on the
    hidden layers as FQL's critics use it).

    :param input_dim: input size
    :param output_dim: output size
    :param net_arch: hidden layer sizes ([]: one linear layer)
    :param activation_fn: activation class
    :param layer_norm: normalize every hidden layer
    """
    layers: list[nn.Module] = []
    size = input_dim
    for hidden in net_arch:
        layers.append(nn.Linear(size, hidden))
        if layer_norm:
            layers.append(nn.LayerNorm(hidden))
        layers.append(activation_fn())
        size = hidden
    layers.append(nn.Linear(size, output_dim))
    return nn.Sequential(*layers)


class QEnsemble(nn.Module):
    """
    ``n_critics`` independent Q(s, a) networks on the same features.

    :param features_dim: size of the observation features
    :param action_dim: size of the flattened action
    :param n_critics: number of networks
    :param net_arch: hidden layer sizes of each
    :param activation_fn: activation class
    :param layer_norm: layer normalization on the hidden layers (FQL: on)
    """

    def __init__(
        self,
        features_dim: int,
        action_dim: int,
        n_critics: int = 2,
        net_arch: list[int] | None = None,
        activation_fn: type[nn.Module] = nn.GELU,
        layer_norm: bool = True,
    ):
        super().__init__()
        net_arch = [512, 512, 512, 512] if net_arch is None else list(net_arch)
        self.action_dim = action_dim
        self.q_networks = nn.ModuleList(
            mlp(features_dim + action_dim, 1, net_arch, activation_fn, layer_norm) for _ in range(n_critics)
        )

    def forward(self, features: th.Tensor, actions: th.Tensor) -> th.Tensor:
        """
        :param features: shape (batch, features_dim)
        :param actions: normalized actions, shape (batch, action_dim)
        :return: Q-values, shape (n_critics, batch)
        """
        inputs = th.cat([features, actions.reshape(actions.shape[0], -1)], dim=-1)
        return th.stack([network(inputs).squeeze(-1) for network in self.q_networks])


def aggregate_q(q_values: th.Tensor, how: str) -> th.Tensor:
    """
    :param q_values: shape (n_critics, batch)
    :param how: "mean" (FQL's default) or "min" (clipped double Q)
    :return: shape (batch,)
    """
    if how == "mean":
        return q_values.mean(dim=0)
    if how == "min":
        return q_values.min(dim=0).values
    raise ValueError(f"q_agg must be one of {Q_AGGREGATIONS}, got {how!r}")


def check_expectile(expectile: float) -> float:
    """
    :param expectile: IQL's tau
    :return: it, as a float
    :raises TypeError: when it is not a number
    :raises ValueError: unless it is strictly between 0 and 1
    """
    value = check_finite_number(expectile, "expectile")
    if not 0.0 < value < 1.0:
        raise ValueError(f"expectile must be a number in (0, 1) (IQL: 0.7 to 0.9), got {expectile!r}")
    return value


def expectile_loss(differences: th.Tensor, expectile: float) -> th.Tensor:
    """
    IQL's asymmetric squared loss of ``differences = Q - V``, per element: ``|tau - 1[diff < 0]| * diff^2``
    (Kostrikov, Nair and Levine, 2022, "Offline Reinforcement Learning with Implicit Q-Learning"). With ``tau > 0.5``
    positive differences weigh more, so V is pushed toward an upper expectile of Q over the data's actions: a
    maximum over in-sample actions, without querying Q at actions the data does not hold.

    :param differences: Q(s, a) - V(s), any shape
    :param expectile: tau in (0, 1)
    :return: shaped like ``differences``
    """
    weights = th.where(differences >= 0, expectile, 1.0 - expectile)
    return weights * differences.pow(2)
