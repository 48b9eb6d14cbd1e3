"""Action chunking (Q-chunking): ActionChunkWrapper, its VecEnv form, chunked demonstrations, chunks through FlowBC,
DSRL's noise wrapper, FlowPPO and SAC."""

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3 import SAC
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.env_util import make_vec_env

from sb3_flow import (
    FQL,
    IFQL,
    ActionChunkWrapper,
    ChunkedDemonstrations,
    Demonstrations,
    FlowBC,
    FlowPPO,
    ReinFlow,
    make_chunked_vec_env,
)
from sb3_flow.common.demonstrations import collect_demonstrations
from sb3_flow.common.experts import pendulum_swing_up
from sb3_flow.wrappers import NoiseActionWrapper
from tests.helpers import DictObsEnv


def tiny() -> dict:
    """A fresh dict each time: SB3's off-policy algorithms write "use_sde" into the policy_kwargs they are given."""
    return {"net_arch": [16]}


class CountingEnv(gym.Env):
    """Observation: the step count t. Reward of a step: t + action[0], so a chunk's reward shows which actions ran, in
    which order. Terminates at step ``terminate_at``, truncates at ``episode_length``."""

    def __init__(self, episode_length: int = 100, terminate_at: int | None = None):
        self.observation_space = spaces.Box(0.0, 1000.0, (1,), np.float32)
        self.action_space = spaces.Box(np.array([-1.0, -2.0], np.float32), np.array([1.0, 2.0], np.float32))
        self.episode_length = episode_length
        self.terminate_at = terminate_at
        self.executed: list[np.ndarray] = []
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self._t += 1
        self.executed.append(np.array(action, copy=True))
        obs = np.array([self._t], np.float32)
        terminated = self._t == self.terminate_at
        truncated = not terminated and self._t >= self.episode_length
        return obs, float(self._t + action[0]), terminated, truncated, {"t": self._t}


def chunk(*firsts: float) -> np.ndarray:
    """A flat chunk of CountingEnv actions whose first components are ``firsts``."""
    return np.array([[first, 0.0] for first in firsts], np.float32).reshape(-1)


# ---------------------------------------------------------------- the wrapper


def test_chunk_reward_is_the_discounted_sum_of_the_executed_steps():
    inner = CountingEnv()
    env = ActionChunkWrapper(inner, horizon=3, gamma=0.9)
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(chunk(0.1, 0.2, 0.3))
    # rewards 1.1, 2.2, 3.3 of steps 1, 2, 3
    assert reward == pytest.approx(1.1 + 0.9 * 2.2 + 0.81 * 3.3)
    assert isinstance(reward, float) and not terminated and not truncated
    np.testing.assert_array_equal(obs, [3.0])
    assert info["chunk_steps"] == 3 and info["chunk_discount"] == pytest.approx(0.9**3)
    assert info["t"] == 3  # the last inner step's info comes through
    np.testing.assert_allclose([action[0] for action in inner.executed], [0.1, 0.2, 0.3], rtol=1e-6)
    assert env.env_steps == 3


def test_chunk_stops_when_the_episode_terminates_inside_it():
    env = ActionChunkWrapper(CountingEnv(terminate_at=4), horizon=3, gamma=0.9)
    env.reset(seed=0)
    env.step(chunk(0.0, 0.0, 0.0))
    obs, reward, terminated, truncated, info = env.step(chunk(0.5, 0.7, 0.9))
    assert terminated and not truncated
    assert info["chunk_steps"] == 1 and info["chunk_discount"] == pytest.approx(0.9)
    assert reward == pytest.approx(4.5)
    np.testing.assert_array_equal(obs, [4.0])
    assert env.env_steps == 4


