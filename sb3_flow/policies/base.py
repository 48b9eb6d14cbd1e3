"""What every sb3-flow policy shares."""

from __future__ import annotations

import os
import pickle
import zipfile
from typing import Any, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from sb3_flow.common.utils import check_box_action_space

SelfLoadable = TypeVar("SelfLoadable", bound="ClearLoadErrorsMixin")


class ClearLoadErrorsMixin:
    """``load`` that turns a missing, corrupt or foreign file into a FileNotFoundError / ValueError naming it."""

    @classmethod
    def load(cls: type[SelfLoadable], path: str | os.PathLike, device: th.device | str = "auto") -> SelfLoadable:
        """
        Load a policy written by ``policy.save(path)``.

        :param path: the file
        :param device: device to load it on
        :raises FileNotFoundError: when the file does not exist
        :raises ValueError: when the file is not a saved policy of this class
        """
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No saved {cls.__name__} at {path!s}")
        try:
            policy = super().load(str(path), device)  # type: ignore[misc]
        except (RuntimeError, pickle.UnpicklingError, KeyError, EOFError, TypeError, zipfile.BadZipFile) as error:
            raise ValueError(
                f"{path!s} is not a {cls.__name__} saved with policy.save(path) (a model zip is loaded with its "
                f"algorithm's .load): {error}"
            ) from error
        if not isinstance(policy, BasePolicy):
            raise ValueError(f"{path!s} did not hold a policy")
        return policy


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
