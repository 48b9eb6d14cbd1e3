"""
The one list of algorithms sb3-flow knows, for the command line and the RL-Zoo entry point, and exact detection of
which algorithm saved a model zip.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import json
import os
import pickletools
import warnings
import zipfile
import zlib
from typing import Any

from stable_baselines3 import A2C, DDPG, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import BasePolicy

from sb3_flow.bases.off_policy import FlowOffPolicyAlgorithm
from sb3_flow.bc import FlowBC, GaussianBC
from sb3_flow.cfgrl import CFGRL
from sb3_flow.common.files import SAVED_BY_KEY, existing_file, is_model_zip
from sb3_flow.dsrl import DSRLNA
from sb3_flow.fbrac import FBRAC
from sb3_flow.fpo import FlowPPO
from sb3_flow.fql import FQL
from sb3_flow.ifql import IFQL
from sb3_flow.policies import BestOfNPolicy, CriticGuidedPolicy, FlowPolicy, GaussianPolicy
from sb3_flow.reinflow import ReinFlow

# sb3-flow's own algorithms, by the name the CLI and the Zoo use; each later algorithm adds one line here.
SB3_FLOW_ALGORITHMS: dict[str, type[BaseAlgorithm]] = {
    "flow_bc": FlowBC,
    "gaussian_bc": GaussianBC,
    "flow_ppo": FlowPPO,
    "reinflow": ReinFlow,
    "dsrl_na": DSRLNA,
    "fql": FQL,
    "fbrac": FBRAC,
    "ifql": IFQL,
    "cfgrl": CFGRL,
}
SB3_ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"sac": SAC, "ppo": PPO, "td3": TD3, "a2c": A2C, "ddpg": DDPG}
# The classes of the files written by ``policy.save`` that ``load_any`` (and ``sb3-flow evaluate``) reads, tried in turn:
# each refuses another's file (or a foreign one) with a ValueError. A FlowPolicy subclass with constructor arguments of
# its own (the return head's, a conditional flow's) cannot be built as a FlowPolicy, so it is listed itself.
# (BestOfNPolicy and CriticGuidedPolicy files are not listed: their load lets torch's KeyError on a foreign file through.)
POLICY_CLASSES: tuple[type[BasePolicy], ...] = (
    FlowPolicy,  # builds the subclass that saved the file (a return head, a conditional flow)
    GaussianPolicy,
    BestOfNPolicy,
    CriticGuidedPolicy,
)

# The sb3-flow algorithms the RL-Zoo can train from an environment id and a YAML of hyperparameters alone (FQL, FBRAC,
# IFQL and CFGRL online from scratch, or with a `dataset:` and `offline_steps:` in the YAML). Not the BC trainers: they
# learn from a demonstrations file only. (An algorithm added above joins here only once the Zoo can run it.)
ZOO_ALGORITHMS: tuple[str, ...] = ("flow_ppo", "reinflow", "dsrl_na", "fql", "fbrac", "ifql", "cfgrl")


def all_algorithms() -> dict[str, type[BaseAlgorithm]]:
    """sb3-flow's algorithms first, then SB3's."""
    return {**SB3_FLOW_ALGORITHMS, **SB3_ALGORITHMS}


def zoo_algorithms() -> dict[str, type[BaseAlgorithm]]:
    """sb3-flow's algorithms offered to the RL-Zoo, by Zoo name."""
    return {name: SB3_FLOW_ALGORITHMS[name] for name in ZOO_ALGORITHMS}


def offline_algorithms() -> tuple[str, ...]:
    """
    sb3-flow's algorithms that learn from a dataset (``dataset=``, ``learn_offline``, then ``learn`` online on the same
    buffer), by name: the subclasses of :class:`~sb3_flow.bases.off_policy.FlowOffPolicyAlgorithm` (FQL, FBRAC, IFQL,
    CFGRL). The one place ``sb3-flow offline`` and the Zoo's dataset checks take their list from.
    """
    return tuple(name for name, algorithm in SB3_FLOW_ALGORITHMS.items() if issubclass(algorithm, FlowOffPolicyAlgorithm))


def _read_raw_model_data(path: str) -> dict[str, Any]:
    """
    The JSON ``data`` member of an SB3 model zip, as plain JSON: nothing in it is unpickled, so reading it runs no code
    from the file (SB3's ``load`` unpickles the classes it stores).

    :raises ValueError: naming the file when the member is missing or unreadable
    """
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("data").decode())
    except (OSError, EOFError, KeyError, UnicodeDecodeError, json.JSONDecodeError, zipfile.BadZipFile, zlib.error) as error:
        raise ValueError(
            f"{path} is an SB3 model zip whose 'data' member cannot be read (truncated or corrupt?): {error}"
        ) from error


def _pickled_global(serialized: str) -> tuple[str, str] | None:
    """
    ``(module, name)`` of a class that was pickled by reference (``PROTO, FRAME, 'module', 'name', STACK_GLOBAL``),
    read with ``pickletools`` without unpickling; None for anything else (e.g. a class pickled by value).
    """
    try:
        operations = [(opcode.name, arg) for opcode, arg, _ in pickletools.genops(base64.b64decode(serialized))]
    except (binascii.Error, ValueError):
        return None
    operations = [(name, arg) for name, arg in operations if name not in ("PROTO", "FRAME", "MEMOIZE")]
    names = [name for name, _ in operations]
    if names == ["GLOBAL", "STOP"]:
        module, _, qualname = operations[0][1].partition(" ")
        return module, qualname
    strings = ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE")
    if len(names) == 4 and names[0] in strings and names[1] in strings and names[2:] == ["STACK_GLOBAL", "STOP"]:
        return operations[0][1], operations[1][1]
    return None