def test_chunk_stops_when_the_episode_is_truncated_inside_it():
    env = ActionChunkWrapper(CountingEnv(episode_length=5), horizon=3, gamma=0.5)
    env.reset(seed=0)
    env.step(chunk(0.0, 0.0, 0.0))
    obs, reward, terminated, truncated, info = env.step(chunk(0.5, 0.7, 0.9))
    assert truncated and not terminated
    assert info["chunk_steps"] == 2 and info["chunk_discount"] == pytest.approx(0.25)
    assert reward == pytest.approx(4.5 + 0.5 * 5.7)
    np.testing.assert_array_equal(obs, [5.0])
    # After a reset the next chunk runs in full in the new episode.
    env.reset()
    assert env.step(chunk(0.0, 0.0, 0.0))[4]["chunk_steps"] == 3 and env.env_steps == 8


def test_receding_horizon_executes_only_the_first_n_executed_actions():
    inner = CountingEnv()
    env = ActionChunkWrapper(inner, horizon=4, gamma=0.9, n_executed=2)
    assert env.action_space.shape == (8,)  # the policy still emits the whole chunk
    env.reset(seed=0)
    obs, reward, _, _, info = env.step(chunk(0.1, 0.2, 0.3, 0.4))
    assert info["chunk_steps"] == 2 and info["chunk_discount"] == pytest.approx(0.81)
    assert reward == pytest.approx(1.1 + 0.9 * 2.2)
    np.testing.assert_array_equal(obs, [2.0])
    np.testing.assert_allclose([action[0] for action in inner.executed], [0.1, 0.2], rtol=1e-6)


def test_action_space_is_the_flat_tiled_box_and_chunk_shape_its_view():
    env = ActionChunkWrapper(CountingEnv(), horizon=3)
    assert env.action_space.shape == (6,) and env.chunk_shape == (3, 2)
    np.testing.assert_array_equal(env.action_space.low, [-1, -2, -1, -2, -1, -2])
    np.testing.assert_array_equal(env.action_space.high, [1, 2, 1, 2, 1, 2])
    assert env.action_space.dtype == np.float32
    # A chunk shaped (H, action_dim) is taken too, and runs in the same order as the flat one.
    inner = CountingEnv()
    shaped = ActionChunkWrapper(inner, horizon=3)
    shaped.reset()
    shaped.step(chunk(0.1, 0.2, 0.3).reshape(3, 2))
    np.testing.assert_allclose([action[0] for action in inner.executed], [0.1, 0.2, 0.3], rtol=1e-6)
    matrix = gym.make("Pendulum-v1")
    matrix.action_space = spaces.Box(-1.0, 1.0, (2, 2), np.float32)
    assert ActionChunkWrapper(matrix, horizon=4).chunk_shape == (4, 2, 2)
    assert ActionChunkWrapper(matrix, horizon=4).action_space.shape == (16,)


def test_bad_options_are_clear_errors():
    for horizon in (0, -1, 2.5, True, "5"):
        with pytest.raises(ValueError, match="horizon must be a positive integer"):
            ActionChunkWrapper(CountingEnv(), horizon)
    for n_executed in (0, 4, 1.5):
        with pytest.raises(ValueError, match=r"n_executed must be an integer in \[1, horizon=3\]"):
            ActionChunkWrapper(CountingEnv(), 3, n_executed=n_executed)
    for gamma in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="gamma"):
            ActionChunkWrapper(CountingEnv(), 3, gamma=gamma)
    with pytest.raises(TypeError, match="Box action space"):
        ActionChunkWrapper(gym.make("CartPole-v1"), 3)
    env = ActionChunkWrapper(CountingEnv(), 3)
    env.reset()
    with pytest.raises(ValueError, match=r"chunk of 3 actions of shape \(2,\)"):
        env.step(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="horizon"):
        make_chunked_vec_env("Pendulum-v1", 0)
    with pytest.raises(ValueError, match="n_executed"):
        make_chunked_vec_env("Pendulum-v1", 2, n_executed=3)


@pytest.mark.parametrize("make_env", [lambda: gym.make("Pendulum-v1"), lambda: CountingEnv(terminate_at=7)])
def test_passes_gymnasium_and_sb3_check_env(make_env):
    gym_check_env(ActionChunkWrapper(make_env(), 5, n_executed=3), skip_render_check=True)
    sb3_check_env(ActionChunkWrapper(make_env(), 5), warn=False)


