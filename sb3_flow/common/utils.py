"""Input validation and small helpers shared across sb3-flow."""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from torch import nn

try:
    from stable_baselines3.common.utils import FloatSchedule
except ImportError:  # stable-baselines3 < 2.6
    from stable_baselines3.common.utils import get_schedule_fn as FloatSchedule  # type: ignore[assignment]

__all__ = ["FloatSchedule"]


def set_torch_threads(n_threads: int = 1) -> None:
    """
    Set the number of CPU threads torch uses.

    Small MLPs on a few cores run fastest with one thread, and one thread is not slowed down when another process
    takes a core (torch's intra-op threads wait on each other); see docs/benchmarks.md.

    :param n_threads: number of intra-op threads
    """
    th.set_num_threads(int(n_threads))


@functools.lru_cache(maxsize=1)
def fused_adam_available() -> bool:
    """Whether this torch has fused Adam kernels for CPU tensors (torch >= 2.4): one kernel for all parameters."""
    try:
        parameter = nn.Parameter(th.zeros(2))
        optimizer = th.optim.Adam([parameter], fused=True)
        parameter.grad = th.ones(2)
        optimizer.step()
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


def fused_adam_kwargs(optimizer_class: type[th.optim.Optimizer], optimizer_kwargs: dict[str, Any]) -> dict[str, Any]:
    """
    ``optimizer_kwargs`` with ``fused=True`` for torch's Adam / AdamW where torch has the fused kernels and the user chose
    no implementation (``fused``, ``foreach`` or ``differentiable``). The fused step updates every parameter in one
    kernel instead of a loop of small ops: measured in benchmarks/on_policy_time_split.py. Results differ from the
    default implementation's by float rounding only.

    :param optimizer_class: the policy's optimizer class
    :param optimizer_kwargs: the user's optimizer keyword arguments (not modified)
    :return: the keyword arguments to build the optimizer with
    """
    chosen = {"fused", "foreach", "differentiable"} & set(optimizer_kwargs)
    if optimizer_class not in (th.optim.Adam, th.optim.AdamW) or chosen or not fused_adam_available():
        return dict(optimizer_kwargs)
    return {**optimizer_kwargs, "fused": True}


def check_box_action_space(action_space: spaces.Space, owner: str = "a flow policy") -> spaces.Box:
    """
    Flow policies generate continuous actions in a bounded box.

    :param action_space: the space to check
    :param owner: who needs it, for the error message
    :return: the same space
    :raises TypeError: if it is not a ``gymnasium.spaces.Box``
    :raises ValueError: if its bounds are not finite
    """
    if not isinstance(action_space, spaces.Box):
        raise TypeError(
            f"{owner} needs a continuous gymnasium.spaces.Box action space with finite bounds, "
            f"got {type(action_space).__name__}: {action_space}"
        )
    if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
        raise ValueError(f"{owner} needs finite action bounds (actions are normalized to [-1, 1]), got {action_space}")
    return action_space


def check_finite_number(value: float, name: str, minimum: float | None = None, strict: bool = False) -> float:
    """
    One check for every numeric option: a real number (numpy scalars included), finite, and above a bound.

    :param value: a number
    :param name: its name, for the error message
    :param minimum: the bound (None: any finite number)
    :param strict: the bound itself is not allowed (``> minimum`` instead of ``>= minimum``)
    :return: the number as a float
    :raises TypeError: when it is not a real number
    :raises ValueError: when it is not finite or not above the bound
    """
    expected = "a finite number" if minimum is None else f"a finite number {'>' if strict else '>='} {minimum:g}"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__}: {value!r}")
    number = float(value)
    too_small = minimum is not None and (number <= minimum if strict else number < minimum)
    if not math.isfinite(number) or too_small:
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return number


def check_positive_finite(value: float, name: str) -> float:
    """
    :param value: a number
    :param name: its name, for the error message
    :return: the number as a float
    :raises ValueError: when it is not a finite number > 0
    """
    return check_finite_number(value, name, minimum=0.0, strict=True)


