"""OGBench datasets generated here from OGBench's oracles (sb3_flow.common.ogbench); skipped without ogbench."""

import json
import sys
import warnings

import numpy as np
import pytest

from sb3_flow.common.ogbench import (
    collect_ogbench_dataset,
    collect_ogbench_task_dataset,
    make_ogbench_env,
    ogbench_oracle_success_rate,
    ogbench_success_rate,
    parse_ogbench_name,
    relabel_ogbench,
)

NAME = "cube-single-play-singletask-task2-v0"
N_EPISODES, LENGTH = 2, 120

# cube-single's observation (ogbench/manipspace/envs/cube_env.py compute_observation): the cube's position, scaled,
# then its quaternion.
CUBE_POS, CUBE_QUAT = slice(19, 22), slice(22, 26)
XYZ_CENTER, XYZ_SCALER = np.array([0.425, 0.0, 0.0]), 10.0


@pytest.fixture(scope="module")
def ogbench():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # glfw warns that there is no display
        return pytest.importorskip("ogbench")


@pytest.fixture(scope="module")
def play_data(ogbench):
    # Seed 0: the first episode spends rows at task 2's goal (56 on ogbench 1.2.2), so both outcomes are checked.
    return collect_ogbench_dataset(NAME, n_episodes=N_EPISODES, episode_length=LENGTH, seed=0)


@pytest.fixture(scope="module")
def task_env(ogbench):
    env = make_ogbench_env(NAME)
    yield env
    env.close()


def test_missing_ogbench_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "ogbench", None)  # import ogbench now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'sb3-flow\[ogbench\]'"):
        make_ogbench_env(NAME)
    with pytest.raises(ImportError, match=r"sb3-flow\[ogbench\]"):
        collect_ogbench_dataset(NAME, n_episodes=1)


def test_names_split_as_ogbench_does():
    name = parse_ogbench_name(NAME)
    assert (name.dataset_type, name.collection_env_id, name.task_env_id) == (
        "play",
        "cube-single-v0",
        "cube-single-singletask-task2-v0",
    )
    assert parse_ogbench_name("puzzle-3x3-noisy-singletask-v0").task_env_id == "puzzle-3x3-singletask-v0"
    for bad in ("cube-single-play-v0", "visual-cube-single-play-singletask-task2-v0", "antmaze-large-navigate-singletask-v0"):
        with pytest.raises(ValueError):
            parse_ogbench_name(bad)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_episodes": 0},
        {"n_episodes": 1, "noise": -0.1},
        {"n_episodes": 1, "oracle": "scripted"},
        {"n_episodes": 1, "p_random_action": 2},
    ],
)
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        collect_ogbench_dataset(NAME, **kwargs)


def test_dataset_fits_the_task_env(play_data, task_env):
    data = play_data
    assert task_env.spec.id == parse_ogbench_name(NAME).task_env_id
    assert task_env.spec.max_episode_steps == 200
    assert task_env.observation_space.shape == (28,) and task_env.action_space.shape == (5,)
    data.check_spaces(task_env.observation_space, task_env.action_space)
    data.check_finite()
    assert len(data) == N_EPISODES * LENGTH and data.n_episodes == N_EPISODES
    assert np.all(data.actions >= -1.0) and np.all(data.actions <= 1.0)
    # Episodes: starts and time-limit ends where they belong, and the rows of an episode are one trajectory.
    starts = np.arange(N_EPISODES) * LENGTH
    assert np.array_equal(np.flatnonzero(data.episode_starts), starts)
    assert np.array_equal(np.flatnonzero(data.truncations), starts + LENGTH - 1)
    inside = ~data.truncations[:-1]
    np.testing.assert_array_equal(data.next_observations[:-1][inside], data.observations[1:][inside])
    # Play data: the oracle moves the cube, several targets per episode.
    assert np.ptp(data.observations[:, CUBE_POS], axis=0).max() > 0.5  # > 5 cm


def test_rewards_and_terminations_are_the_task_envs_own(play_data, task_env):
    """Put the task env in each recorded state (its cube pose, read from the observation) and ask the env itself."""
    import mujoco

    data = play_data
    env = task_env.unwrapped
    task_env.reset(seed=0)
    goal = env._data.mocap_pos[env._cube_target_mocap_ids[0]].copy()
    np.testing.assert_allclose(goal, [0.50, 0.0, 0.02])  # task 2's goal (cube_env.py set_tasks)
    cube_pos = data.observations[:, CUBE_POS].astype(np.float64) / XYZ_SCALER + XYZ_CENTER
    checked = 0
    for row in range(len(data)):
        if abs(np.linalg.norm(cube_pos[row] - goal) - 0.04) < 1e-5:
            continue  # float32 observation too close to the 4 cm threshold to decide
        env._data.joint("object_joint_0").qpos[:] = np.concatenate([cube_pos[row], data.observations[row, CUBE_QUAT]])
        mujoco.mj_forward(env._model, env._data)
        assert data.rewards[row] == env.compute_reward()
        assert data.terminations[row] == all(env._compute_successes())
        checked += 1
    assert checked > 0.99 * len(data)
    assert 0 < data.terminations.sum() < len(data)  # both solved and unsolved states were checked
    assert set(np.unique(data.rewards)) <= {-1.0, 0.0}
    np.testing.assert_array_equal(data.terminations, data.rewards == 0.0)