class ChunkStepCounter(BaseCallback):
    """Sums info["chunk_steps"] over every step SB3 takes."""

    def __init__(self):
        super().__init__()
        self.env_steps = 0

    def _on_step(self) -> bool:
        self.env_steps += sum(info["chunk_steps"] for info in self.locals["infos"])
        return True


def test_learn_counts_chunk_decisions_and_runs_n_executed_env_steps_each():
    # Pendulum's episodes (200 steps) are longer than the run: every decision executes n_executed steps.
    env = ActionChunkWrapper(gym.make("Pendulum-v1"), horizon=5, n_executed=3)
    counter = ChunkStepCounter()
    model = SAC("MlpPolicy", env, learning_starts=10, batch_size=8, policy_kwargs=tiny(), seed=0, device="cpu")
    model.learn(30, callback=counter)
    assert model.num_timesteps == 30
    assert env.env_steps == counter.env_steps == 30 * 3


def test_learn_counts_env_steps_exactly_when_episodes_end_inside_chunks():
    # Episodes of 7 steps in chunks of 3: decisions run 3, 3, 1 steps, and the callback counts what really ran.
    env = ActionChunkWrapper(CountingEnv(episode_length=7), horizon=3)
    counter = ChunkStepCounter()
    model = SAC("MlpPolicy", env, learning_starts=10, batch_size=8, policy_kwargs=tiny(), seed=0, device="cpu")
    model.learn(20, callback=counter)
    # 20 decisions = 6 whole episodes (3 decisions, 7 steps each) and 2 decisions (6 steps) of the seventh.
    assert env.env_steps == counter.env_steps == 6 * 7 + 6
    assert env.env_steps < 20 * 3


def test_vec_env_form_chunks_inside_each_env_over_its_monitor():
    venv = make_chunked_vec_env("Pendulum-v1", horizon=5, n_envs=2, seed=0)
    venv.reset()
    for decision in range(40):
        _, _, dones, infos = venv.step(np.zeros((2, 5), np.float32))
        assert all(info["chunk_steps"] == 5 for info in infos)
        assert dones.all() == (decision == 39)
    # The Monitor sits inside the chunk wrapper: the episode is reported in env steps, undiscounted.
    assert [info["episode"]["l"] for info in infos] == [200, 200]
    assert venv.get_attr("env_steps") == [200, 200]
    assert venv.get_attr("chunk_shape") == [(5, 1), (5, 1)]


def test_vec_env_form_stops_each_chunk_at_its_own_episode_end():
    venv = make_chunked_vec_env(CountingEnv, horizon=3, n_envs=2, env_kwargs={"episode_length": 7})
    venv.reset()
    steps = [venv.step(np.zeros((2, 6), np.float32)) for _ in range(3)]
    assert [infos[0]["chunk_steps"] for _, _, _, infos in steps] == [3, 3, 1]
    _, _, dones, infos = steps[-1]
    assert dones.all()
    np.testing.assert_array_equal(infos[0]["terminal_observation"], [7.0])


# ---------------------------------------------------------------- chunked demonstrations


def two_episodes() -> Demonstrations:
    """Episode A: rows 0-2, terminated at row 2. Episode B: rows 3-4, truncated at row 4."""
    rows = np.arange(5, dtype=np.float32)
    return Demonstrations(
        observations=(10 * rows)[:, None],
        actions=np.stack([rows / 10, -rows / 10], axis=1),
        rewards=rows + 1,
        next_observations=(10 * rows + 5)[:, None],
        terminations=[False, False, True, False, False],
        truncations=[False, False, False, False, True],
        episode_starts=[True, False, False, True, False],
    )


