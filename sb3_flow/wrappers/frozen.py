"""The frozen base policy that the steering wrappers and DSRL-NA act through: their own copy, never the caller's."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces

from sb3_flow.policies.flow_policy import FlowPolicy
from sb3_flow.policies.loading import BaseFlowPolicySource, load_flow_policy


def frozen_base_policy(
    source: BaseFlowPolicySource,
    device: th.device | str,
    observation_space: spaces.Space,
    action_space: spaces.Space,
) -> FlowPolicy:
    """
    The base policy a steering method acts through: in eval mode, with ``requires_grad`` off, on ``device``.

    :param source: a FlowPolicy, a model holding one in ``.policy`` (FlowBC) or the path of a saved one
    :param device: device to put it on
    :param observation_space: the environment's observation space (checked against the policy's)
    :param action_space: the environment's action space (checked against the policy's)
    :return: a policy object of its own: the caller's policy keeps its device, training mode and gradients
    """
    # load_flow_policy always hands over a new FlowPolicy (the flow only), so freezing it leaves the caller's alone.
    policy = load_flow_policy(source, device, observation_space, action_space)
    policy.set_training_mode(False)
    policy.requires_grad_(False)
    return policy


def recorded_source(source: BaseFlowPolicySource, frozen: FlowPolicy) -> Any:
    """
    What a wrapper records as its ``base_policy`` constructor argument (gymnasium re-creates wrappers from their
    spec with it): the path when the base came from a file, else the frozen copy, never the caller's model.

    :param source: what the caller passed as ``base_policy``
    :param frozen: the wrapper's frozen copy
    """
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else frozen


def unscale_rows(policy: FlowPolicy, normalized: np.ndarray) -> np.ndarray:
    """
    Environment actions of shape (batch, *action_shape) from flat normalized rows (batch, action_dim); the rows are
    shaped before unscaling so that a multi-dimensional Box (e.g. (2, 2)) broadcasts against its bounds.

    :param policy: the policy whose action space gives the shape and bounds
    :param normalized: actions in [-1, 1], one flat row per environment
    """
    shaped = np.asarray(normalized).reshape((-1, *policy.action_space.shape))
    return policy.unscale_action(shaped)
