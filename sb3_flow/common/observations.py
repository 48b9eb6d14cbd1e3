"""Batches of observations that are either one array or a dict of arrays (Dict observation spaces), handled once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch as th

Observations = Any  # np.ndarray | th.Tensor | dict[str, np.ndarray | th.Tensor]


def n_rows(observations: Observations) -> int:
    """
    Number of rows of a batch of observations.

    :raises ValueError: when the entries of a dict batch have different lengths
    """
    if isinstance(observations, dict):
        lengths = {len(value) for value in observations.values()}
        if len(lengths) != 1:
            raise ValueError(f"Dict observations have entries of different lengths: {sorted(lengths)}")
        return lengths.pop()
    return len(observations)


def first_entry(observations: Observations) -> Any:
    """The array itself, or the first entry of a dict batch (for its length, device or dtype)."""
    return next(iter(observations.values())) if isinstance(observations, dict) else observations


def index_rows(observations: Observations, index: Any) -> Observations:
    """``observations[index]``, entry by entry for a dict batch."""
    if isinstance(observations, dict):
        return {key: value[index] for key, value in observations.items()}
    return observations[index]


def batch_of_one(observation: Observations) -> Observations:
    """One observation as a batch of one row."""
    if isinstance(observation, dict):
        return {key: np.asarray(value)[None] for key, value in observation.items()}
    return np.asarray(observation)[None]


def stack_rows(observations: Sequence[Observations]) -> Observations:
    """Stack single observations into a batch."""
    if isinstance(observations[0], dict):
        return {key: np.stack([obs[key] for obs in observations]) for key in observations[0]}
    return np.stack(observations)


def concatenate_rows(parts: Sequence[Observations]) -> Observations:
    """Join batches, in order."""
    if isinstance(parts[0], dict):
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    return np.concatenate(parts)


def copy_rows(observations: Observations) -> Observations:
    """A copy that owns its memory (environments may reuse their observation buffers)."""
    if isinstance(observations, dict):
        return {key: np.array(value, copy=True) for key, value in observations.items()}
    return np.array(observations, copy=True)


def to_tensor(observations: Observations, device: th.device | str) -> Observations:
    """Observations as tensors on ``device`` (entry by entry for a dict batch)."""
    if isinstance(observations, dict):
        return {key: th.as_tensor(value, device=device) for key, value in observations.items()}
    return th.as_tensor(observations, device=device)


def non_finite_rows(observations: Observations) -> np.ndarray:
    """Indices of the rows that hold a NaN or an infinity (any entry of a dict batch)."""
    entries = observations.values() if isinstance(observations, dict) else [observations]
    bad = None
    for value in entries:
        array = value.detach().cpu().numpy() if isinstance(value, th.Tensor) else np.asarray(value)
        if not np.issubdtype(array.dtype, np.floating):
            continue
        rows = ~np.isfinite(array.reshape(len(array), -1)).all(axis=1)
        bad = rows if bad is None else bad | rows
    return np.zeros(0, dtype=np.int64) if bad is None else np.flatnonzero(bad)


def check_finite_observations(observations: Observations, where: str) -> None:
    """
    :param observations: a batch
    :param where: who received them, for the message
    :raises ValueError: naming the first bad row, when an observation holds NaN or inf (a flow policy would turn it
        into a NaN action that reaches the environment)
    """
    bad = non_finite_rows(observations)
    if len(bad):
        raise ValueError(
            f"{where} got a non-finite observation (NaN or inf) in row {bad[0]} of {n_rows(observations)}: "
            f"{index_rows(observations, int(bad[0]))}; check the environment, or wrap it in SB3's VecCheckNan to find "
            "where the value comes from"
        )