def test_chunked_demonstrations_match_a_hand_built_example():
    demos = two_episodes()
    result = demos.chunked(horizon=2, gamma=0.5)
    assert isinstance(result, ChunkedDemonstrations) and result.horizon == 2 and result.gamma == 0.5
    chunked = result.demonstrations
    assert len(chunked) == len(result) == 5
    np.testing.assert_array_equal(chunked.observations, demos.observations)
    a = demos.actions
    expected_actions = [
        [*a[0], *a[1]],  # A, full chunk
        [*a[1], *a[2]],  # A, full chunk that ends with the termination
        [*a[2], *a[2]],  # A, one step left: padded with the last action
        [*a[3], *a[4]],  # B, full chunk that ends with the truncation
        [*a[4], *a[4]],  # B, one step left
    ]
    np.testing.assert_array_equal(chunked.actions, np.array(expected_actions, np.float32))
    np.testing.assert_allclose(chunked.rewards, [1 + 0.5 * 2, 2 + 0.5 * 3, 3, 4 + 0.5 * 5, 5])
    np.testing.assert_array_equal(chunked.next_observations, [[15], [25], [25], [45], [45]])
    np.testing.assert_array_equal(chunked.terminations, [False, True, True, False, False])
    np.testing.assert_array_equal(chunked.truncations, [False, False, False, True, True])
    np.testing.assert_array_equal(chunked.episode_starts, [True, False, False, True, False])
    np.testing.assert_array_equal(result.chunk_steps, [2, 2, 1, 2, 1])
    np.testing.assert_array_equal(result.valid, [[True, True], [True, True], [True, False], [True, True], [True, False]])
    np.testing.assert_allclose(result.discounts, [0.25, 0.25, 0.5, 0.25, 0.5])
    np.testing.assert_array_equal(result.complete, [True, True, False, True, False])
    # A new object: the source is untouched and shares no memory with it.
    assert not np.shares_memory(chunked.observations, demos.observations)
    np.testing.assert_array_equal(demos.actions.shape, (5, 2))


def test_chunked_demonstrations_of_horizon_one_are_the_demonstrations():
    demos = two_episodes()
    result = demos.chunked(1, gamma=0.9)
    for name in ("observations", "actions", "rewards", "next_observations", "terminations", "truncations"):
        np.testing.assert_array_equal(getattr(result.demonstrations, name), getattr(demos, name))
    np.testing.assert_array_equal(result.chunk_steps, 1)


def test_an_unfinished_last_episode_ends_its_chunks_at_the_last_row():
    demos = two_episodes()
    unfinished = Demonstrations(**{name: value[:4] for name, value in vars(demos).items()})  # B cut after one row
    result = unfinished.chunked(3, gamma=0.5)
    np.testing.assert_array_equal(result.chunk_steps, [3, 2, 1, 1])
    assert not result.demonstrations.terminations[3] and not result.demonstrations.truncations[3]
    np.testing.assert_array_equal(result.demonstrations.next_observations[3], [35])


def test_chunked_demonstrations_are_what_the_wrapper_returns():
    demos = collect_demonstrations("Pendulum-v1", pendulum_swing_up, 1, action_noise=0.3, seed=3)
    result = demos.chunked(5, gamma=0.95)
    env = ActionChunkWrapper(gym.make("Pendulum-v1"), 5, gamma=0.95)
    obs, _ = env.reset(seed=3)
    for row in range(0, 200, 5):
        np.testing.assert_allclose(obs, result.demonstrations.observations[row], rtol=1e-6)
        obs, reward, terminated, truncated, info = env.step(result.demonstrations.actions[row])
        assert reward == pytest.approx(result.demonstrations.rewards[row], rel=1e-5)
        np.testing.assert_allclose(obs, result.demonstrations.next_observations[row], rtol=1e-6)
        assert truncated == result.demonstrations.truncations[row] == (row == 195)
        assert not terminated and not result.demonstrations.terminations[row]
        assert info["chunk_steps"] == result.chunk_steps[row] == 5


def test_chunked_dict_observations():
    demos = collect_demonstrations(DictObsEnv(), lambda obs: obs["goal"], 2, seed=0)
    result = demos.chunked(3)
    assert result.demonstrations.actions.shape == (20, 6)
    np.testing.assert_array_equal(result.demonstrations.next_observations["goal"][7], demos.next_observations["goal"][9])
    np.testing.assert_array_equal(result.chunk_steps[7:12], [3, 2, 1, 3, 3])
    env = ActionChunkWrapper(DictObsEnv(), 3)
    result.demonstrations.check_spaces(env.observation_space, env.action_space)