def _stored_policy_class(path: str, data: dict[str, Any]) -> type:
    """
    The policy class a model zip was saved with, imported by its module and name (as ``load`` would import it).

    :raises ValueError: when the file does not name an importable class
    """
    entry = data.get("policy_class")
    reference = _pickled_global(entry.get(":serialized:", "")) if isinstance(entry, dict) else None
    if reference is None:
        raise ValueError(f"{path} does not record its policy class by name, so its algorithm cannot be detected")
    module_name, qualname = reference
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as error:
        name = f"{module_name}.{qualname}"
        raise ValueError(f"{path} was saved with the policy class {name}, which cannot be imported") from error
    if not isinstance(target, type):
        raise ValueError(f"{path} records {module_name}.{qualname} as its policy class, which is not a class")
    return target


def _tell_apart(candidates: list[str], data: dict[str, Any]) -> list[str]:
    """
    Among algorithms that share a policy class, the one whose saved data the file holds (sb3-flow's own saves name
    their algorithm; these rules serve SB3's files and older ones).
    """
    if set(candidates) == {"ppo", "a2c"}:
        # SB3's PPO and A2C share ActorCriticPolicy; only PPO has (and saves) a clip range.
        return ["ppo" if "clip_range" in data else "a2c"]
    if set(candidates) == {"sac", "dsrl_na"}:
        # DSRL-NA is SAC in a base policy's noise space, with SAC's policies; it saves its noise bound.
        return ["dsrl_na" if "noise_bound" in data else "sac"]
    if set(candidates) == {"td3", "ddpg"}:
        # SB3's DDPG is TD3 with these fixed in its constructor: no delayed actor updates, no target-noise clipping.
        is_ddpg = data.get("policy_delay") == 1 and data.get("target_noise_clip") == 0.0
        return ["ddpg" if is_ddpg else "td3"]
    return candidates


def detect_algorithm(path: str | os.PathLike) -> str:
    """
    Which of :func:`all_algorithms` saved a model zip, read from the file itself: the algorithm sb3-flow records when
    it saves, else the policy class SB3 stores (the algorithm whose own policy class is the nearest base of it), with
    the saved settings telling apart SB3 algorithms that share one (PPO / A2C, TD3 / DDPG).

    :param path: an SB3 model zip
    :return: the algorithm's name
    :raises ValueError: naming the file, when it is unreadable or holds no algorithm of :func:`all_algorithms`
    """
    path = os.fspath(path)
    algorithms = all_algorithms()
    data = _read_raw_model_data(path)
    saved_by = data.get(SAVED_BY_KEY)
    if isinstance(saved_by, str):
        for name, algorithm in algorithms.items():
            if algorithm.__name__ == saved_by:
                return name
        raise ValueError(f"{path} holds a {saved_by} model, which is none of {sorted(algorithms)}")
    policy_class = _stored_policy_class(path, data)
    distance: dict[str, int] = {}
    for name, algorithm in algorithms.items():
        own = [policy for policy in getattr(algorithm, "policy_aliases", {}).values() if issubclass(policy_class, policy)]
        if own:
            distance[name] = min(policy_class.__mro__.index(policy) for policy in own)
    if not distance:
        raise ValueError(
            f"{path} holds a model with the policy class {policy_class.__module__}.{policy_class.__qualname__}, which "
            f"belongs to none of {sorted(algorithms)}"
        )
    nearest = [name for name, steps in distance.items() if steps == min(distance.values())]
    candidates = _tell_apart(nearest, data)
    if len(candidates) > 1:
        raise ValueError(f"{path} could have been saved by any of {candidates}: name one with --algo")
    return candidates[0]


def load_any(path: str | os.PathLike, algo: str | None = None, device: str = "auto") -> tuple[object, str]:
    """
    Load a saved model (any algorithm of :func:`all_algorithms`) or a saved policy.

    :param path: a model zip (``.zip`` may be left out) or a ``policy.save`` file
    :param algo: the algorithm the user expects; it must be the one that saved the file when that can be read from it
    :param device: device to load on
    :return: (the model or policy, the name it was loaded as)
    :raises FileNotFoundError: when there is no file
    :raises ValueError: when the file holds no known model or policy, or another algorithm's model than ``algo``
    """
    algorithms = all_algorithms()
    if algo is not None and algo not in algorithms:
        raise ValueError(f"Unknown algorithm {algo!r}; known: {sorted(algorithms)}")
    path = existing_file(path, ".zip", what="saved model or policy")
    if is_model_zip(path):
        name = _checked_name(path, algo)
        with warnings.catch_warnings():
            # SB3 warns about systems and versions on load; the caller wants the model.
            warnings.simplefilter("ignore")
            return algorithms[name].load(path, device=device), name
    if algo is not None:
        raise ValueError(f"{path} is not a model zip (a {algo} model is saved with model.save); is it a saved policy?")
    errors = []
    for policy_class in POLICY_CLASSES:
        try:
            policy = policy_class.load(path, device=device)
            return policy, type(policy).__name__  # the subclass that saved it (FlowPolicy.load builds it)
        except (ValueError, FileNotFoundError) as error:
            errors.append(f"{policy_class.__name__}: {type(error).__name__}")
    raise ValueError(f"{path} is neither a saved model of {sorted(algorithms)} nor a saved policy ({'; '.join(errors)})")


def _checked_name(path: str, algo: str | None) -> str:
    """The algorithm that saved ``path``; ``algo`` when the file does not say, an error when it says otherwise."""
    try:
        detected = detect_algorithm(path)
    except ValueError:
        if algo is None:
            raise
        return algo  # the user named it; its own load reports a file it cannot read
    if algo is not None and algo != detected:
        raise ValueError(f"{path} holds a {detected} model, not a {algo} model: pass --algo {detected} or leave --algo out")
    return detected