def test_relabel_agrees_with_env_step(task_env):
    """A step from a solved state: the env says reward 0, terminated, success; so does the relabeling."""
    import mujoco

    env = task_env.unwrapped
    for solved in (False, True):
        task_env.reset(seed=1)
        if solved:
            goal = env._data.mocap_pos[env._cube_target_mocap_ids[0]].copy()
            env._data.joint("object_joint_0").qpos[:] = np.concatenate([goal, [1.0, 0.0, 0.0, 0.0]])
            mujoco.mj_forward(env._model, env._data)
            env.post_step()  # the env's success flag for this state
        qpos = env._data.qpos.copy()
        _, reward, terminated, _, info = task_env.step(np.zeros(5, dtype=np.float32))
        rewards, terminations = relabel_ogbench(NAME, qpos[None], task_env=task_env)
        assert (reward, terminated, info["success"]) == ((0.0, True, True) if solved else (-1.0, False, False))
        assert (rewards[0], terminations[0]) == (reward, terminated)


def test_same_seed_same_data(ogbench, play_data):
    again = collect_ogbench_dataset(NAME, n_episodes=N_EPISODES, episode_length=LENGTH, seed=0)
    for field in ("observations", "actions", "rewards", "next_observations", "terminations", "truncations"):
        np.testing.assert_array_equal(getattr(again, field), getattr(play_data, field))
    other = collect_ogbench_dataset(NAME, n_episodes=1, episode_length=LENGTH, seed=1)
    assert not np.array_equal(other.actions, play_data.actions[:LENGTH])


def test_global_numpy_state_is_restored(ogbench):
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    collect_ogbench_dataset("cube-single-noisy-singletask-task2-v0", n_episodes=1, episode_length=20, seed=0)
    assert np.random.rand() == expected


def test_noisy_data_use_the_markov_oracle_with_random_actions(ogbench):
    data = collect_ogbench_dataset("cube-single-noisy-singletask-task2-v0", n_episodes=1, episode_length=60, seed=0)
    assert len(data) == 60 and np.all(np.abs(data.actions) <= 1.0)
    noiseless = collect_ogbench_dataset(
        "cube-single-noisy-singletask-task2-v0", n_episodes=1, episode_length=60, seed=0, noise=0.0, p_random_action=0.0
    )
    assert not np.array_equal(noiseless.actions, data.actions)


def test_success_rates(ogbench):
    assert ogbench_success_rate(lambda obs: np.zeros(5, dtype=np.float32), NAME, n_episodes=1, seed=0) == 0.0
    # The noiseless oracle, shown the task's goal, solves the task (the data's ceiling).
    assert ogbench_oracle_success_rate(NAME, n_episodes=1, oracle="markov", seed=0) == 1.0


def test_task_directed_data_end_where_the_task_is_solved(ogbench):
    data = collect_ogbench_task_dataset(NAME, n_episodes=2, noise=0.0, seed=0)
    ends = np.flatnonzero(data.terminations)
    assert len(ends) == 2 and ends[-1] == len(data) - 1  # both noiseless episodes solve the task, then stop
    assert np.flatnonzero(data.episode_starts).tolist() == [0, ends[0] + 1]
    assert not data.truncations.any()
    # The env's own reward: -1 until the step that starts at the goal, which terminates with 0.
    assert np.all(data.rewards[data.terminations] == 0.0) and np.all(data.rewards[~data.terminations] == -1.0)
    np.testing.assert_array_equal(data.next_observations[: ends[0]], data.observations[1 : ends[0] + 1])
    cube = data.observations[:, CUBE_POS] / XYZ_SCALER + XYZ_CENTER
    assert np.linalg.norm(cube[ends[0]] - cube[0]) > 0.04  # the oracle carried the cube to the goal
    noisy = collect_ogbench_task_dataset(NAME, n_episodes=2, noise=0.5, p_random_action=0.3, seed=0)
    assert not np.array_equal(noisy.actions[:10], data.actions[:10]) and np.all(np.abs(noisy.actions) <= 1.0)
    with pytest.raises(ValueError, match="p_random_action"):
        collect_ogbench_task_dataset(NAME, n_episodes=1, p_random_action=1.5)


def test_compare_runs_an_ogbench_env_in_spawned_workers(ogbench, tmp_path):
    """An OGBench id in a comparison: registered by the config check here and again in each spawned worker, which
    has not imported ogbench (the job builds, trains and evaluates on the sparse-reward task)."""
    from sb3_flow.compare import compare
    from sb3_flow.compare.jobs import Job, result_path

    config = {
        "env": "cube-single-singletask-task2-v0",
        "budget": 64,
        "seeds": [0, 1],
        "eval_starts": 2,
        "eval_every": 64,
        "methods": {"sac": {"algo": "sac", "kwargs": {"learning_starts": 32, "batch_size": 16}}},
    }
    compare(config, tmp_path, workers=2, reps=10, log=lambda line: None)
    for seed in (0, 1):
        record = json.loads(result_path(tmp_path, Job("sac", seed)).read_text())
        assert record["status"] == "ok", record.get("traceback")
        assert record["env_steps"] == 64
        # -1 per step until the cube is at the goal: an untrained agent fails both 200-step episodes
        assert record["final_returns"] == [-200.0, -200.0]