def test_chunked_rejects_bad_options():
    with pytest.raises(ValueError, match="horizon"):
        two_episodes().chunked(0)
    with pytest.raises(ValueError, match="gamma"):
        two_episodes().chunked(2, gamma=1.5)


# ---------------------------------------------------------------- chunks through the methods


@pytest.fixture(scope="module")
def chunked_pendulum_demos(pendulum_demos):
    return pendulum_demos.chunked(5, gamma=0.99)


@pytest.fixture(scope="module")
def chunked_flow_bc(chunked_pendulum_demos):
    env = ActionChunkWrapper(gym.make("Pendulum-v1"), 5)
    model = FlowBC(
        "MlpPolicy", env, chunked_pendulum_demos.demonstrations, batch_size=64, n_flow_steps=4, policy_kwargs=tiny()
    )
    model.learn(30)
    return model


def test_flow_bc_trains_on_chunks_and_save_load_gives_identical_actions(chunked_flow_bc, chunked_pendulum_demos, tmp_path):
    obs = chunked_pendulum_demos.demonstrations.observations[:8]
    actions, _ = chunked_flow_bc.predict(obs, deterministic=True)
    assert actions.shape == (8, 5)
    chunked_flow_bc.save(tmp_path / "chunked_bc.zip")
    loaded = FlowBC.load(tmp_path / "chunked_bc.zip", env=ActionChunkWrapper(gym.make("Pendulum-v1"), 5))
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], actions)


def test_flow_bc_on_a_chunked_env_names_the_fix_for_unchunked_demonstrations(pendulum_demos):
    env = ActionChunkWrapper(gym.make("Pendulum-v1"), 5)
    with pytest.raises(ValueError, match=r"shape \(1,\) per step.*expects \(5,\).*chunked\(5, gamma\).demonstrations"):
        FlowBC("MlpPolicy", env, pendulum_demos, policy_kwargs=tiny())


def test_a_chunked_base_policy_on_an_unchunked_env_is_a_clear_error(chunked_flow_bc):
    with pytest.raises(ValueError, match=r"\(5,\).*does not match.*\(1,\).*ActionChunkWrapper\(env, horizon=5\)"):
        NoiseActionWrapper(gym.make("Pendulum-v1"), base_policy=chunked_flow_bc)
    one_step = FlowBC("MlpPolicy", "Pendulum-v1", policy_kwargs=tiny())
    with pytest.raises(ValueError, match=r"\(1,\).*does not match.*\(5,\).*takes chunks of 5 actions.*trained on the chunked"):
        NoiseActionWrapper(ActionChunkWrapper(gym.make("Pendulum-v1"), 5), base_policy=one_step)


def test_dsrl_noise_space_over_a_chunked_base_policy_is_h_times_action_dim(chunked_flow_bc):
    env = NoiseActionWrapper(ActionChunkWrapper(gym.make("Pendulum-v1"), 5), base_policy=chunked_flow_bc)
    assert env.action_space.shape == (5,)
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.zeros(5, np.float32))
    assert info["env_action"].shape == (5,) and info["chunk_steps"] == 5
    sb3_check_env(env, warn=False)
    # And SAC learns in the chunked noise space.
    model = SAC("MlpPolicy", env, learning_starts=8, batch_size=8, policy_kwargs=tiny(), seed=0, device="cpu")
    model.learn(16)


@pytest.mark.parametrize("algo", [FlowPPO, ReinFlow])
def test_on_policy_flow_algorithms_train_on_a_chunked_env_and_save_load(algo, tmp_path):
    env = ActionChunkWrapper(gym.make("Pendulum-v1"), 5)
    model = algo(
        "MlpPolicy", env, n_steps=32, batch_size=32, n_epochs=1, seed=0,
        policy_kwargs={"net_arch": [16], "value_net_arch": [16]},
    )  # fmt: skip
    model.learn(32)
    assert env.env_steps == 32 * 5
    obs = np.random.default_rng(0).uniform(-1, 1, (4, 3)).astype(np.float32)
    actions, _ = model.predict(obs, deterministic=True)
    assert actions.shape == (4, 5)
    model.save(tmp_path / "chunked.zip")
    loaded = algo.load(tmp_path / "chunked.zip", env=ActionChunkWrapper(gym.make("Pendulum-v1"), 5))
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], actions)


