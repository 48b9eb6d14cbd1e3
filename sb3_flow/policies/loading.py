"""Base-policy hand-off: every fine-tuning algorithm and wrapper gets its FlowPolicy through here."""

from __future__ import annotations

import copy
import os
import pickle
import zipfile
import zlib
from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.save_util import load_from_zip_file
from stable_baselines3.common.utils import get_device

from sb3_flow.common.files import existing_file, is_model_zip
from sb3_flow.common.utils import check_policy_matches_env
from sb3_flow.policies.flow_policy import FlowPolicy

BaseFlowPolicySource = FlowPolicy | str | os.PathLike | Any

# Attribute under which an algorithm whose policy gets options besides the user's policy_kwargs (FlowPPO, ReinFlow)
# saves the keyword arguments its policy was really built with, so that the policy can be rebuilt from the model zip.
BUILT_POLICY_KWARGS_KEY = "built_policy_kwargs"

# What reading a damaged or foreign model zip raises inside SB3, zipfile, torch and pickle.
_READ_ERRORS = (OSError, EOFError, KeyError, RuntimeError, ValueError, zipfile.BadZipFile, zlib.error, pickle.UnpicklingError)


def _no_learning(_progress_remaining: float) -> float:
    return 0.0


def flow_part(policy: FlowPolicy) -> FlowPolicy:
    """
    A new plain :class:`FlowPolicy` with ``policy``'s flow (features extractor and velocity network) and nothing else.

    Networks a subclass adds (an actor-critic's value network, ReinFlow's noise network) stay behind, so that a
    fine-tuning algorithm's critic always starts fresh; the copy shares no tensor with ``policy``, so freezing or moving
    it leaves the caller's object as it was.

    :param policy: any FlowPolicy
    :return: the copy, on ``policy``'s device and in its training mode
    :raises ValueError: for a policy whose actions are not those of one velocity network (ReinFlow's
        ``n_finetune_steps`` integrates its early steps with a frozen copy; a conditional policy samples with guidance)
    """
    if getattr(policy, "frozen_until", None) is not None:
        raise ValueError(
            f"{type(policy).__name__} with n_finetune_steps < n_flow_steps integrates its early steps with a frozen copy "
            "of the velocity network, so it is not one FlowPolicy and cannot be a base policy"
        )
    if hasattr(policy, "label_embedding"):
        raise ValueError(
            f"{type(policy).__name__} is conditioned on a label and samples with guidance, so it is not one FlowPolicy: "
            "use policy.unconditional_flow() for its unconditional (behaviour-cloning) flow"
        )
    return copy_flow_weights(policy)


def copy_flow_weights(policy: FlowPolicy) -> FlowPolicy:
    """:func:`flow_part` without its checks: the plain FlowPolicy with the weights ``policy`` shares with one."""
    parameters = policy.flow_policy_parameters()
    # The saved schedule is a bound method of the policy: deep-copying it would copy the whole policy. A base policy is
    # not trained through its own optimizer.
    parameters["lr_schedule"] = _no_learning
    flow = FlowPolicy(**copy.deepcopy(parameters))
    state = policy.state_dict()
    missing = [key for key in flow.state_dict() if key not in state]
    if missing:
        raise ValueError(f"{type(policy).__name__} has no plain FlowPolicy inside it (no weights for {missing})")
    flow.load_state_dict({key: state[key] for key in flow.state_dict()})
    return flow.to(policy.device).train(policy.training)


def _policy_from_model_zip(path: str, device: th.device) -> FlowPolicy:
    try:
        data, params, _ = load_from_zip_file(path, device=device, print_system_info=False)
    except _READ_ERRORS as error:
        raise ValueError(f"{path} is not a readable SB3 model zip (truncated or corrupt?): {error}") from error
    policy_class = None if data is None else data.get("policy_class")
    if not (isinstance(policy_class, type) and issubclass(policy_class, FlowPolicy)):
        name = getattr(policy_class, "__name__", policy_class)
        raise ValueError(f"{path} is an SB3 model whose policy is {name}, not a FlowPolicy (expected e.g. a saved FlowBC)")
    policy_kwargs = data.get(BUILT_POLICY_KWARGS_KEY) or data.get("policy_kwargs") or {}
    try:
        policy = policy_class(data["observation_space"], data["action_space"], _no_learning, **policy_kwargs)
        policy.load_state_dict(params["policy"])
    except (KeyError, TypeError, RuntimeError) as error:
        raise ValueError(f"{path}: its {policy_class.__name__} could not be rebuilt from the file: {error}") from error
    return policy


def load_flow_policy(
    source: BaseFlowPolicySource,
    device: th.device | str = "auto",
    observation_space: spaces.Space | None = None,
    action_space: spaces.Space | None = None,
) -> FlowPolicy:
    """
    Get a :class:`FlowPolicy` from what a user hands over as a base policy: always a new plain FlowPolicy holding only
    the flow (see :func:`flow_part`), never the user's object.

    :param source: a FlowPolicy; a model holding one in ``.policy`` (e.g. FlowBC, or FlowPPO: its value network stays
        behind); the path of a saved sb3-flow model zip; or the path of a file written by ``FlowPolicy.save``
    :param device: device to put it on
    :param observation_space: when given, the policy's observation space must match it
    :param action_space: when given, the policy's action space must match it
    :return: the copy
    :raises FileNotFoundError: for a path with no file
    :raises ValueError: naming the file, for a file that is truncated, corrupt or holds no FlowPolicy; for mismatched
        spaces
    :raises TypeError: for anything else
    """
    device = get_device(device)
    if isinstance(source, FlowPolicy):
        policy = source
    elif isinstance(getattr(source, "policy", None), FlowPolicy):
        policy = source.policy
    elif isinstance(getattr(source, "bc_policy", None), FlowPolicy):  # FQL / FBRAC: their flow
        policy = source.bc_policy
    elif isinstance(source, (str, os.PathLike)):
        path = existing_file(source, ".zip", what="base policy file")
        policy = _policy_from_model_zip(path, device) if is_model_zip(path) else FlowPolicy.load(path, device)
    else:
        raise TypeError(
            "base policy must be a FlowPolicy, a model with a FlowPolicy in .policy (e.g. FlowBC), or a path to a "
            f"saved one; got {type(source).__name__}"
        )
    if observation_space is not None and action_space is not None:
        check_policy_matches_env(policy.observation_space, policy.action_space, observation_space, action_space)
    return flow_part(policy).to(device)
