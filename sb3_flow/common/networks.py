"""Networks shared by the flow policies: the time embedding and the velocity network."""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch as th
from torch import nn

from sb3_flow.common.flow import GridStep


class SinusoidalTimeEmbedding(nn.Module):
    """
    ``[t, sin(2 pi f_i t), cos(2 pi f_i t)]`` with geometrically spaced frequencies f_i in [1, max_frequency]
    (FPO uses an 8-d sin/cos embedding; FQL feeds the raw scalar, which is the first entry here).

    :param embedding_dim: output size, odd: 1 raw entry plus (embedding_dim - 1) / 2 frequencies
    :param max_frequency: the largest frequency
    """

    def __init__(self, embedding_dim: int = 17, max_frequency: float = 100.0):
        super().__init__()
        if embedding_dim < 3 or embedding_dim % 2 == 0:
            raise ValueError(f"time embedding_dim must be an odd integer >= 3, got {embedding_dim}")
        n_frequencies = (embedding_dim - 1) // 2
        frequencies = th.exp(th.linspace(0.0, math.log(max_frequency), n_frequencies)) * 2.0 * math.pi
        self.register_buffer("frequencies", frequencies, persistent=False)
        self.embedding_dim = embedding_dim

    def forward(self, t: th.Tensor) -> th.Tensor:
        """
        :param t: times of any shape
        :return: shape (*t.shape, embedding_dim)
        """
        angles = t.unsqueeze(-1) * self.frequencies
        return th.cat([t.unsqueeze(-1), th.sin(angles), th.cos(angles)], dim=-1)


class VelocityNetwork(nn.Module):
    """
    MLP v(features, x, t) whose first layer is split into an observation half, an action half and a time half, so
    that the observation half is computed once per action and not once per integration step.

    With ``net_arch=[]`` (SB3's linear policy) the first layer is the output layer: v is linear in the features, x and
    the time embedding.

    :param features_dim: size of the observation features
    :param action_dim: size of the (flattened) action
    :param net_arch: hidden layer sizes ([]: no hidden layer)
    :param activation_fn: activation class
    :param time_embedding_dim: size of the sinusoidal time embedding
    """

    def __init__(
        self,
        features_dim: int,
        action_dim: int,
        net_arch: list[int],
        activation_fn: type[nn.Module] = nn.GELU,
        time_embedding_dim: int = 17,
    ):
        super().__init__()
        if any(isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0 for size in net_arch):
            raise ValueError(f"net_arch must be a list of positive layer sizes, got {net_arch}")
        first = int(net_arch[0]) if net_arch else action_dim
        self.time_embedding = SinusoidalTimeEmbedding(time_embedding_dim)
        self.observation_projection = nn.Linear(features_dim, first)
        self.action_projection = nn.Linear(action_dim, first, bias=False)
        self.time_projection = nn.Linear(time_embedding_dim, first, bias=False)
        layers: list[nn.Module] = []
        if net_arch:
            layers.append(activation_fn())
            for in_size, out_size in itertools.pairwise(net_arch):
                layers += [nn.Linear(in_size, out_size), activation_fn()]
            layers.append(nn.Linear(net_arch[-1], action_dim))
        self.trunk = nn.Sequential(*layers)
        self._time_terms_cache: dict[int, tuple[th.Tensor, int, th.Tensor, th.Tensor]] = {}

    def time_terms(self, times: th.Tensor) -> th.Tensor:
        """
        Time half of the first layer for a 1-d tensor of times, shape (len(times), first_layer_size).

        Sampling evaluates the same K grid times again and again, so without autograd the result is cached until the
        weights change. The check compares the weight's values with a copy: version counters are not enough, since
        torch's fused Adam (the policies' default) updates parameters in place without bumping them.
        """
        if th.is_grad_enabled() or th.compiler.is_compiling():  # a compiled graph computes them once itself
            return self.time_projection(self.time_embedding(times))
        weight = self.time_projection.weight
        # Holding `times` in the entry keeps its id unique, so an identity check is enough for the times.
        entry = self._time_terms_cache.get(id(times))
        if entry is not None and entry[0] is times and entry[1] == times._version and _same_values(entry[2], weight):
            return entry[3]
        if len(self._time_terms_cache) >= 32:
            self._time_terms_cache.clear()
        terms = self.time_projection(self.time_embedding(times))
        self._time_terms_cache[id(times)] = (times, times._version, weight.detach().clone(), terms)
        return terms

    def condition(self, features: th.Tensor) -> th.Tensor:
        """Observation half of the first layer (bias included), shape (batch, first_layer_size)."""
        return self.observation_projection(features)

    def forward_conditioned(self, conditioning: th.Tensor, x: th.Tensor, t: th.Tensor) -> th.Tensor:
        """
        :param conditioning: output of :meth:`condition`, broadcastable against the action half
        :param x: points on the path, shape (..., action_dim)
        :param t: times, broadcastable against x.shape[:-1]
        :return: velocities shaped like x
        """
        hidden = conditioning + self.action_projection(x) + self.time_projection(self.time_embedding(t))
        return self.trunk(hidden)

    def forward(self, features: th.Tensor, x: th.Tensor, t: th.Tensor) -> th.Tensor:
        """Velocity for one (features, x, t) triple per row."""
        return self.forward_conditioned(self.condition(features), x, t)


def _same_values(copy: th.Tensor, tensor: th.Tensor) -> bool:
    """Whether ``tensor`` still holds the values of ``copy`` (on the same device, with the same dtype)."""
    return copy.device == tensor.device and copy.dtype == tensor.dtype and th.equal(copy, tensor)


def _direct_forwards(sequential: nn.Sequential) -> list:
    """
    The layers' ``forward`` methods, called directly inside the K-step loop: at the batch sizes of a rollout step
    ``nn.Module.__call__``'s bookkeeping costs as much as a small layer. Falls back to the module calls when any
    hook is registered, so hooks keep working.
    """
    modules = [sequential, *sequential]
    has_hooks = any(
        module._forward_hooks or module._forward_pre_hooks or module._backward_hooks for module in modules
    ) or bool(nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks)
    if has_hooks:
        return [sequential]
    return [layer.forward for layer in sequential]


class ConditionedVelocity:
    """
    The velocity field of one batch of observations, as :mod:`sb3_flow.common.flow` consumes it.

    :param network: the velocity network
    :param conditioning: the observation half of the first layer, shaped to broadcast against the x it will see
    """

    def __init__(self, network: VelocityNetwork, conditioning: th.Tensor):
        self.network = network
        self.conditioning = conditioning

    def __call__(self, x: th.Tensor, t: th.Tensor) -> th.Tensor:
        return self.network.forward_conditioned(self.conditioning, x, t)

    def on_grid(self, times: th.Tensor) -> GridStep:
        # Time-only terms of the first layer for every grid time in one call; each step is then one addmm.
        network = self.network
        time_terms = network.time_terms(times)
        if self.conditioning.dim() != 2:
            return lambda x, i: network.trunk(self.conditioning + network.action_projection(x) + time_terms[i])
        first_layer_bases = (self.conditioning.unsqueeze(0) + time_terms.unsqueeze(1)).unbind(0)
        action_weight_t = network.action_projection.weight.t()
        trunk_forwards = _direct_forwards(network.trunk)

        def step(x: th.Tensor, i: int) -> th.Tensor:
            hidden = th.addmm(first_layer_bases[i], x, action_weight_t)
            for forward in trunk_forwards:
                hidden = forward(hidden)
            return hidden

        return step