# ----------------------------------------------------------------------------- Q-chunking on the off-policy core (QC)

QC_NETS = {"net_arch": [16], "critic_net_arch": [16]}


def test_qc_fql_chunks_the_dataset_and_bootstraps_with_gamma_to_the_horizon(pendulum_demos):
    model = FQL("MlpPolicy", "Pendulum-v1", dataset=pendulum_demos, action_horizon=3, gamma=0.9, batch_size=16,
                policy_kwargs=QC_NETS, seed=0)  # fmt: skip
    assert model.action_space.shape == (3,)
    chunked = pendulum_demos.chunked(3, 0.9)
    # Chunks cut short by a truncation are left out (QC's valid mask); 20 truncated 200-step episodes lose 2 each.
    assert model.replay_buffer.n_offline == len(pendulum_demos) - 2 * 20
    np.testing.assert_allclose(model.replay_buffer.offline.rewards[0, 0], chunked.demonstrations.rewards[0], rtol=1e-6)
    np.testing.assert_allclose(
        model.replay_buffer.offline.actions[0], model.policy.scale_action(pendulum_demos.actions[:3].reshape(-1)), rtol=1e-6
    )
    data = model.replay_buffer.sample(8)
    data = data._replace(dones=th.tensor([[1.0], [0.0]] * 4))
    next_values = th.arange(8, dtype=th.float32)
    expected = data.rewards.flatten() + 0.9**3 * (1.0 - data.dones.flatten()) * next_values
    th.testing.assert_close(model.bootstrapped_targets(data, next_values), expected)


def test_qc_fql_learns_over_chunks_and_reloads_onto_a_plain_env_id(pendulum_demos, tmp_path):
    model = FQL("MlpPolicy", "Pendulum-v1", dataset=pendulum_demos, action_horizon=4, batch_size=16,
                policy_kwargs=QC_NETS, seed=0)  # fmt: skip
    model.learn_offline(5)
    model.learn(10)  # 10 decisions: chunks of 4 environment steps
    assert model.num_timesteps == 10 and model.env.get_attr("env_steps") == [40]
    model.save(tmp_path / "qc")
    loaded = FQL.load(tmp_path / "qc", env="Pendulum-v1")  # wrapped again, as it was trained
    assert loaded.env.get_attr("horizon") == [4]
    obs = np.zeros((2, 3), np.float32)
    np.testing.assert_allclose(loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])
    best_of_n = IFQL("MlpPolicy", "Pendulum-v1", dataset=pendulum_demos, action_horizon=4, n_samples=3, batch_size=16,
                     policy_kwargs=QC_NETS, seed=0)  # fmt: skip
    assert best_of_n.learn_offline(3).predict(obs)[0].shape == (2, 4)  # best-of-N over chunks


def test_qc_bad_input_gets_clear_errors(pendulum_demos):
    with pytest.raises(ValueError, match="action_horizon"):
        FQL("MlpPolicy", "Pendulum-v1", action_horizon=0)
    with pytest.raises(ValueError, match="make_chunked_vec_env"):
        FQL("MlpPolicy", make_vec_env("Pendulum-v1"), action_horizon=3)
    with pytest.raises(ValueError, match="must agree"):
        FQL("MlpPolicy", ActionChunkWrapper(gym.make("Pendulum-v1"), 3, gamma=0.9), action_horizon=3, gamma=0.99)
    chunked_vec = make_chunked_vec_env("Pendulum-v1", 3, gamma=0.99)
    assert FQL("MlpPolicy", chunked_vec, action_horizon=3, policy_kwargs=QC_NETS).action_space.shape == (3,)