def check_discount(gamma: float, name: str = "gamma") -> float:
    """
    :param gamma: a discount factor
    :param name: its name, for the error message
    :return: it as a float
    :raises TypeError: when it is not a real number
    :raises ValueError: when it is not a finite number in [0, 1]
    """
    gamma = check_finite_number(gamma, name, minimum=0.0)
    if gamma > 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {gamma}")
    return gamma


def chunk_ratio(one_step: spaces.Space | tuple[int, ...], chunk: spaces.Space | tuple[int, ...]) -> int | None:
    """
    The horizon H when ``chunk`` looks like a flat chunk of H actions of ``one_step`` (ActionChunkWrapper's action
    space: the bounds tiled, when both are Boxes), for error messages that suggest chunking. It only looks like one: a
    caller words its hint as a possibility.

    :param one_step: the space (or shape) of one action
    :param chunk: the space (or shape) that may be a chunk of them
    :return: H > 1, or None when it is not such a chunk
    """
    one_shape, chunk_shape = getattr(one_step, "shape", one_step), getattr(chunk, "shape", chunk)
    if one_shape is None or chunk_shape is None or len(chunk_shape) != 1:
        return None
    one, many = int(np.prod(one_shape)), int(np.prod(chunk_shape))
    if one == 0 or many <= one or many % one:
        return None
    if isinstance(one_step, spaces.Box) and isinstance(chunk, spaces.Box):
        tiled = all(
            np.allclose(np.tile(getattr(one_step, bound).reshape(-1), many // one), getattr(chunk, bound))
            for bound in ("low", "high")
        )
        if not tiled:
            return None
    return many // one


def check_positive_int(value: int, name: str, minimum: int = 1) -> int:
    """
    :param value: an integer (Python or numpy; not a bool, not a float)
    :param name: its name, for the error message
    :param minimum: the smallest allowed value
    :return: the value as a Python int
    :raises ValueError: when it is not an integer >= ``minimum``
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return int(value)


def check_finite_loss(
    loss: th.Tensor, algorithm: str, what: str, n_updates: int, untouched: str = "the weights were left unchanged"
) -> None:
    """
    Stop before a non-finite loss reaches the weights.

    :param loss: the loss about to be backpropagated
    :param algorithm: the algorithm's name, for the message
    :param what: the loss's name, for the message
    :param n_updates: the update count, for the message
    :param untouched: what the caller guarantees was not changed when this raises (the message says it)
    :raises FloatingPointError: when ``loss`` is NaN or infinite
    """
    if not th.isfinite(loss).all():
        raise FloatingPointError(
            f"{algorithm}: the {what} is {loss.detach().cpu().numpy()} at update {n_updates}; {untouched} "
            "(lower the learning rate, check rewards and observations for NaN/inf, or normalize them)"
        )


def check_finite_learning_rate(learning_rate: float, algorithm: str, progress_remaining: float) -> float:
    """
    A learning-rate schedule can return NaN or inf (or a negative value) part-way through training; an optimizer
    step with it writes NaN into every weight even though the loss was finite.

    :raises FloatingPointError: naming the schedule's value and the progress at which it went wrong
    """
    if not math.isfinite(float(learning_rate)) or float(learning_rate) < 0:
        raise FloatingPointError(
            f"{algorithm}: the learning-rate schedule returned {learning_rate} at progress_remaining="
            f"{progress_remaining:.4f}; no optimizer step was taken with it (a schedule must return a finite number >= 0)"
        )
    return float(learning_rate)


def spaces_match(expected: spaces.Space, actual: spaces.Space) -> bool:
    """Two spaces match when they are of the same kind with the same shapes (and bounds, for Box)."""
    if type(expected) is not type(actual):
        return False
    if isinstance(expected, spaces.Dict):
        return expected.spaces.keys() == actual.spaces.keys() and all(
            spaces_match(expected[key], actual[key]) for key in expected.spaces
        )
    if isinstance(expected, spaces.Box):
        return (
            expected.shape == actual.shape
            and np.allclose(expected.low, actual.low)
            and np.allclose(expected.high, actual.high)
        )
    return expected == actual


def check_policy_matches_env(
    policy_observation_space: spaces.Space,
    policy_action_space: spaces.Space,
    env_observation_space: spaces.Space,
    env_action_space: spaces.Space,
    what: str = "base policy",
) -> None:
    """
    :raises ValueError: naming both spaces when the policy was built for other spaces than the environment's
    """
    if not spaces_match(policy_observation_space, env_observation_space):
        raise ValueError(
            f"The {what}'s observation space {policy_observation_space} does not match "
            f"the environment's observation space {env_observation_space}"
        )
    if not spaces_match(policy_action_space, env_action_space):
        hint = ""
        if horizon := chunk_ratio(env_action_space, policy_action_space):
            hint = (
                f"; if the {what} emits chunks of {horizon} actions, it acts on ActionChunkWrapper(env, horizon={horizon}), "
                "not on the unchunked environment"
            )
        elif horizon := chunk_ratio(policy_action_space, env_action_space):
            hint = (
                f"; if the environment takes chunks of {horizon} actions (ActionChunkWrapper), the {what} must be one "
                "trained on the chunked environment"
            )
        raise ValueError(
            f"The {what}'s action space {policy_action_space} does not match the environment's action space "
            f"{env_action_space}{hint}"
        )


def _last_linear(module: nn.Module) -> nn.Linear:
    linears = [layer for layer in module.modules() if isinstance(layer, nn.Linear)]
    if not linears:
        raise ValueError(f"no linear layer in {type(module).__name__}")
    return linears[-1]


def zero_init_actor(model: BaseAlgorithm) -> None:
    """
    Zero the last layer of an SB3 agent's actor so that its deterministic action starts at exactly 0 (SAC / TQC /
    DSRLNA: the mean head; TD3 / DDPG: the last layer before tanh, target actor synced; PPO / A2C: the action head).

    Steering agents then start exactly at the base policy: a residual agent adds zero correction (Policy Decorator,
    Yuan et al., 2024), and a DSRL agent (SAC on :class:`~sb3_flow.wrappers.NoiseActionWrapper`, or
    :class:`~sb3_flow.DSRLNA`) feeds the base policy zero initial noise, its deterministic action, instead of the
    arbitrary noise a randomly initialized head picks, which can start well below the base.

    :param model: an SB3 model whose actor acts on a steering wrapper's action space (or DSRLNA)
    :raises ValueError: for a model whose actor head is not found
    """
    policy = model.policy
    actor = getattr(policy, "actor", None)
    if actor is not None and hasattr(actor, "mu"):
        head = actor.mu if isinstance(actor.mu, nn.Linear) else _last_linear(actor.mu)
    elif hasattr(policy, "action_net"):
        head = policy.action_net
    else:
        raise ValueError(f"zero_init_actor does not know the actor head of {type(policy).__name__}")
    with th.no_grad():
        head.weight.zero_()
        head.bias.zero_()
    actor_target = getattr(policy, "actor_target", None)
    if actor is not None and actor_target is not None:
        actor_target.load_state_dict(actor.state_dict())


# Below this many rows oneDNN's fixed per-call cost dominates its GELU and torch's native kernel is several times
# faster; from ~64 rows on oneDNN is as fast or faster (benchmarks/onednn_small_batch.py).
ONEDNN_MIN_ROWS = 64


@contextlib.contextmanager
def small_batch_inference(n_rows: int, device: th.device | str) -> Iterator[None]:
    """
    Run a frozen policy's small-batch inference (a steering wrapper's one base call per environment step) with
    oneDNN switched off, so that ops such as the exact GELU take torch's native CPU kernels, which are several times
    faster than oneDNN's at a few rows. Results agree with the oneDNN path to float rounding (~1e-7), not bitwise, so
    this is for inference whose outputs are not compared with a training-time recomputation.

    :param n_rows: rows of the batch; from :data:`ONEDNN_MIN_ROWS` on nothing changes
    :param device: the policy's device; nothing changes off the CPU
    """
    if n_rows >= ONEDNN_MIN_ROWS or th.device(device).type != "cpu" or not th.backends.mkldnn.enabled:
        yield
        return
    # The flag is process-wide: restored right after the call.
    th.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        th.backends.mkldnn.enabled = True
