"""Base-policy hand-off: every fine-tuning algorithm and wrapper gets its FlowPolicy through here."""

from __future__ import annotations

import os
import zipfile
from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.save_util import load_from_zip_file
from stable_baselines3.common.utils import get_device

from sb3_flow.common.utils import check_policy_matches_env
from sb3_flow.policies.flow_policy import FlowPolicy

BaseFlowPolicySource = FlowPolicy | str | os.PathLike | Any


def _is_algorithm_zip(path: str) -> bool:
    # An SB3 model zip holds a JSON "data" member; policy.save() writes a torch archive instead.
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return "data" in archive.namelist()


def _policy_from_algorithm_zip(path: str, device: th.device) -> FlowPolicy:
    data, params, _ = load_from_zip_file(path, device=device, print_system_info=False)
    policy_class = None if data is None else data.get("policy_class")
    if not (isinstance(policy_class, type) and issubclass(policy_class, FlowPolicy)):
        name = getattr(policy_class, "__name__", policy_class)
        raise ValueError(f"{path} is an SB3 model whose policy is {name}, not a FlowPolicy (expected e.g. a saved FlowBC)")
    policy = policy_class(data["observation_space"], data["action_space"], lambda _: 0.0, **data.get("policy_kwargs", {}))
    policy.load_state_dict(params["policy"])
    return policy.to(device)


def load_flow_policy(
    source: BaseFlowPolicySource,
    device: th.device | str = "auto",
    observation_space: spaces.Space | None = None,
    action_space: spaces.Space | None = None,
) -> FlowPolicy:
    """
    Get a :class:`FlowPolicy` from what a user hands over as a base policy.

    :param source: a FlowPolicy; a model holding one in ``.policy`` (e.g. FlowBC); the path of a saved FlowBC (or
        other sb3-flow) model zip; or the path of a file written by ``FlowPolicy.save``
    :param device: device to put it on
    :param observation_space: when given, the policy's observation space must match it
    :param action_space: when given, the policy's action space must match it
    :return: the policy (the same object when a FlowPolicy was given)
    :raises FileNotFoundError: for a path with no file
    :raises ValueError: for a file that holds no FlowPolicy, or mismatched spaces
    :raises TypeError: for anything else
    """
    device = get_device(device)
    if isinstance(source, FlowPolicy):
        policy = source.to(device)
    elif isinstance(getattr(source, "policy", None), FlowPolicy):
        policy = source.policy.to(device)
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path) and os.path.isfile(f"{path}.zip"):
            path = f"{path}.zip"
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No base policy file at {path}")
        policy = _policy_from_algorithm_zip(path, device) if _is_algorithm_zip(path) else FlowPolicy.load(path, device)
    else:
        raise TypeError(
            "base policy must be a FlowPolicy, a model with a FlowPolicy in .policy (e.g. FlowBC), or a path to a "
            f"saved one; got {type(source).__name__}"
        )
    if observation_space is not None and action_space is not None:
        check_policy_matches_env(policy.observation_space, policy.action_space, observation_space, action_space)
    return policy
