"""Names of the algorithms sb3-flow knows, for the command line (and the RL-Zoo entry point)."""

from __future__ import annotations

import os
import warnings
import zipfile

from stable_baselines3 import A2C, DDPG, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import BasePolicy

from sb3_flow.bc import FlowBC, GaussianBC
from sb3_flow.dsrl import DSRLNA
from sb3_flow.fpo import FlowPPO
from sb3_flow.policies import FlowPolicy, GaussianPolicy

# sb3-flow's own algorithms; each later algorithm adds itself here.
SB3_FLOW_ALGORITHMS: dict[str, type[BaseAlgorithm]] = {
    "flow_bc": FlowBC,
    "gaussian_bc": GaussianBC,
    "flow_ppo": FlowPPO,
    "dsrl_na": DSRLNA,
}
SB3_ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"sac": SAC, "ppo": PPO, "td3": TD3, "a2c": A2C, "ddpg": DDPG}
POLICY_CLASSES: tuple[type[BasePolicy], ...] = (FlowPolicy, GaussianPolicy)


def all_algorithms() -> dict[str, type[BaseAlgorithm]]:
    """sb3-flow's algorithms first, then SB3's."""
    return {**SB3_FLOW_ALGORITHMS, **SB3_ALGORITHMS}


def is_model_zip(path: str | os.PathLike) -> bool:
    """True for an SB3 model zip (it holds a JSON ``data`` member), False for a ``policy.save`` file."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return "data" in archive.namelist()


def load_any(path: str | os.PathLike, algo: str | None = None, device: str = "auto") -> tuple[object, str]:
    """
    Load a saved model (any algorithm of :func:`all_algorithms`) or a saved policy.

    :param path: a model zip or a ``policy.save`` file
    :param algo: the algorithm name, when known; otherwise each is tried in turn
    :param device: device to load on
    :return: (the model or policy, the name it was loaded as)
    :raises FileNotFoundError: when there is no file
    :raises ValueError: when nothing could load it
    """
    path = os.fspath(path)
    if not os.path.isfile(path) and os.path.isfile(f"{path}.zip"):
        path = f"{path}.zip"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No saved model or policy at {path}")
    algorithms = all_algorithms()
    if algo is not None:
        if algo not in algorithms:
            raise ValueError(f"Unknown algorithm {algo!r}; known: {sorted(algorithms)}")
        return algorithms[algo].load(path, device=device), algo
    errors = []
    if is_model_zip(path):
        for name, algorithm in algorithms.items():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return algorithm.load(path, device=device), name
            except Exception as error:  # each algorithm fails in its own way on a foreign zip
                errors.append(f"{name}: {type(error).__name__}")
    else:
        for policy_class in POLICY_CLASSES:
            try:
                return policy_class.load(path, device=device), policy_class.__name__
            except (ValueError, FileNotFoundError) as error:
                errors.append(f"{policy_class.__name__}: {type(error).__name__}")
    raise ValueError(f"{path} is neither a saved model of {sorted(algorithms)} nor a saved policy ({'; '.join(errors)})")
