"""The flow-matching math of sb3-flow, in one place.

Every method in the library (FlowBC, FlowPPO, ReinFlow, DSRL, FQL, CFGRL, guidance) uses the functions of this
module and nothing else for the interpolation path, the conditional flow matching (CFM) loss, time sampling and
integration. The convention is the one of Lipman et al. (2023), "Flow Matching for Generative Modeling":

    x_t = (1 - t) * x0 + t * a,   x0 ~ N(0, I) at t = 0,   the action a at t = 1,   target velocity a - x0.

(openpi / pi0 use the reverse convention; formulas copied from there flip signs.)

A *velocity field* is any callable ``v(x, t)`` returning a tensor shaped like ``x``; ``t`` broadcasts against
``x.shape[:-1]``. A velocity field that wants to hoist time-only work out of the integration loop (the policies do:
the time embedding of every grid point is computed in one batched call) may also define ``on_grid(times)`` returning
``step(x, i)`` = the velocity at ``times[i]``; :func:`integrate` uses it when present.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch as th

from sb3_flow.common.utils import check_positive_finite, check_positive_int

INTEGRATION_METHODS = ("euler", "midpoint")
TIME_SAMPLING_MODES = ("uniform", "beta", "grid")
CFM_LOSS_WEIGHTINGS = ("velocity", "noise")

VelocityFn = Callable[[th.Tensor, th.Tensor], th.Tensor]
# (x_k, t_k, k) -> per-dimension std of the Gaussian transition x_k -> x_{k+1}, broadcastable to x_k
NoiseStdFn = Callable[[th.Tensor, th.Tensor, int], th.Tensor]
# (x, t, v) -> modified velocity, e.g. classifier-free or critic-gradient guidance
VelocityModifier = Callable[[th.Tensor, th.Tensor, th.Tensor], th.Tensor]
GridStep = Callable[[th.Tensor, int], th.Tensor]


class GridVelocityField(Protocol):
    """A velocity field that can precompute its time-only terms for a fixed list of times."""

    def __call__(self, x: th.Tensor, t: th.Tensor) -> th.Tensor: ...

    def on_grid(self, times: th.Tensor) -> GridStep: ...


def check_n_flow_steps(n_flow_steps: int) -> int:
    """
    Validate a number of integration steps.

    :param n_flow_steps: number of Euler / midpoint steps from noise to action
    :return: the same number, as an int
    :raises ValueError: when it is not a positive integer
    """
    return check_positive_int(n_flow_steps, "n_flow_steps")


def interpolate(noise: th.Tensor, actions: th.Tensor, times: th.Tensor) -> th.Tensor:
    """
    Point ``x_t = (1 - t) * noise + t * actions`` on the straight path from noise (t=0) to action (t=1).

    :param noise: x0, shape (..., action_dim)
    :param actions: a, broadcastable to ``noise``
    :param times: t, shape ``noise.shape[:-1]`` (broadcastable)
    :return: x_t, shaped like ``noise``
    """
    t = times.unsqueeze(-1)
    return (1.0 - t) * noise + t * actions


def target_velocity(noise: th.Tensor, actions: th.Tensor) -> th.Tensor:
    """
    Velocity of the straight path, ``a - x0``: the regression target of the CFM loss.

    :param noise: x0
    :param actions: a
    :return: a - x0
    """
    return actions - noise


def cfm_loss(velocity_fn: VelocityFn, actions: th.Tensor, times: th.Tensor, noises: th.Tensor) -> th.Tensor:
    """
    Conditional flow matching loss for every (sample, draw) pair, on caller-supplied draws.

    FPO (McAllister et al., 2025, "Flow Policy Optimization") re-evaluates this loss on the very same (t, noise) pairs
    it drew at rollout time, which is why the draws are inputs and the result is not reduced over draws.

    :param velocity_fn: v(x, t); called once with x of shape (batch, n_draws, action_dim), t of shape (batch, n_draws)
    :param actions: target actions in the normalized box, shape (batch, action_dim)
    :param times: shape (batch, n_draws)
    :param noises: shape (batch, n_draws, action_dim)
    :return: per-(sample, draw) squared error averaged over action dimensions, shape (batch, n_draws)
    """
    if actions.dim() != 2 or times.dim() != 2 or noises.dim() != 3:
        raise ValueError(
            "cfm_loss expects actions (batch, action_dim), times (batch, n_draws) and noises (batch, n_draws, action_dim); "
            f"got {tuple(actions.shape)}, {tuple(times.shape)}, {tuple(noises.shape)}"
        )
    if noises.shape[:2] != times.shape or noises.shape[0] != actions.shape[0] or noises.shape[2] != actions.shape[1]:
        raise ValueError(
            f"cfm_loss shapes disagree: actions {tuple(actions.shape)}, times {tuple(times.shape)}, "
            f"noises {tuple(noises.shape)}"
        )
    targets = actions.unsqueeze(1)
    x_t = interpolate(noises, targets, times)
    predicted = velocity_fn(x_t, times)
    return (predicted - target_velocity(noises, targets)).pow(2).mean(dim=-1)


def cfm_loss_weights(times: th.Tensor, weighting: str) -> th.Tensor | float:
    """
    Per-draw weights that turn the velocity CFM loss of :func:`cfm_loss` into the loss of another parameterization.

    ``"velocity"``: 1, the plain CFM loss. ``"noise"``: ``t^2``, the squared error of the noise recovered from the
    predicted velocity, ``x0_hat = x_t - t * v``, since ``x0 - x0_hat = t * (v - (a - x0))``. This is FPO's default
    ("u_but_supervise_as_eps", McAllister et al., 2025; ``(1 - t)^2`` in its reverse time convention): it takes weight
    off the noise end of the path, where the per-draw losses vary most.

    :param times: t of the draws, any shape
    :param weighting: "velocity" or "noise"
    :return: weights broadcastable against per-draw losses of ``times``' shape
    """
    if weighting == "velocity":
        return 1.0
    if weighting == "noise":
        return times.pow(2)
    raise ValueError(f"cfm_loss_weighting must be one of {CFM_LOSS_WEIGHTINGS}, got {weighting!r}")


def time_grid(n_steps: int, device: th.device | str = "cpu") -> th.Tensor:
    """
    The K left-end times ``t_k = k / K`` at which a K-step Euler integration evaluates the velocity.

    :param n_steps: K
    :param device: torch device
    :return: shape (K,)
    """
    check_n_flow_steps(n_steps)
    return th.arange(n_steps, device=device, dtype=th.float32) / n_steps


# pi0's Beta(1.5, 1) in openpi's reverse convention (t = 1 noise), expressed in ours: more times near the noise end.
PI0_BETA_PARAMS = (1.0, 1.5)


def sample_times(
    shape: tuple[int, ...],
    mode: str = "uniform",
    n_grid_points: int = 10,
    beta_params: tuple[float, float] = PI0_BETA_PARAMS,
    device: th.device | str = "cpu",
    generator: th.Generator | None = None,
) -> th.Tensor:
    """
    Draw training times for the CFM loss.

    :param shape: output shape, e.g. (batch, n_draws)
    :param mode: ``"uniform"`` (t ~ U(0, 1)); ``"beta"`` (t ~ Beta(a, b)); ``"grid"`` (t uniform over the K points
        of :func:`time_grid`, as FPO does so that training times match sampling times)
    :param n_grid_points: K, for ``mode="grid"``
    :param beta_params: (a, b), for ``mode="beta"``. The default (1, 1.5) is pi0's Beta(1.5, 1), which openpi draws in
        its reverse time convention (t = 1 at the noise): both favour the noise end of the path.
    :param device: torch device
    :param generator: optional torch generator; every mode draws from it alone, so a seeded generator gives the same
        times again and leaves the global random state untouched
    :return: times in [0, 1], shape ``shape``
    """
    if mode == "uniform":
        return th.rand(shape, device=device, generator=generator)
    if mode == "grid":
        check_n_flow_steps(n_grid_points)
        index = th.randint(0, n_grid_points, shape, device=device, generator=generator)
        return index.float() / n_grid_points
    if mode == "beta":
        if len(beta_params) != 2:
            raise ValueError(f"beta_params must be two concentrations (a, b), got {beta_params!r}")
        a, b = (check_positive_finite(value, "beta_params") for value in beta_params)
        # Beta(a, b) = X / (X + Y) with X ~ Gamma(a), Y ~ Gamma(b); in log space the ratio is a sigmoid, which stays
        # exact where both gammas underflow (small concentrations).
        log_x = _log_gamma_samples(a, shape, device, generator)
        log_y = _log_gamma_samples(b, shape, device, generator)
        return th.sigmoid(log_x - log_y)
    raise ValueError(f"time sampling mode must be one of {TIME_SAMPLING_MODES}, got {mode!r}")


def _log_gamma_samples(
    concentration: float, shape: tuple[int, ...], device: th.device | str, generator: th.Generator | None
) -> th.Tensor:
    """
    Logarithms of Gamma(concentration, 1) draws by Marsaglia and Tsang's (2000) rejection method, from normal and
    uniform draws of ``generator`` (torch's own Gamma sampler takes no generator).
    """
    # Below 1 the method needs a boost: Gamma(c) = Gamma(c + 1) * U^(1 / c).
    boosted = concentration < 1.0
    d = (concentration + 1.0 if boosted else concentration) - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    n_samples = math.prod(shape)
    log_samples = th.empty(n_samples, device=device)
    pending = th.arange(n_samples, device=device)
    while pending.numel() > 0:  # each round accepts more than 95% of what is left
        x = th.randn(pending.numel(), device=device, generator=generator)
        u = th.rand(pending.numel(), device=device, generator=generator)
        v = (1.0 + c * x).pow(3)
        positive = v > 0
        log_v = th.log(th.where(positive, v, th.ones_like(v)))
        accept = positive & (th.log(u) < 0.5 * x.pow(2) + d - d * v + d * log_v)
        log_samples[pending[accept]] = math.log(d) + log_v[accept]
        pending = pending[~accept]
    if boosted:
        log_samples = log_samples + th.log(th.rand(n_samples, device=device, generator=generator)) / concentration
    return log_samples.reshape(shape)


def gaussian_log_prob(x: th.Tensor, mean: th.Tensor, std: th.Tensor) -> th.Tensor:
    """
    Log-density of a diagonal Gaussian, summed over the last dimension.

    :param x: sample, shape (..., dim)
    :param mean: mean, broadcastable
    :param std: standard deviation, broadcastable, > 0
    :return: shape x.shape[:-1]
    """
    std = std.expand_as(x) if std.dim() > 0 else std * th.ones_like(x)
    z = (x - mean) / std
    return (-0.5 * z.pow(2) - th.log(std) - 0.5 * math.log(2.0 * math.pi)).sum(dim=-1)


@dataclass
class FlowSample:
    """
    What :func:`integrate` returns.

    :param actions: the final point x_1 of the integration, before any clipping, shape (batch, action_dim)
    :param chain: x_0 .. x_K stacked, shape (K + 1, batch, action_dim), when asked for (always with a noise hook)
    :param step_log_probs: Gaussian log-probability of every noisy transition, shape (K, batch), with a noise hook
    """

    actions: th.Tensor
    chain: th.Tensor | None = None
    step_log_probs: th.Tensor | None = None


def _grid_step(velocity_fn: VelocityFn | GridVelocityField, eval_times: th.Tensor) -> GridStep:
    on_grid = getattr(velocity_fn, "on_grid", None)
    if on_grid is not None:
        return on_grid(eval_times)
    return lambda x, i: velocity_fn(x, eval_times[i])


@functools.lru_cache(maxsize=64)
def _evaluation_times(n_steps: int, method: str, device: th.device) -> th.Tensor:
    """
    Times at which the integrator evaluates the field, in call order (midpoint interleaves t_k and t_k + dt/2).

    Cached, so that the same tensor comes back for the same grid and velocity fields can cache their time terms;
    never modify the result in place.
    """
    grid = time_grid(n_steps, device)
    if method == "euler":
        return grid
    if method == "midpoint":
        return th.stack([grid, grid + 0.5 / n_steps], dim=1).reshape(-1)
    raise ValueError(f"integration method must be one of {INTEGRATION_METHODS}, got {method!r}")


def integrate(
    velocity_fn: VelocityFn | GridVelocityField,
    noise: th.Tensor,
    n_steps: int,
    method: str = "euler",
    noise_std_fn: NoiseStdFn | None = None,
    velocity_modifier: VelocityModifier | None = None,
    step_noises: th.Tensor | None = None,
    return_chain: bool = False,
    return_log_probs: bool = True,
) -> FlowSample:
    """
    Integrate dx/dt = v(x, t) from t = 0 (``noise``) to t = 1 in ``n_steps`` equal steps.

    With ``noise_std_fn`` the integration becomes the Markov chain of ReinFlow (Zhang et al., 2025,
    "ReinFlow: Fine-tuning Flow Matching Policy with Online Reinforcement Learning"):
    ``x_{k+1} ~ N(mean_k, std_k^2)`` with ``mean_k`` the deterministic step, and the chain and per-step
    log-probabilities are returned.

    :param velocity_fn: the velocity field v(x, t) (optionally with ``on_grid``, see the module docstring)
    :param noise: x0, shape (batch, action_dim)
    :param n_steps: K >= 1
    :param method: ``"euler"`` or ``"midpoint"``
    :param noise_std_fn: per-step noise hook (x_k, t_k, k) -> std; None for the deterministic ODE
    :param velocity_modifier: (x, t, v) -> v', applied to every velocity evaluation (guidance)
    :param step_noises: optional standard normal draws for the noisy transitions, shape (K, batch, action_dim)
    :param return_chain: also return x_0 .. x_K
    :param return_log_probs: with a noise hook, also compute the per-step log-probabilities (a caller that
        re-evaluates the chain later with :func:`chain_log_probs` can skip them)
    :return: a :class:`FlowSample`
    """
    check_n_flow_steps(n_steps)
    # Tracing for a compiled graph (sb3_flow.common.compiled_sampler) bypasses the cache, which dynamo cannot guard.
    evaluation_times = _evaluation_times.__wrapped__ if th.compiler.is_compiling() else _evaluation_times
    eval_times = evaluation_times(n_steps, method, noise.device)
    step = _grid_step(velocity_fn, eval_times)
    if velocity_modifier is not None:
        unmodified_step = step

        def step(x: th.Tensor, i: int) -> th.Tensor:
            return velocity_modifier(x, eval_times[i], unmodified_step(x, i))

    if step_noises is not None and step_noises.shape != (n_steps, *noise.shape):
        raise ValueError(f"step_noises must have shape {(n_steps, *noise.shape)}, got {tuple(step_noises.shape)}")

    dt = 1.0 / n_steps
    keep_chain = return_chain or noise_std_fn is not None
    x = noise
    chain = [x] if keep_chain else None
    log_probs = []
    for k in range(n_steps):
        if method == "euler":
            mean = th.add(x, step(x, k), alpha=dt)
        else:
            mean = th.add(x, step(th.add(x, step(x, 2 * k), alpha=0.5 * dt), 2 * k + 1), alpha=dt)
        if noise_std_fn is None:
            x = mean
        else:
            std = noise_std_fn(x, eval_times[k if method == "euler" else 2 * k], k)
            eps = th.randn_like(mean) if step_noises is None else step_noises[k]
            x = mean + std * eps
            if return_log_probs:
                log_probs.append(gaussian_log_prob(x, mean, std))
        if chain is not None:
            chain.append(x)
    return FlowSample(
        actions=x,
        chain=th.stack(chain) if chain is not None else None,
        step_log_probs=th.stack(log_probs) if log_probs else None,
    )


def chain_log_probs(
    velocity_fn: VelocityFn,
    chain: th.Tensor,
    noise_std_fn: NoiseStdFn,
    method: str = "euler",
) -> th.Tensor:
    """
    Per-step Gaussian log-probabilities of a stored chain under the current velocity field and noise model.

    This is the re-evaluation counterpart of :func:`integrate` with a noise hook: it uses the same time grid and the
    same step means, so on unchanged parameters it reproduces the log-probabilities recorded while sampling
    (ReinFlow's issues #5 and #16 came from a grid mismatch between the two).

    :param velocity_fn: v(x, t), called once per evaluation with x of shape (K, batch, action_dim) and t of shape
        (K, 1)
    :param chain: x_0 .. x_K, shape (K + 1, batch, action_dim)
    :param noise_std_fn: (x_k, t_k, k) -> std
    :param method: ``"euler"`` or ``"midpoint"``
    :return: shape (K, batch)
    """
    n_steps = chain.shape[0] - 1
    eval_times = _evaluation_times(n_steps, method, chain.device)
    dt = 1.0 / n_steps
    # The stored chain holds every x_k, so each velocity evaluation covers all K steps in one batched call
    # (t broadcasts against x.shape[:-1]): the same means as integrate()'s loop, without K sequential calls.
    states, next_states = chain[:-1], chain[1:]
    if method == "euler":
        step_times = eval_times
        means = th.add(states, velocity_fn(states, step_times.unsqueeze(-1)), alpha=dt)
    else:
        step_times, half_times = eval_times[0::2], eval_times[1::2]
        half_states = th.add(states, velocity_fn(states, step_times.unsqueeze(-1)), alpha=0.5 * dt)
        means = th.add(states, velocity_fn(half_states, half_times.unsqueeze(-1)), alpha=dt)
    step_stds = [noise_std_fn(states[k], step_times[k], k) for k in range(n_steps)]
    stds = th.stack([th.as_tensor(std, dtype=states.dtype, device=states.device).expand_as(states[0]) for std in step_stds])
    return gaussian_log_prob(next_states, means, stds)
