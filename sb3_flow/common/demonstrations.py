"""Demonstrations: one dataclass of numpy arrays, collected from any expert, saved as ``.npz``, read from Minari."""

from __future__ import annotations

import dataclasses
import os
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnv, VecTransposeImage, is_vecenv_wrapped, unwrap_vec_wrapper
from tqdm.auto import tqdm

from sb3_flow.common.files import atomic_target, existing_file, with_suffix_if_missing
from sb3_flow.common.observations import concatenate_rows, copy_rows, index_rows, n_rows, non_finite_rows, stack_rows
from sb3_flow.common.utils import (
    check_box_action_space,
    check_discount,
    check_finite_number,
    check_positive_int,
    chunk_ratio,
)

Observations = np.ndarray | dict[str, np.ndarray]
Expert = Any  # an SB3 model (anything with ``predict(obs, deterministic=...)``) or a callable obs -> action

_ARRAY_FIELDS = ("actions", "rewards", "terminations", "truncations", "episode_starts")
_OBS_FIELDS = ("observations", "next_observations")


@dataclass
class Demonstrations:
    """
    Transitions of one or more episodes, row ``i`` being ``(observations[i], actions[i], rewards[i],
    next_observations[i], terminations[i], truncations[i])``; ``episode_starts[i]`` marks the first row of an episode.
    Actions are stored in the environment's units.

    :param observations: shape (n, *obs_shape), or a dict of such arrays for Dict observation spaces
    :param actions: shape (n, *action_shape)
    :param rewards: shape (n,)
    :param next_observations: like ``observations``
    :param terminations: shape (n,), bool
    :param truncations: shape (n,), bool
    :param episode_starts: shape (n,), bool
    """

    observations: Observations
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: Observations
    terminations: np.ndarray
    truncations: np.ndarray
    episode_starts: np.ndarray

    def __post_init__(self) -> None:
        missing = [field.name for field in fields(self) if getattr(self, field.name) is None]
        if missing:
            raise ValueError(f"Demonstrations need every field; {missing} missing (None)")
        self.actions = np.asarray(self.actions, dtype=np.float32)
        self.rewards = np.asarray(self.rewards, dtype=np.float32).reshape(-1)
        for name in ("terminations", "truncations", "episode_starts"):
            setattr(self, name, np.asarray(getattr(self, name), dtype=bool).reshape(-1))
        lengths = {name: len(getattr(self, name)) for name in _ARRAY_FIELDS}
        lengths.update({name: n_rows(getattr(self, name)) for name in _OBS_FIELDS})
        if len(set(lengths.values())) != 1:
            raise ValueError(f"Every field of Demonstrations must have the same number of rows, got {lengths}")
        if len(self) > 0 and not self.episode_starts[0]:
            raise ValueError("episode_starts[0] must be True: the first row starts an episode")

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def n_episodes(self) -> int:
        """Number of episodes (the last one may be unfinished)."""
        return int(self.episode_starts.sum())

    def episode_returns(self) -> np.ndarray:
        """Undiscounted return of every episode, shape (n_episodes,)."""
        episode_index = np.cumsum(self.episode_starts) - 1
        return np.bincount(episode_index, weights=self.rewards, minlength=self.n_episodes).astype(np.float64)

    def select(self, rows: np.ndarray) -> Demonstrations:
        """
        The given rows, in order, as new Demonstrations (copies); a row starts an episode where it is the first kept row
        of its episode.

        :param rows: indices of the rows to keep, increasing
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (np.any(np.diff(rows) <= 0) or rows[0] < 0 or rows[-1] >= len(self)):
            raise ValueError(f"rows must be increasing indices in [0, {len(self)}), got {rows}")
        episodes = (np.cumsum(self.episode_starts) - 1)[rows]
        starts = np.ones(len(rows), dtype=bool)
        starts[1:] = episodes[1:] != episodes[:-1]
        return Demonstrations(
            observations=copy_rows(index_rows(self.observations, rows)),
            actions=self.actions[rows].copy(),
            rewards=self.rewards[rows].copy(),
            next_observations=copy_rows(index_rows(self.next_observations, rows)),
            terminations=self.terminations[rows].copy(),
            truncations=self.truncations[rows].copy(),
            episode_starts=starts,
        )

    def returns_to_go(self, gamma: float) -> np.ndarray:
        """
        Discounted Monte-Carlo return from every row to the end of its episode, ``G_i = r_i + gamma * G_{i+1}``, shape
        (n,). A truncated (or unfinished) episode is summed to its last row without a bootstrap, so its returns are
        cut short: the usual Monte-Carlo approximation when no value function is trusted.

        :param gamma: discount factor in [0, 1]
        """
        gamma = check_discount(gamma)
        returns = np.zeros(len(self), dtype=np.float64)
        following = 0.0
        for row in range(len(self) - 1, -1, -1):
            ends_here = row == len(self) - 1 or self.episode_starts[row + 1]
            following = self.rewards[row] + (0.0 if ends_here else gamma * following)
            returns[row] = following
        return returns.astype(np.float32)

    def summary(self) -> dict[str, float]:
        """Number of transitions and episodes, mean and std of the episode return."""
        returns = self.episode_returns()
        return {
            "n_transitions": len(self),
            "n_episodes": self.n_episodes,
            "mean_return": float(returns.mean()) if len(returns) else float("nan"),
            "std_return": float(returns.std()) if len(returns) else float("nan"),
        }

    def check_spaces(self, observation_space: spaces.Space, action_space: spaces.Space) -> None:
        """
        :raises ValueError: naming the expected shapes, when the arrays do not fit the spaces
        """
        expected_action = action_space.shape
        if self.actions.shape[1:] != expected_action:
            hint = ""
            if horizon := chunk_ratio(self.actions.shape[1:], action_space):
                hint = (
                    f"; if the environment takes chunks of {horizon} actions (ActionChunkWrapper), chunk the "
                    f"demonstrations with demonstrations.chunked({horizon}, gamma).demonstrations"
                )
            elif horizon := chunk_ratio(action_space, self.actions.shape[1:]):
                hint = f"; if these are chunks of {horizon} actions, they are for ActionChunkWrapper(env, {horizon})"
            raise ValueError(
                f"Demonstration actions have shape {self.actions.shape[1:]} per step, "
                f"but the action space {action_space} expects {expected_action}{hint}"
            )
        for name in _OBS_FIELDS:
            value = getattr(self, name)
            if isinstance(observation_space, spaces.Dict):
                if not isinstance(value, dict) or set(value) != set(observation_space.spaces):
                    found = sorted(value) if isinstance(value, dict) else "an array"
                    raise ValueError(
                        f"Demonstration {name} must be a dict with keys {sorted(observation_space.spaces)} "
                        f"for the Dict observation space, got {found}"
                    )
                pairs = [(f"{name}[{key!r}]", value[key], observation_space[key]) for key in value]
            else:
                if isinstance(value, dict):
                    raise ValueError(f"Demonstration {name} is a dict, but the observation space is {observation_space}")
                pairs = [(name, value, observation_space)]
            for label, array, space in pairs:
                if np.asarray(array).shape[1:] != space.shape:
                    raise ValueError(
                        f"Demonstration {label} have shape {np.asarray(array).shape[1:]} per step, "
                        f"but the observation space {space} expects {space.shape}"
                    )
        if isinstance(action_space, spaces.Box) and len(self) > 0:
            # A flow policy's actions live in the box: data outside it would be clipped away silently in training.
            tolerance = 1e-5 * np.maximum(1.0, action_space.high - action_space.low)
            outside = (self.actions < action_space.low - tolerance) | (self.actions > action_space.high + tolerance)
            if outside.any():
                rows = np.flatnonzero(outside.reshape(len(self), -1).any(axis=1))
                raise ValueError(
                    f"{len(rows)} demonstration actions lie outside the action space's bounds "
                    f"[{action_space.low}, {action_space.high}] (first at row {rows[0]}: {self.actions[rows[0]]}); "
                    "clip or rescale them, or use an action space that contains them"
                )

    def save(self, path: str | os.PathLike) -> str:
        """
        Write to an ``.npz`` file (Dict observations are stored as ``observations.<key>``). ``.npz`` is appended to a
        path without a suffix (numpy appends it to any other name too: here ``data.v1`` stays ``data.v1``); an
        existing file is replaced only once the new one is complete. A path, not a file object.

        :param path: the file
        :return: the path written
        """
        arrays: dict[str, np.ndarray] = {name: getattr(self, name) for name in _ARRAY_FIELDS}
        for name in _OBS_FIELDS:
            value = getattr(self, name)
            if isinstance(value, dict):
                arrays.update({f"{name}.{key}": array for key, array in value.items()})
            else:
                arrays[name] = value
        target = with_suffix_if_missing(path, ".npz")
        with atomic_target(target) as temporary, open(temporary, "wb") as file:
            np.savez_compressed(file, **arrays)
        return target

    def check_finite(self, fields: tuple[str, ...] = ("observations", "actions", "rewards", "next_observations")) -> None:
        """
        :param fields: the fields to check
        :raises ValueError: naming the field and the first row, when one holds NaN or inf
        """
        for name in fields:
            bad = non_finite_rows(getattr(self, name))
            if len(bad):
                raise ValueError(
                    f"Demonstration {name} hold NaN or inf in {len(bad)} of {len(self)} rows (first at row {bad[0]}); "
                    "drop or repair those transitions before training on them"
                )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Demonstrations:
        """
        Read a file written by :meth:`save`.

        :raises FileNotFoundError: when there is no such file
        :raises ValueError: when the file is not a demonstrations ``.npz``
        """
        path = existing_file(path, ".npz", what="demonstrations file (an .npz written by Demonstrations.save)")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error) as error:
            raise ValueError(f"{path!s} is not a readable demonstrations .npz file: {error}") from error
        values: dict[str, Any] = {}
        for name in _OBS_FIELDS:
            prefix = f"{name}."
            dict_keys = [key for key in arrays if key.startswith(prefix)]
            values[name] = {key[len(prefix) :]: arrays[key] for key in dict_keys} if dict_keys else arrays.get(name)
        values.update({name: arrays.get(name) for name in _ARRAY_FIELDS})
        missing = [name for name in (field.name for field in fields(cls)) if values.get(name) is None]
        if missing:
            raise ValueError(f"{path!s} is not a demonstrations file: it lacks {missing}")
        return cls(**values)

    def chunked(self, horizon: int, gamma: float = 0.99) -> ChunkedDemonstrations:
        """
        Transitions over action chunks (Q-chunking, Li et al., 2025), for a policy or critic on
        ``ActionChunkWrapper(env, horizon, gamma)``: row ``i`` of the result is the chunk that starts at row ``i``, a
        window sliding inside its episode (every row starts a chunk, as in QC's sequence sampling).

        Paper: https://arxiv.org/abs/2507.07969
        Reference implementation: https://github.com/ColinQiyangLi/qc (``utils/datasets.py``, ``sample_sequence``)

        The chunk's steps are the next ``horizon`` rows up to the episode's end (the first row that is terminated or
        truncated, or the row before the next episode start); ``chunk_steps`` counts them. Row ``i`` of the new
        :class:`Demonstrations` holds: ``observations`` of row ``i``; ``actions``, the chunk's actions flattened to
        (n, horizon * action_dim) as ``ActionChunkWrapper`` takes them; ``rewards``, ``sum_j gamma**j r_{i+j}`` over the
        chunk's steps; ``next_observations``, the observation after its last step; ``terminations`` / ``truncations``,
        whether the episode terminated / was truncated inside the chunk; ``episode_starts`` as before. Exactly what
        the wrapper returns when it executes these actions from that observation.

        **The episode's last steps.** A chunk starting fewer than ``horizon`` rows before its episode's end is kept
        (as in QC), with ``valid[i, j] = j < chunk_steps[i]``: QC's ``valid`` (``valid[:, j] = 1 - terminals[:, j-1]``
        accumulated, ``terminals`` being episode ends). QC's chunk just reads the rows that follow in the buffer (the
        next episode's actions) and relies on the mask: its critic loss is weighted by ``valid[..., -1]`` (only chunks
        that lie entirely inside their episode train the critic) and its flow-matching loss by ``valid`` per step. Here
        the missing actions are padded by repeating the episode's last action, so that every padded chunk stays inside
        the action box and a mask-unaware learner (FlowBC) is taught to hold the last action rather than to imitate
        another episode; a mask-aware learner never sees the padding. Rewards, next observation and flags come from
        the in-episode steps only, so ``gamma ** chunk_steps`` (:attr:`ChunkedDemonstrations.discounts`) is the right
        bootstrap discount for every row; QC bootstraps with ``gamma ** horizon``, which is the same on the rows its
        critic trains on. An episode that the data leaves unfinished (neither terminated nor truncated) ends its
        chunks at the last row, unterminated.

        :param horizon: H, the number of actions in a chunk (QC: 5)
        :param gamma: the discount inside a chunk, the wrapper's ``gamma``
        :return: the chunked transitions with their ``chunk_steps`` and ``valid`` mask
        :raises ValueError: for a horizon that is not a positive integer or ``gamma`` outside [0, 1]
        """
        horizon = check_positive_int(horizon, "horizon")
        gamma = check_discount(gamma)
        n = len(self)
        rows = np.arange(n)
        ends = self.terminations | self.truncations | np.append(self.episode_starts[1:], True)
        # The episode's last row at or after each row: a running minimum, from the end, of the rows that end one.
        last_rows = np.minimum.accumulate(np.where(ends, rows, n)[::-1])[::-1]
        chunk_steps = np.minimum(horizon, last_rows - rows + 1).astype(np.int64)
        offsets = np.arange(horizon)
        valid = offsets[None, :] < chunk_steps[:, None]
        # Row of each action of each chunk, padded with the chunk's last in-episode row.
        index = rows[:, None] + np.minimum(offsets[None, :], chunk_steps[:, None] - 1)
        rewards = np.where(valid, self.rewards[index].astype(np.float64), 0.0) @ (gamma ** offsets.astype(np.float64))
        last = rows + chunk_steps - 1
        demonstrations = Demonstrations(
            observations=copy_rows(self.observations),
            actions=self.actions[index].reshape(n, horizon * int(np.prod(self.actions.shape[1:], dtype=np.int64))),
            rewards=rewards.astype(np.float32),
            next_observations=index_rows(self.next_observations, last),
            terminations=(self.terminations[index] & valid).any(axis=1),
            truncations=(self.truncations[index] & valid).any(axis=1),
            episode_starts=self.episode_starts.copy(),
        )
        return ChunkedDemonstrations(demonstrations, horizon, gamma, chunk_steps, valid)

    @classmethod
    def concatenate(cls, parts: list[Demonstrations]) -> Demonstrations:
        """Join several sets of demonstrations, in order."""
        if not parts:
            raise ValueError("concatenate needs at least one Demonstrations")

        def join(name: str) -> Any:
            return concatenate_rows([getattr(part, name) for part in parts])

        return cls(**{field.name: join(field.name) for field in fields(cls)})


@dataclass
class ChunkedDemonstrations:
    """
    Demonstrations over action chunks, made by :meth:`Demonstrations.chunked`, with what a TD target over chunks needs
    besides the transitions (Q-chunking, Li et al., 2025: https://arxiv.org/abs/2507.07969).

    :param demonstrations: one row per chunk; actions of shape (n, horizon * action_dim), fitting
        ``ActionChunkWrapper(env, horizon)``'s spaces (pass them to FlowBC, or to an algorithm on the chunked env)
    :param horizon: H, the number of actions in a chunk
    :param gamma: the discount the chunk rewards were summed with
    :param chunk_steps: shape (n,), the chunk's steps inside its episode, in [1, horizon]
    :param valid: shape (n, horizon), bool, ``valid[i, j] = j < chunk_steps[i]``: which actions of the chunk lie
        inside its episode (QC's ``valid``); the others are padding
    """

    demonstrations: Demonstrations
    horizon: int
    gamma: float
    chunk_steps: np.ndarray
    valid: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.demonstrations)
        self.chunk_steps = np.asarray(self.chunk_steps, dtype=np.int64).reshape(-1)
        self.valid = np.asarray(self.valid, dtype=bool)
        if self.chunk_steps.shape != (n,) or self.valid.shape != (n, self.horizon):
            raise ValueError(
                f"ChunkedDemonstrations of {n} rows and horizon {self.horizon} need chunk_steps of shape ({n},) and valid "
                f"of shape ({n}, {self.horizon}), got {self.chunk_steps.shape} and {self.valid.shape}"
            )
        if not np.array_equal(self.valid.sum(axis=1), self.chunk_steps):
            raise ValueError("valid must mark the first chunk_steps actions of each chunk")

    def __len__(self) -> int:
        return len(self.demonstrations)

    @property
    def discounts(self) -> np.ndarray:
        """``gamma ** chunk_steps``, shape (n,): the discount a TD target bootstraps the chunk's next observation with."""
        return (self.gamma ** self.chunk_steps.astype(np.float64)).astype(np.float32)

    @property
    def complete(self) -> np.ndarray:
        """
        ``valid[:, -1]``, shape (n,): the chunks whose every action lies inside their episode, the rows QC's critic
        loss keeps (``critic_loss * batch["valid"][..., -1]`` in its ``agents/acfql.py``).
        """
        return self.valid[:, -1].copy()


def in_env_image_layout(demonstrations: Demonstrations, env: VecEnv | None, action_space: spaces.Space) -> Demonstrations:
    """
    Demonstrations recorded with channel-last images from the raw environment, transposed to channel-first when SB3
    transposed the model's environment (``VecTransposeImage``) as it does for image observations; unchanged otherwise.
    The caller's object is not modified.

    :param demonstrations: the demonstrations
    :param env: the model's (vectorized) environment
    :param action_space: the environment's action space
    """
    if env is None or not is_vecenv_wrapped(env, VecTransposeImage):
        return demonstrations
    transposer = env if isinstance(env, VecTransposeImage) else unwrap_vec_wrapper(env, VecTransposeImage)
    assert isinstance(transposer, VecTransposeImage)
    try:
        demonstrations.check_spaces(transposer.venv.observation_space, action_space)
    except ValueError:  # not in the raw environment's layout: the caller checks them against the model's spaces
        return demonstrations
    return dataclasses.replace(
        demonstrations,
        observations=transposer.transpose_observations(copy_rows(demonstrations.observations)),
        next_observations=transposer.transpose_observations(copy_rows(demonstrations.next_observations)),
    )


def _expert_action_fn(expert: Expert, deterministic: bool) -> Callable[[Any], np.ndarray]:
    predict = getattr(expert, "predict", None)
    if callable(predict):
        return lambda obs: predict(obs, deterministic=deterministic)[0]
    if callable(expert):
        return expert
    raise TypeError(f"expert must be an SB3 model (with .predict) or a callable obs -> action, got {type(expert).__name__}")


def collect_demonstrations(
    env: gym.Env | str,
    expert: Expert,
    n_episodes: int,
    action_noise: float = 0.0,
    seed: int | None = None,
    deterministic: bool = True,
    progress_bar: bool = False,
) -> Demonstrations:
    """
    Roll out an expert and record its transitions.

    :param env: a gymnasium environment or its id (not a VecEnv: episodes are recorded one at a time)
    :param expert: an SB3 model, or any callable mapping one observation to one action (in the env's units)
    :param n_episodes: number of episodes
    :param action_noise: std of Gaussian noise added to the expert's action, as a fraction of the half-width of
        the action box (0.3 on a [-2, 2] box adds N(0, 0.6^2)); the noisy action is clipped to the box and is what is
        both executed and recorded, which makes the data good but not optimal
    :param seed: seeds the environment's resets and the action noise
    :param deterministic: passed to an SB3 expert's ``predict``
    :param progress_bar: show a progress bar over episodes
    :return: the demonstrations
    """
    if isinstance(env, VecEnv):
        raise TypeError("collect_demonstrations takes a single gymnasium.Env (or an env id), not a VecEnv")
    if isinstance(env, str):
        env = gym.make(env)
    action_space = check_box_action_space(env.action_space, "collect_demonstrations")
    n_episodes = check_positive_int(n_episodes, "n_episodes")
    action_noise = check_finite_number(action_noise, "action_noise", minimum=0.0)
    act = _expert_action_fn(expert, deterministic)
    rng = np.random.default_rng(seed)
    half_width = (action_space.high - action_space.low) / 2.0

    rows: dict[str, list] = {name: [] for name in (field.name for field in fields(Demonstrations))}
    for episode in tqdm(range(n_episodes), desc="collecting", unit="episode", disable=not progress_bar):
        obs, _ = env.reset(seed=None if seed is None else seed + episode)
        done = False
        first = True
        while not done:
            action = np.asarray(act(obs), dtype=np.float32).reshape(action_space.shape)
            if not np.all(np.isfinite(action)):
                raise ValueError(
                    f"The expert returned a non-finite action {action} at step {len(rows['actions'])} (episode {episode}); "
                    "nothing was recorded for it"
                )
            if action_noise > 0:
                action = action + rng.normal(0.0, action_noise, size=action.shape) * half_width
            action = np.clip(action, action_space.low, action_space.high).astype(np.float32)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            rows["observations"].append(copy_rows(obs))
            rows["actions"].append(action)
            rows["rewards"].append(float(reward))
            rows["next_observations"].append(copy_rows(next_obs))
            rows["terminations"].append(bool(terminated))
            rows["truncations"].append(bool(truncated))
            rows["episode_starts"].append(first)
            first = False
            done = terminated or truncated
            obs = next_obs
    return Demonstrations(
        observations=stack_rows(rows.pop("observations")),
        next_observations=stack_rows(rows.pop("next_observations")),
        **{name: np.asarray(values) for name, values in rows.items()},
    )


def from_minari(dataset: Any, n_episodes: int | None = None) -> Demonstrations:
    """
    Read a Minari dataset that is already on this machine (nothing is downloaded).

    :param dataset: a ``minari.MinariDataset`` or the id of a locally stored one
    :param n_episodes: read at most this many episodes
    :return: the demonstrations
    :raises ImportError: when minari is not installed (``pip install sb3-flow[minari]``)
    """
    try:
        import minari
    except ImportError as error:
        raise ImportError("from_minari needs the minari package: pip install 'sb3-flow[minari]'") from error
    if isinstance(dataset, str):
        dataset = minari.load_dataset(dataset, download=False)
    parts = []
    for episode_index, episode in enumerate(dataset.iterate_episodes()):
        if n_episodes is not None and episode_index >= n_episodes:
            break
        length = len(episode.actions)
        starts = np.zeros(length, dtype=bool)
        starts[0] = True
        parts.append(
            Demonstrations(
                observations=index_rows(episode.observations, slice(0, length)),
                actions=episode.actions,
                rewards=episode.rewards,
                next_observations=index_rows(episode.observations, slice(1, length + 1)),
                terminations=episode.terminations,
                truncations=episode.truncations,
                episode_starts=starts,
            )
        )
    if not parts:
        raise ValueError(f"The Minari dataset {getattr(dataset, 'id', dataset)!r} has no episodes")
    return Demonstrations.concatenate(parts)
