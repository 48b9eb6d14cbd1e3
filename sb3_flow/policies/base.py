"""What every sb3-flow policy shares."""

from __future__ import annotations

import os
import pickle
import struct
import warnings
import zipfile
from typing import Any, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.save_util import data_to_json, json_to_data
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.utils import get_device
from torch import nn

from sb3_flow.common.files import atomic_target, existing_file
from sb3_flow.common.utils import check_box_action_space

SelfLoadable = TypeVar("SelfLoadable", bound="ClearLoadErrorsMixin")


# The policy-file format: tensors and plain types only, so that torch.load runs with weights_only=True; the
# constructor arguments are SB3's JSON (classes and spaces cloudpickled inside it, as in SB3's model zips).
POLICY_FILE_FORMAT = "sb3_flow.policy.v2"


class ClearLoadErrorsMixin:
    """
    ``save`` / ``load`` for policies: the save is atomic (a failed save keeps the previous file), the weights load with
    ``torch.load(weights_only=True)``, and a missing, corrupt or foreign file is a FileNotFoundError / ValueError
    naming it.

    Loading still unpickles the classes and spaces stored in the constructor arguments (SB3 does the same in its
    model zips): only load files you trust.
    """

    def save(self, path: str | os.PathLike) -> None:
        """
        Save the policy's weights and constructor arguments (``Policy.load(path)`` restores it).

        :param path: the file; it is replaced only once the new one is complete
        """
        contents = {
            "format": POLICY_FILE_FORMAT,
            "policy_class": type(self).__name__,
            "state_dict": self.state_dict(),  # type: ignore[attr-defined]
            "data": data_to_json(self._get_constructor_parameters()),  # type: ignore[attr-defined]
        }
        with atomic_target(path) as temporary:
            th.save(contents, temporary)

    @classmethod
    def load(
        cls: type[SelfLoadable], path: str | os.PathLike, device: th.device | str = "auto", allow_pickle: bool = False
    ) -> SelfLoadable:
        """
        Load a policy written by ``policy.save(path)``.

        :param path: the file
        :param device: device to load it on
        :param allow_pickle: also read files written before sb3-flow 0.2 (or by SB3's ``BasePolicy.save``), whose
            weights can only be read with ``torch.load(weights_only=False)``, which runs any code the file holds
        :raises FileNotFoundError: when the file does not exist
        :raises ValueError: when the file is not a saved policy of this class
        """
        path = existing_file(path, what=f"saved {cls.__name__}")
        device = get_device(device)
        saved = _read_policy_file(path, device, allow_pickle)
        saved_class = saved.get("policy_class")
        if saved_class is not None and saved_class not in _class_family(cls):
            raise ValueError(f"{path} holds a {saved_class}, not a {cls.__name__}: load it with {saved_class}.load")
        # A file saved by a subclass (a FlowPolicy with a return head, loaded as a FlowPolicy) builds that subclass, which
        # is a ``cls`` and takes the arguments it saved.
        build_class = _subclasses_by_name(cls).get(saved_class, cls)
        try:
            data = json_to_data(saved["data"]) if isinstance(saved["data"], str) else saved["data"]
            policy = build_class(**data)  # type: ignore[call-arg]
            policy.load_state_dict(saved["state_dict"])  # type: ignore[attr-defined]
        except (RuntimeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path} is not a {cls.__name__} saved with policy.save(path): {error}") from error
        return policy.to(device)  # type: ignore[attr-defined]


def _class_family(cls: type) -> set[str]:
    """Names of ``cls``, its bases and its subclasses: a file saved by any of them builds as ``cls``."""
    names = {klass.__name__ for klass in cls.__mro__}
    pending = list(cls.__subclasses__())
    while pending:
        subclass = pending.pop()
        names.add(subclass.__name__)
        pending.extend(subclass.__subclasses__())
    return names


def _subclasses_by_name(cls: type) -> dict[str, type]:
    """``cls`` and every subclass of it, by class name."""
    found = {cls.__name__: cls}
    pending = list(cls.__subclasses__())
    while pending:
        subclass = pending.pop()
        found.setdefault(subclass.__name__, subclass)
        pending.extend(subclass.__subclasses__())
    return found


def _read_policy_file(path: str, device: th.device, allow_pickle: bool) -> dict[str, Any]:
    """The saved dictionary, read with ``weights_only=True`` (or, for an old file and ``allow_pickle``, without)."""
    try:
        saved = th.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        if not allow_pickle:
            raise ValueError(
                f"{path} is not a policy file in sb3-flow's format (its contents need pickle to load, which runs any "
                "code the file holds). If it is a policy.save file from an older sb3-flow or SB3 that you trust, load "
                "it with allow_pickle=True; a model zip is loaded with its algorithm's .load"
            ) from error
        warnings.warn(f"{path}: reading an old-format policy file with pickle (weights_only=False)", stacklevel=3)
        saved = th.load(path, map_location=device, weights_only=False)
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile, KeyError, IndexError, ValueError, struct.error) as error:
        raise ValueError(f"{path} is not a readable policy file (truncated or corrupt?): {error}") from error
    if not isinstance(saved, dict) or "state_dict" not in saved or "data" not in saved:
        raise ValueError(f"{path} is not a policy saved with policy.save(path)")
    return saved


class BoxActionPolicy(ClearLoadErrorsMixin, BasePolicy):
    """
    Base of sb3-flow's policies: a Box action space with finite bounds, actions produced in the normalized box
    [-1, 1] (``squash_output=True``: ``predict`` unscales them), an SB3 features extractor and an MLP.

    :param observation_space: observation space
    :param action_space: a Box action space with finite bounds
    :param net_arch: hidden layer sizes
    :param activation_fn: activation class
    :param features_extractor_class: SB3 features extractor class
    :param features_extractor_kwargs: its keyword arguments
    :param normalize_images: divide image observations by 255
    :param optimizer_class: optimizer class
    :param optimizer_kwargs: optimizer keyword arguments, besides the learning rate
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        net_arch: list[int] | None,
        activation_fn: type[nn.Module],
        features_extractor_class: type[BaseFeaturesExtractor],
        features_extractor_kwargs: dict[str, Any] | None,
        normalize_images: bool,
        optimizer_class: type[th.optim.Optimizer],
        optimizer_kwargs: dict[str, Any] | None,
    ):
        check_box_action_space(action_space, type(self).__name__)
        super().__init__(
            observation_space,
            action_space,
            features_extractor_class,
            features_extractor_kwargs,
            normalize_images=normalize_images,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
            squash_output=True,
        )
        self.net_arch = [256, 256, 256] if net_arch is None else list(net_arch)
        self.activation_fn = activation_fn
        self.action_dim = int(np.prod(action_space.shape))

    def test_time_knobs(self) -> dict[str, Any]:
        """
        The settings that change how the policy acts without retraining (a guidance weight, best-of-N's N), as
        constructor arguments: saved with the policy and with a model holding it.
        """
        return {}

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            dict(
                lr_schedule=self._dummy_schedule,
                net_arch=self.net_arch,
                activation_fn=self.activation_fn,
                features_extractor_class=self.features_extractor_class,
                features_extractor_kwargs=self.features_extractor_kwargs,
                optimizer_class=self.optimizer_class,
                optimizer_kwargs=self.optimizer_kwargs,
            )
        )
        return data
