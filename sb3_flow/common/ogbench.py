"""
OGBench manipulation tasks without the dataset download: the environments, play / noisy datasets generated here from
OGBench's own scripted oracles (and task-directed oracle demonstrations), and success-rate evaluation.

OGBench (Park et al., 2025, https://arxiv.org/abs/2410.20092; code https://github.com/seohongpark/ogbench) builds its
environments offline (``ogbench.make_env_and_datasets(name, env_only=True)``) but downloads its datasets. The
authors made those datasets with ``data_gen_scripts/generate_manipspace.py`` (not part of the ``ogbench`` wheel) from
the oracles that the wheel ships in ``ogbench.manipspace.oracles``; :func:`collect_ogbench_dataset` runs the same
generation loop with the same settings (listed in its docstring, each with the file it comes from) and relabels the
transitions with the single-task reward by calling the package's own ``ogbench.relabel_utils.relabel_dataset``, as
``make_env_and_datasets`` does for ``singletask`` names.

``generate_manipspace.py`` and ``data_gen_scripts/commands.sh`` are not installed with ``ogbench``; the settings below
were read from copies of them in public forks of the repository (the same generation loop in each copy read), and
the oracles' own defaults in the installed package agree with them (``PlanOracle(noise=0.1, noise_smoothing=0.5)``,
``MarkovOracle(min_norm=0.4)``). The script has a ``--seed`` flag but seeds nothing; here ``seed`` makes a dataset
reproducible.

Needs the optional extra: ``pip install 'sb3-flow[ogbench]'``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from sb3_flow.common.demonstrations import Demonstrations, Expert, _expert_action_fn
from sb3_flow.common.utils import check_finite_number, check_positive_int

# The authors' generation settings, all from data_gen_scripts/generate_manipspace.py (flag defaults) and
# data_gen_scripts/commands.sh (the command line of every released manipulation dataset) in the OGBench repository.
OGBENCH_NOISE = 0.1  # --noise: the PlanOracle's plan noise, and the upper end of the MarkovOracle's action noise
OGBENCH_NOISE_SMOOTHING = 0.5  # --noise_smoothing: std (in steps) of the Gaussian filter on the PlanOracle's noise
OGBENCH_MIN_NORM = 0.4  # --min_norm: the MarkovOracle's minimum norm of the position error it acts on
OGBENCH_EPISODE_STEPS = 1001  # --max_episode_steps in commands.sh; load_dataset keeps 1000 transitions of them
# --p_random_action in commands.sh: 0 for every "play" dataset; 0.1 for the "noisy" cube and scene, 0.2 for puzzle.
OGBENCH_P_RANDOM_ACTION = {"play": 0.0, "noisy": 0.1, "noisy-puzzle": 0.2}
# generate_manipspace.py: "play" uses the non-Markovian PlanOracle, "noisy" the closed-loop MarkovOracle.
OGBENCH_ORACLES = {"play": "plan", "noisy": "markov"}

_INSTALL_HINT = "pip install 'sb3-flow[ogbench]'"


def _import_ogbench() -> Any:
    try:
        import ogbench
    except ImportError as error:
        raise ImportError(f"The OGBench environments need the ogbench package: {_INSTALL_HINT}") from error
    return ogbench


def register_ogbench_envs(env_id: str) -> None:
    """
    Make an OGBench environment id usable with ``gymnasium.make`` (and so with ``make_vec_env`` and every SB3
    constructor given the id): OGBench registers its environments when ``ogbench`` is imported, which each process that
    builds one must do. Does nothing for an id gymnasium already knows or one that is not OGBench's (no ``singletask``
    part), so it can be called on any id.

    :param env_id: a gymnasium id, e.g. ``cube-single-singletask-task2-v0`` (the environment of the dataset name
        ``cube-single-play-singletask-task2-v0``)
    :raises ImportError: for an OGBench id when ogbench is not installed
    """
    if env_id in gym.registry or "singletask" not in env_id.split("-"):
        return
    _import_ogbench()


@dataclass(frozen=True)
class OGBenchName:
    """
    The parts of an OGBench single-task dataset name, split as ``ogbench.make_env_and_datasets`` splits it
    (ogbench/utils.py): ``cube-single-play-singletask-task2-v0`` is the dataset type ``play`` of the environment
    ``cube-single-v0`` (where the data are collected), evaluated on ``cube-single-singletask-task2-v0``.

    :param name: the full name
    :param dataset_type: "play" or "noisy"
    :param collection_env_id: the goal-conditioned environment the data are collected in
    :param task_env_id: the single-task environment (reward and termination of the task)
    """

    name: str
    dataset_type: str
    collection_env_id: str
    task_env_id: str

    @property
    def family(self) -> str:
        """ "cube", "scene" or "puzzle"."""
        return self.collection_env_id.split("-")[0]


def parse_ogbench_name(env_name: str) -> OGBenchName:
    """
    Split an OGBench single-task manipulation dataset name.

    :param env_name: e.g. ``cube-single-play-singletask-task2-v0`` or ``puzzle-3x3-noisy-singletask-v0``
    :raises ValueError: for a name that is not a state-based single-task cube / scene / puzzle dataset name
    """
    splits = str(env_name).split("-")
    if "singletask" not in splits:
        raise ValueError(
            f"{env_name!r} is not an OGBench single-task dataset name (such as 'cube-single-play-singletask-task2-v0'): "
            "only single-task datasets have rewards for offline RL"
        )
    pos = splits.index("singletask")
    dataset_type = splits[pos - 1] if pos >= 1 else ""
    family = splits[0]
    if family == "visual":
        raise ValueError(f"{env_name!r}: pixel-based ('visual-') OGBench tasks are not supported, only state-based ones")
    if family not in ("cube", "scene", "puzzle"):
        raise ValueError(f"{env_name!r}: only the manipulation tasks (cube, scene, puzzle) have scripted oracles")
    if dataset_type not in OGBENCH_ORACLES:
        raise ValueError(f"{env_name!r}: the dataset type before 'singletask' must be 'play' or 'noisy', got {dataset_type!r}")
    return OGBenchName(
        name=str(env_name),
        dataset_type=dataset_type,
        collection_env_id="-".join(splits[: pos - 1] + splits[-1:]),
        task_env_id="-".join(splits[: pos - 1] + splits[pos:]),
    )


def make_ogbench_env(env_name: str, **kwargs: Any) -> gym.Env:
    """
    The OGBench environment of a dataset name, built offline (``make_env_and_datasets(env_name, env_only=True)``;
    nothing is downloaded). ``cube-single-play-singletask-task2-v0`` gives the single-task ``CubeEnv``: 28-d
    observation, 5-d action in [-1, 1], 200 steps, reward -1 until the cube is at the goal (then 0 and terminated:
    OGBench evaluates single-task envs with ``success_timing='pre'``, so both come on the step after the one that put
    the cube there), ``info["success"]`` on every step.

    :param env_name: an OGBench dataset name (``...-singletask-taskN-v0`` for a reward-based task)
    :param kwargs: keyword arguments of the environment (e.g. ``terminate_at_goal=False``)
    :return: the environment (a gymnasium ``TimeLimit`` wrapper)
    :raises ImportError: when ogbench is not installed
    """
    ogbench = _import_ogbench()
    return ogbench.make_env_and_datasets(env_name, env_only=True, **kwargs)


@contextlib.contextmanager
def _seeded_global_numpy(seed: int | None) -> Iterator[None]:
    """OGBench's oracles and its generation script draw from numpy's global generator: seed it, restore it after."""
    if seed is None:
        yield
        return
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)


def _make_oracles(
    name: OGBenchName, env: gym.Env, oracle: str, noise: float, noise_smoothing: float, min_norm: float
) -> dict[str, Any]:
    """One oracle per target task, as generate_manipspace.py builds them."""
    from ogbench.manipspace.oracles.markov.button_markov import ButtonMarkovOracle
    from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle
    from ogbench.manipspace.oracles.markov.drawer_markov import DrawerMarkovOracle
    from ogbench.manipspace.oracles.markov.window_markov import WindowMarkovOracle
    from ogbench.manipspace.oracles.plan.button_plan import ButtonPlanOracle
    from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle
    from ogbench.manipspace.oracles.plan.drawer_plan import DrawerPlanOracle
    from ogbench.manipspace.oracles.plan.window_plan import WindowPlanOracle

    plan = {"env": env, "noise": noise, "noise_smoothing": noise_smoothing}
    markov = {"env": env, "min_norm": min_norm}
    if name.family == "cube":
        return {"cube": CubeMarkovOracle(**markov) if oracle == "markov" else CubePlanOracle(**plan)}
    if name.family == "scene":
        if oracle == "markov":
            return {
                "cube": CubeMarkovOracle(max_step=100, **markov),
                "button": ButtonMarkovOracle(**markov),
                "drawer": DrawerMarkovOracle(**markov),
                "window": WindowMarkovOracle(**markov),
            }
        return {
            "cube": CubePlanOracle(**plan),
            "button": ButtonPlanOracle(**plan),
            "drawer": DrawerPlanOracle(**plan),
            "window": WindowPlanOracle(**plan),
        }
    # puzzle: the buttons are pressed with the gripper closed.
    if oracle == "markov":
        return {"button": ButtonMarkovOracle(gripper_always_closed=True, **markov)}
    return {"button": ButtonPlanOracle(gripper_always_closed=True, **plan)}


def _stack_probability(collection_env_id: str) -> float:
    """Per-episode probability of a stacking target (generate_manipspace.py; draws from numpy's global generator)."""
    ranges = {"single": None, "double": (0.0, 0.25), "triple": (0.05, 0.35), "quadruple": (0.1, 0.5), "octuple": (0.0, 0.35)}
    for key, bounds in ranges.items():
        if key in collection_env_id:
            return 0.0 if bounds is None else float(np.random.uniform(*bounds))
    return 0.5


def _scene_episode_is_healthy(qpos: np.ndarray) -> bool:
    """generate_manipspace.py's check for scene: the cube stays visible unless it is in the drawer."""
    block_xyzs = qpos[:, 14:17]
    if (block_xyzs[:, 1] >= 0.29).any():
        return False
    return not ((block_xyzs[:, 1] <= -0.3) & ((block_xyzs[:, 2] < 0.06) | (block_xyzs[:, 2] > 0.08))).any()


def relabel_ogbench(
    env_name: str, qpos: np.ndarray, button_states: np.ndarray | None = None, task_env: gym.Env | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """
    The single-task reward and termination of states, computed by OGBench's own ``relabel_dataset``
    (ogbench/relabel_utils.py), which ``make_env_and_datasets`` applies to every ``singletask`` dataset: for cube,
    reward = (number of cubes within 4 cm of their goal) - (number of cubes), so -1 or 0 on cube-single, and the
    transition is terminal (OGBench's ``masks = 0``) when every cube is at its goal. These are the single-task env's
    own reward and ``terminated`` on a step that starts in that state (``success_timing='pre'``,
    ogbench/manipspace/__init__.py).

    :param env_name: an OGBench single-task dataset name (:func:`parse_ogbench_name`)
    :param qpos: MuJoCo ``qpos`` of the state each transition starts from, shape (n, nq)
    :param button_states: button states of those states, shape (n, n_buttons) (scene and puzzle only)
    :param task_env: the single-task environment, if already built (it is reset)
    :return: rewards (n,) float32 and terminations (n,) bool
    """
    name = parse_ogbench_name(env_name)
    _import_ogbench()
    from ogbench.relabel_utils import relabel_dataset

    env = make_ogbench_env(name.name) if task_env is None else task_env
    dataset: dict[str, np.ndarray] = {"qpos": np.asarray(qpos, dtype=np.float64)}
    if button_states is not None:
        dataset["button_states"] = np.asarray(button_states)
    elif name.family in ("scene", "puzzle"):
        raise ValueError(f"{name.family} rewards depend on the button states: pass button_states")
    try:
        relabel_dataset(name.task_env_id, env, dataset)
    finally:
        if task_env is None:
            env.close()
    return dataset["rewards"].astype(np.float32), dataset["masks"] == 0.0


def collect_ogbench_dataset(
    env_name: str = "cube-single-play-singletask-task2-v0",
    *,
    n_episodes: int,
    episode_length: int | None = None,
    noise: float = OGBENCH_NOISE,
    oracle: str | None = None,
    p_random_action: float | None = None,
    noise_smoothing: float = OGBENCH_NOISE_SMOOTHING,
    min_norm: float = OGBENCH_MIN_NORM,
    seed: int | None = 0,
    progress_bar: bool = False,
) -> Demonstrations:
    """
    Generate an OGBench manipulation dataset here, as the authors generated theirs (the download cannot be reached),
    with the single-task reward of ``env_name``.

    Generation, following ``data_gen_scripts/generate_manipspace.py`` of the OGBench repository (Park et al., 2025):
    the goal-conditioned environment (``cube-single-v0`` for ``cube-single-play-singletask-task2-v0``) runs in
    ``mode='data_collection'`` with ``terminate_at_goal=False``: it puts the objects at random, samples a random
    target (``set_new_target``: a random cube and position on cube-single, ``p_stack`` as in the script for several
    cubes; a random cube / button / drawer / window task on scene), and each time the oracle reports ``done`` a new
    target is sampled, so one episode holds several tasks, none of them chosen with the evaluation task in mind.

    - ``"play"`` data: ``PlanOracle`` (ogbench/manipspace/oracles/plan/), a pre-computed keyframe plan with random
      timings and heights plus temporally correlated Gaussian noise, ``noise`` times the action range per dimension,
      smoothed by a Gaussian filter of std ``noise_smoothing`` steps; no random actions.
    - ``"noisy"`` data: ``MarkovOracle`` (ogbench/manipspace/oracles/markov/), closed-loop; per episode a noise level
      ``xi ~ U(0, noise)``, per step Gaussian noise of std ``[xi, xi, xi, 3 xi, 10 xi]`` on the [-1, 1] action, and
      with probability ``p_random_action`` a uniform random action instead.

    Every action is clipped to [-1, 1] and is the one executed and recorded. Each row is relabeled with
    :func:`relabel_ogbench` (OGBench's ``relabel_dataset``) on the state it starts from: reward -1 or 0 on
    cube-single, ``terminations`` True where the task is solved (OGBench's ``masks == 0``, no bootstrapping there).
    As in OGBench's datasets, an episode goes on after such a row (play data do not stop at the evaluation task's
    goal), so ``next_observations[i] == observations[i + 1]`` within an episode; ``truncations`` marks the last row
    of each episode (the time limit), ``episode_starts`` the first.

    The authors' full-size datasets: cube-single / cube-double / scene / puzzle-3x3 / puzzle-4x4, 1000 episodes;
    cube-triple and puzzle-4x5 3000; cube-quadruple and puzzle-4x6 5000 (data_gen_scripts/commands.sh).

    :param env_name: an OGBench single-task dataset name, e.g. ``cube-single-play-singletask-task2-v0``; the part
        before ``singletask`` ("play" or "noisy") picks the authors' settings
    :param n_episodes: number of episodes (the authors: 1000 for cube-single)
    :param episode_length: transitions per episode; None: 1000, the authors' 1001-step episodes as
        ``ogbench.load_dataset`` returns them (the last observation has no next one: 1000 transitions per episode,
        1M in all for cube-single)
    :param noise: noise level (the authors' 0.1 for both types; 0 gives the noiseless oracle)
    :param oracle: "plan" or "markov"; None: the authors' choice for the dataset type ("plan" for play, "markov"
        for noisy)
    :param p_random_action: probability of a uniform random action per step; None: the authors' value for the
        dataset type (play: 0; noisy: 0.1, puzzle 0.2). Random actions are drawn from numpy's generator (the script
        calls ``env.action_space.sample()``, which OGBench's envs do not seed: same distribution)
    :param noise_smoothing: the PlanOracle's noise smoothing (the authors' 0.5)
    :param min_norm: the MarkovOracle's minimum position-error norm (the authors' 0.4)
    :param seed: seeds the environment's first reset and numpy's global generator, which OGBench's oracles and the
        authors' loop draw from (its state is restored afterwards; not thread-safe); None: no seeding
    :param progress_bar: show a progress bar over episodes
    :return: the dataset (observations float32, as ``ogbench.load_dataset`` returns them)
    :raises ImportError: when ogbench is not installed
    :raises ValueError: for a name that is not a state-based single-task manipulation dataset, or bad settings
    """
    name = parse_ogbench_name(env_name)
    n_episodes = check_positive_int(n_episodes, "n_episodes")
    episode_length = (
        OGBENCH_EPISODE_STEPS - 1 if episode_length is None else check_positive_int(episode_length, "episode_length")
    )
    noise = check_finite_number(noise, "noise", minimum=0.0)
    noise_smoothing = check_finite_number(noise_smoothing, "noise_smoothing", minimum=0.0)
    min_norm = check_finite_number(min_norm, "min_norm", minimum=0.0)
    if oracle is None:
        oracle = OGBENCH_ORACLES[name.dataset_type]
    if oracle not in ("plan", "markov"):
        raise ValueError(f"oracle must be 'plan' or 'markov' (or None for the dataset type's), got {oracle!r}")
    if p_random_action is None:
        key = "noisy-puzzle" if name.dataset_type == "noisy" and name.family == "puzzle" else name.dataset_type
        p_random_action = OGBENCH_P_RANDOM_ACTION[key]
    p_random_action = check_finite_number(p_random_action, "p_random_action", minimum=0.0)
    if p_random_action > 1.0:
        raise ValueError(f"p_random_action must be a probability in [0, 1], got {p_random_action}")

    _import_ogbench()  # registers the environments
    env = gym.make(name.collection_env_id, terminate_at_goal=False, mode="data_collection", max_episode_steps=episode_length)
    rows: dict[str, list[np.ndarray]] = {key: [] for key in ("obs", "actions", "next_obs", "qpos", "buttons")}
    try:
        has_buttons = hasattr(env.unwrapped, "_cur_button_states")
        with _seeded_global_numpy(seed):
            agents = _make_oracles(name, env, oracle, noise, noise_smoothing, min_norm)
            first_reset = True
            for _ in tqdm(range(n_episodes), desc="ogbench", unit="episode", disable=not progress_bar):
                while True:  # scene: an unhealthy episode is generated again, as the authors' script does
                    episode = _collect_episode(
                        env, agents, name, oracle, noise, p_random_action, has_buttons, seed if first_reset else None
                    )
                    first_reset = False
                    if name.family != "scene" or _scene_episode_is_healthy(episode["qpos"]):
                        break
                for key, value in episode.items():
                    rows[key].append(value)
    finally:
        env.close()

    qpos = np.concatenate(rows["qpos"])
    buttons = np.concatenate(rows["buttons"]) if has_buttons else None
    task_env = make_ogbench_env(name.name)
    try:
        task_env.reset(seed=seed)
        rewards, terminations = relabel_ogbench(name.name, qpos, buttons, task_env=task_env)
    finally:
        task_env.close()
    lengths = [len(actions) for actions in rows["actions"]]
    ends = np.cumsum(lengths)
    episode_starts = np.zeros(int(ends[-1]), dtype=bool)
    episode_starts[ends - np.asarray(lengths)] = True
    truncations = np.zeros_like(episode_starts)
    truncations[ends - 1] = True
    return Demonstrations(
        observations=np.concatenate(rows["obs"]).astype(np.float32),
        actions=np.concatenate(rows["actions"]).astype(np.float32),
        rewards=rewards,
        next_observations=np.concatenate(rows["next_obs"]).astype(np.float32),
        terminations=terminations,
        truncations=truncations,
        episode_starts=episode_starts,
    )


def _collect_episode(
    env: gym.Env,
    agents: dict[str, Any],
    name: OGBenchName,
    oracle: str,
    noise: float,
    p_random_action: float,
    has_buttons: bool,
    seed: int | None,
) -> dict[str, np.ndarray]:
    """One episode of generate_manipspace.py's loop (its random draws in its order, from numpy's global generator)."""
    ob, info = env.reset(seed=seed)
    p_stack = _stack_probability(name.collection_env_id)
    xi = np.random.uniform(0, noise) if oracle == "markov" else 0.0
    agent = agents[info["privileged/target_task"]]
    agent.reset(ob, info)
    episode: dict[str, list[np.ndarray]] = {key: [] for key in ("obs", "actions", "next_obs", "qpos", "buttons")}
    done = False
    while not done:
        action = _oracle_action(agent, ob, info, oracle, xi, p_random_action)
        next_ob, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
        if agent.done:
            # A new target when the current one is done; the oracle sees the step's info until the next step.
            agent_ob, agent_info = env.unwrapped.set_new_target(p_stack=p_stack)
            agent = agents[agent_info["privileged/target_task"]]
            agent.reset(agent_ob, agent_info)
        episode["obs"].append(ob)
        episode["actions"].append(action)
        episode["next_obs"].append(next_ob)
        episode["qpos"].append(info["prev_qpos"])  # the state the transition starts from, as the authors store it
        if has_buttons:
            episode["buttons"].append(info["prev_button_states"])
        ob = next_ob
    return {key: np.asarray(values) for key, values in episode.items()}


def ogbench_success_rate(
    policy: Expert,
    env_name: str = "cube-single-play-singletask-task2-v0",
    n_episodes: int = 10,
    seed: int = 0,
    deterministic: bool = True,
    env_wrapper: Any = None,
) -> float:
    """
    Fraction of episodes a policy solves the OGBench task in, as OGBench's evaluation counts it (``info["success"]``
    of an episode's last step; the single-task env ends the episode on success).

    :param policy: an SB3 model (``predict``) or a callable observation -> action
    :param env_name: the OGBench dataset name whose environment is evaluated (:func:`make_ogbench_env`)
    :param n_episodes: number of episodes
    :param seed: episode ``i`` is reset with ``seed + i``
    :param deterministic: passed to an SB3 model's ``predict``
    :param env_wrapper: optional callable gym.Env -> gym.Env around the task's env (e.g. an ``ActionChunkWrapper``
        for a policy that acts in chunks); it must pass the inner ``info["success"]`` on (ActionChunkWrapper does)
    :return: the success rate in [0, 1]
    """
    n_episodes = check_positive_int(n_episodes, "n_episodes")
    act = _expert_action_fn(policy, deterministic)
    env = make_ogbench_env(env_name)
    if env_wrapper is not None:
        env = env_wrapper(env)
    successes = 0
    try:
        for episode in range(n_episodes):
            obs, _ = env.reset(seed=seed + episode)
            done, info = False, {}
            while not done:
                obs, _, terminated, truncated, info = env.step(np.asarray(act(obs), dtype=np.float32))
                done = terminated or truncated
            successes += bool(info.get("success", False))
    finally:
        env.close()
    return successes / n_episodes


def ogbench_oracle_success_rate(
    env_name: str = "cube-single-play-singletask-task2-v0",
    n_episodes: int = 10,
    oracle: str = "plan",
    noise: float = 0.0,
    p_random_action: float = 0.0,
    seed: int = 0,
) -> float:
    """
    Success rate of OGBench's scripted oracle on a single-cube task itself (the data's quality ceiling): the oracle is
    shown the task's goal as its target (cube 0, the goal position, yaw 0) and restarted (a new plan, or the Markov
    oracle's reset) whenever it reports ``done`` before the episode ends. Noise as in :func:`collect_ogbench_dataset`
    (for "markov", ``xi ~ U(0, noise)`` per episode).

    :param env_name: a single-cube OGBench single-task name (cube-single)
    :param n_episodes: number of episodes
    :param oracle: "plan" or "markov"
    :param noise: noise level (0: the noiseless oracle)
    :param p_random_action: probability of a uniform random action per step
    :param seed: episode ``i`` is reset with ``seed + i``; the oracle's draws are seeded from ``seed``
    :return: the success rate in [0, 1]
    """
    episodes = list(_task_oracle_episodes(env_name, n_episodes, oracle, noise, p_random_action, seed))
    return sum(bool(episode["terminations"][-1]) for episode in episodes) / len(episodes)


def collect_ogbench_task_dataset(
    env_name: str = "cube-single-play-singletask-task2-v0",
    *,
    n_episodes: int,
    oracle: str = "markov",
    noise: float = OGBENCH_NOISE,
    p_random_action: float = 0.0,
    seed: int = 0,
    progress_bar: bool = False,
) -> Demonstrations:
    """
    Episodes of OGBench's scripted oracle solving the **evaluation task itself** on the single-task environment
    (:func:`ogbench_oracle_success_rate`'s episodes, recorded), with noise. Unlike :func:`collect_ogbench_dataset`'s
    play / noisy data (targets drawn at random, so almost no row heads for the evaluation task's goal), these are
    task-directed demonstrations: mixed with play data they make a dataset whose few good episodes a critic must find,
    the OGBench analogue of an expert-plus-random Pendulum dataset, learnable at a CPU budget. Not one of OGBench's
    released dataset types.

    Rewards and terminations are the single-task environment's own (reward -1 or 0 on cube-single, the episode ends
    with ``terminated`` on success; the same values :func:`relabel_ogbench` computes, since the env checks success
    before the step); ``truncations`` marks an episode cut by the 200-step limit.

    :param env_name: a single-cube OGBench single-task name (cube-single)
    :param n_episodes: number of episodes
    :param oracle: "markov" (closed-loop) or "plan"
    :param noise: noise level as in :func:`collect_ogbench_dataset` (for "markov", ``xi ~ U(0, noise)`` per episode)
    :param p_random_action: probability of a uniform random action per step
    :param seed: episode ``i`` is reset with ``seed + i``; the oracle's draws are seeded from ``seed``
    :param progress_bar: show a progress bar over episodes
    :return: the dataset
    """
    rows: dict[str, list[np.ndarray]] = {}
    episodes = _task_oracle_episodes(env_name, n_episodes, oracle, noise, p_random_action, seed)
    for episode in tqdm(episodes, total=n_episodes, desc="ogbench task", unit="episode", disable=not progress_bar):
        for key, value in episode.items():
            rows.setdefault(key, []).append(value)
    lengths = np.array([len(actions) for actions in rows["actions"]])
    episode_starts = np.zeros(int(lengths.sum()), dtype=bool)
    episode_starts[np.cumsum(lengths) - lengths] = True
    return Demonstrations(
        observations=np.concatenate(rows["observations"]).astype(np.float32),
        actions=np.concatenate(rows["actions"]).astype(np.float32),
        rewards=np.concatenate(rows["rewards"]).astype(np.float32),
        next_observations=np.concatenate(rows["next_observations"]).astype(np.float32),
        terminations=np.concatenate(rows["terminations"]),
        truncations=np.concatenate(rows["truncations"]),
        episode_starts=episode_starts,
    )


def _task_oracle_episodes(
    env_name: str, n_episodes: int, oracle: str, noise: float, p_random_action: float, seed: int
) -> Iterator[dict[str, np.ndarray]]:
    """
    Episodes of the oracle pointed at the single-task environment's own goal (restarted whenever it reports ``done``
    before the episode ends), as arrays of observations, actions, rewards, next observations, terminations and
    truncations.
    """
    name = parse_ogbench_name(env_name)
    n_episodes = check_positive_int(n_episodes, "n_episodes")
    if oracle not in ("plan", "markov"):
        raise ValueError(f"oracle must be 'plan' or 'markov', got {oracle!r}")
    noise = check_finite_number(noise, "noise", minimum=0.0)
    p_random_action = check_finite_number(p_random_action, "p_random_action", minimum=0.0)
    if p_random_action > 1.0:
        raise ValueError(f"p_random_action must be a probability in [0, 1], got {p_random_action}")
    env = make_ogbench_env(name.name)
    try:
        if name.family != "cube" or env.unwrapped._num_cubes != 1:
            raise ValueError(f"the task-directed oracle supports the single-cube tasks only, got {env_name!r}")
        with _seeded_global_numpy(seed):
            agent = _make_oracles(name, env, oracle, noise, OGBENCH_NOISE_SMOOTHING, OGBENCH_MIN_NORM)["cube"]
            for episode in range(n_episodes):
                ob, info = env.reset(seed=seed + episode)
                info = _with_task_target(env, info)
                xi = np.random.uniform(0, noise) if oracle == "markov" else 0.0
                agent.reset(ob, info)
                steps: dict[str, list[Any]] = {
                    key: []
                    for key in ("observations", "actions", "rewards", "next_observations", "terminations", "truncations")
                }
                done = False
                while not done:
                    action = _oracle_action(agent, ob, info, oracle, xi, p_random_action)
                    next_ob, reward, terminated, truncated, info = env.step(action)
                    info = _with_task_target(env, info)
                    for key, value in zip(
                        steps, (ob, action, reward, next_ob, terminated, truncated and not terminated), strict=True
                    ):
                        steps[key].append(value)
                    done = terminated or truncated
                    if agent.done and not done:
                        agent.reset(next_ob, info)
                    ob = next_ob
                yield {key: np.asarray(values) for key, values in steps.items()}
    finally:
        env.close()


def _with_task_target(env: gym.Env, info: dict[str, Any]) -> dict[str, Any]:
    """The target fields an oracle reads, which the env fills only in data-collection mode, for the task's goal."""
    unwrapped = env.unwrapped
    mocap_id = unwrapped._cube_target_mocap_ids[0]
    return {
        **info,
        "privileged/target_task": "cube",
        "privileged/target_block": 0,
        "privileged/target_block_pos": unwrapped._data.mocap_pos[mocap_id].copy(),
        "privileged/target_block_yaw": np.zeros(1),  # the task's goal orientation is the identity
    }


def _oracle_action(
    agent: Any, ob: np.ndarray, info: dict[str, Any], oracle: str, xi: float, p_random_action: float
) -> np.ndarray:
    """
    One step of the data-collection policy (``generate_manipspace.py``): a uniform random action with probability
    ``p_random_action``, else the oracle's action, with the markov oracle's per-dimension Gaussian noise
    ``[xi, xi, xi, 3 xi, 10 xi]``; clipped to [-1, 1].
    """
    if np.random.rand() < p_random_action:
        action = np.random.uniform(-1.0, 1.0, size=5)
    else:
        action = np.array(agent.select_action(ob, info), dtype=np.float64)
        if oracle == "markov":
            action = action + np.random.normal(0, [xi, xi, xi, xi * 3, xi * 10], action.shape)
    return np.clip(action, -1.0, 1.0)
