"""Critic-gradient guidance: a velocity modifier for :func:`sb3_flow.common.flow.integrate` that pushes every
integration step up the gradient of a critic (learning-free; the flow's weights are not trained)."""

from __future__ import annotations

from collections.abc import Callable

import torch as th

from sb3_flow.common.flow import VelocityModifier

# Normalized actions (batch, action_dim) -> one value per row, shape (batch,); the observations are bound in.
ActionScore = Callable[[th.Tensor], th.Tensor]


def critic_gradient_guidance(score: ActionScore, scale: float) -> VelocityModifier:
    """
    ``v' = v + scale * grad_a Q(s, a_hat)`` at ``a_hat = x_t + (1 - t) * v``, the action the current velocity points
    to (Q-guided flow, QGF: https://github.com/Sjtu-hyg/qgf ``agents/qgf.py``; CGQL:
    https://github.com/ColinQiyangLi/qam ``agents/cgql.py``).

    ``a_hat`` is **not** clipped to [-1, 1] before the critic: clipping zeroes the gradient of every coordinate outside
    the box (QGF clips, and loses its guidance there); the final action is still clipped by the sampler.

    :param score: Q of normalized actions for the batch being sampled, shape (batch,) (e.g. the mean or min over an
        ensemble); differentiable in the actions
    :param scale: lambda; 0 leaves v unchanged (QGF uses 0.01 to 0.1, depending on the scale of Q)
    :return: a modifier (x, t, v) -> v'
    """

    def modifier(x: th.Tensor, t: th.Tensor, velocity: th.Tensor) -> th.Tensor:
        # Sampling runs under no_grad; the gradient is taken with respect to the estimate only (no weight gradients).
        with th.enable_grad():
            estimate = (x + (1.0 - t) * velocity).detach().requires_grad_(True)
            (gradient,) = th.autograd.grad(score(estimate).sum(), estimate)
        return th.add(velocity, gradient, alpha=scale)

    return modifier
