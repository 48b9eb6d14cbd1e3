"""Demonstrations: collection, episode bookkeeping, .npz round trip, Dict observations, Minari, bad files."""

import numpy as np
import pytest
from stable_baselines3 import SAC

from sb3_flow.common.demonstrations import Demonstrations, collect_demonstrations, from_minari
from sb3_flow.common.experts import pendulum_swing_up
from tests.helpers import BimodalEnv, DictObsEnv


def test_collect_records_consistent_episodes(pendulum_demos):
    demos = pendulum_demos
    assert len(demos) == 20 * 200 and demos.n_episodes == 20
    assert demos.observations.shape == (4000, 3) and demos.actions.shape == (4000, 1)
    starts = np.flatnonzero(demos.episode_starts)
    np.testing.assert_array_equal(starts, np.arange(0, 4000, 200))
    # Pendulum truncates at 200 steps: every episode's last row is truncated, the next starts fresh.
    assert demos.truncations.sum() == 20 and demos.truncations[199] and not demos.terminations.any()
    # Within an episode the next observation is the following row's observation.
    np.testing.assert_array_equal(demos.next_observations[:199], demos.observations[1:200])
    returns = demos.episode_returns()
    assert returns.shape == (20,) and np.isclose(returns[0], demos.rewards[:200].sum())
    summary = demos.summary()
    assert summary["n_episodes"] == 20 and np.isclose(summary["mean_return"], returns.mean())
    assert np.all(np.abs(demos.actions) <= 2.0)


def test_action_noise_makes_data_suboptimal_and_seed_makes_it_reproducible():
    clean = collect_demonstrations("Pendulum-v1", pendulum_swing_up, 5, seed=1)
    noisy = collect_demonstrations("Pendulum-v1", pendulum_swing_up, 5, action_noise=1.0, seed=1)
    again = collect_demonstrations("Pendulum-v1", pendulum_swing_up, 5, action_noise=1.0, seed=1)
    np.testing.assert_array_equal(noisy.actions, again.actions)
    # Same initial states (seeded resets), worse returns with noise.
    np.testing.assert_array_equal(clean.observations[0], noisy.observations[0])
    assert noisy.summary()["mean_return"] < clean.summary()["mean_return"]
    with pytest.raises(ValueError, match="action_noise"):
        collect_demonstrations("Pendulum-v1", pendulum_swing_up, 1, action_noise=-0.1)


def test_collect_from_an_sb3_model():
    model = SAC("MlpPolicy", "Pendulum-v1", learning_starts=0, seed=0, device="cpu")
    demos = collect_demonstrations("Pendulum-v1", model, 2, seed=0)
    expected, _ = model.predict(demos.observations[:5], deterministic=True)
    np.testing.assert_allclose(demos.actions[:5], expected, atol=1e-6)


def test_save_load_round_trip_with_dict_observations(tmp_path):
    demos = collect_demonstrations(DictObsEnv(), lambda obs: obs["goal"], 3, seed=0)
    assert set(demos.observations) == {"position", "goal"} and demos.observations["goal"].shape == (30, 2)
    assert np.allclose(demos.rewards, 0.0)  # the expert outputs the goal exactly
    path = tmp_path / "dict_demos.npz"
    demos.save(path)
    loaded = Demonstrations.load(path)
    for key in ("position", "goal"):
        np.testing.assert_array_equal(loaded.observations[key], demos.observations[key])
        np.testing.assert_array_equal(loaded.next_observations[key], demos.next_observations[key])
    np.testing.assert_array_equal(loaded.actions, demos.actions)
    np.testing.assert_array_equal(loaded.episode_starts, demos.episode_starts)
    env = DictObsEnv()
    loaded.check_spaces(env.observation_space, env.action_space)


def test_missing_and_corrupt_files_are_clear_errors(tmp_path, pendulum_demos):
    with pytest.raises(FileNotFoundError, match="No demonstrations file"):
        Demonstrations.load(tmp_path / "missing.npz")
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(ValueError, match="not a readable demonstrations"):
        Demonstrations.load(corrupt)
    partial = tmp_path / "partial.npz"
    np.savez(partial, actions=pendulum_demos.actions)
    with pytest.raises(ValueError, match="lacks"):
        Demonstrations.load(partial)


def test_shape_checks_name_what_was_expected(pendulum_demos):
    env = DictObsEnv()
    with pytest.raises(ValueError, match=r"expects \(2,\)"):
        pendulum_demos.check_spaces(env.observation_space["goal"], env.action_space)
    with pytest.raises(ValueError, match="must be a dict"):
        pendulum_demos.check_spaces(env.observation_space, pendulum_demos_action_space())
    with pytest.raises(ValueError, match="same number of rows"):
        Demonstrations(np.zeros((3, 1)), np.zeros((2, 1)), np.zeros(3), np.zeros((3, 1)), np.zeros(3), np.zeros(3), [1, 0, 0])


def test_actions_outside_the_action_box_are_rejected_not_clipped(pendulum_demos):
    from sb3_flow import FlowBC

    demos = Demonstrations.concatenate([pendulum_demos])
    demos.actions[7] = 2.5  # Pendulum's torque box is [-2, 2]
    with pytest.raises(ValueError, match=r"1 demonstration actions lie outside .* row 7"):
        demos.check_spaces(pendulum_demos_action_space_obs(), pendulum_demos_action_space())
    with pytest.raises(ValueError, match="outside the action space's bounds"):
        FlowBC("MlpPolicy", "Pendulum-v1", demos)
    demos.actions[7] = 2.0  # on the bound is fine
    demos.check_spaces(pendulum_demos_action_space_obs(), pendulum_demos_action_space())


def pendulum_demos_action_space_obs():
    import gymnasium as gym

    return gym.make("Pendulum-v1").observation_space


def pendulum_demos_action_space():
    import gymnasium as gym

    return gym.make("Pendulum-v1").action_space


def test_concatenate_keeps_episodes():
    a = collect_demonstrations("Pendulum-v1", pendulum_swing_up, 1, seed=0)
    b = collect_demonstrations("Pendulum-v1", pendulum_swing_up, 2, seed=5)
    joined = Demonstrations.concatenate([a, b])
    assert joined.n_episodes == 3 and len(joined) == 600
    np.testing.assert_allclose(joined.episode_returns(), np.concatenate([a.episode_returns(), b.episode_returns()]))


def test_from_minari_reads_a_local_dataset(tmp_path, monkeypatch):
    minari = pytest.importorskip("minari")
    import gymnasium as gym
    from minari.data_collector import EpisodeBuffer

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    env = gym.make("Pendulum-v1")
    buffers = []
    for episode in range(3):
        obs, _ = env.reset(seed=episode)
        rows = {"observations": [obs], "actions": [], "rewards": [], "terminations": [], "truncations": []}
        done = False
        while not done:
            action = pendulum_swing_up(obs)
            obs, reward, terminated, truncated, _ = env.step(action)
            for key, value in zip(list(rows), (obs, action, reward, terminated, truncated), strict=True):
                rows[key].append(value)
            done = terminated or truncated
        buffers.append(EpisodeBuffer(id=episode, **{key: np.asarray(value) for key, value in rows.items()}))
    with pytest.warns(UserWarning):  # minari asks for author metadata
        dataset = minari.create_dataset_from_buffers("pendulum/scripted-v0", buffers, env=env, algorithm_name="scripted")
    demos = from_minari("pendulum/scripted-v0")
    assert demos.n_episodes == 3 and len(demos) == 600
    first = next(iter(dataset.iterate_episodes()))
    np.testing.assert_allclose(demos.actions[:200], first.actions)
    np.testing.assert_allclose(demos.observations[:200], first.observations[:200])
    np.testing.assert_allclose(demos.next_observations[:200], first.observations[1:])
    assert np.isclose(demos.episode_returns()[0], first.rewards.sum())
    assert demos.truncations[199] and demos.episode_starts[200]
    assert from_minari(dataset, n_episodes=1).n_episodes == 1


def test_returns_on_starts_replays_the_same_initial_states(pendulum_demos):
    import gymnasium as gym

    from sb3_flow.common.evaluation import returns_on_starts
    from sb3_flow.policies import FlowPolicy

    env = gym.make("Pendulum-v1")
    policy = FlowPolicy(env.observation_space, env.action_space, lambda _: 1e-3, net_arch=[8], n_flow_steps=2)
    expected = []
    for seed in (3, 4, 5):
        obs, _ = env.reset(seed=seed)
        done, total = False, 0.0
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy.predict(obs, deterministic=True)[0])
            total += float(reward)
            done = terminated or truncated
        expected.append(total)
    returns = returns_on_starts(policy, "Pendulum-v1", 3, first_seed=3)
    np.testing.assert_allclose(returns, expected, rtol=1e-4)
    # in groups of at most 2 environments (memory-heavy envs): the same starts, in order
    np.testing.assert_allclose(returns_on_starts(policy, "Pendulum-v1", 3, first_seed=3, max_envs=2), expected, rtol=1e-4)
    with pytest.raises(ValueError, match="max_envs must be a positive integer"):
        returns_on_starts(policy, "Pendulum-v1", 3, max_envs=0)
    # The demonstrations were collected from seeds 0..19 too: their starts are what the paired comparison replays.
    first_obs = [pendulum_demos.observations[i * 200] for i in range(3)]
    np.testing.assert_allclose(first_obs[0], gym.make("Pendulum-v1").reset(seed=0)[0])


def test_returns_on_starts_lists_returns_by_start_when_episodes_end_in_another_order():
    import gymnasium as gym

    from sb3_flow.common.evaluation import returns_on_starts

    class AlwaysLeft:
        def predict(self, observation, state=None, episode_start=None, deterministic=True):
            return np.zeros(len(observation), dtype=np.int64), state

    # CartPole pushed left falls after 11, 10, 9, 9, 8 steps from starts 0..4: the last start's episode ends first
    env = gym.make("CartPole-v1")
    expected = []
    for seed in range(5):
        env.reset(seed=seed)
        done, length = False, 0
        while not done:
            _, _, terminated, truncated, _ = env.step(0)
            length, done = length + 1, terminated or truncated
        expected.append(float(length))
    assert expected != sorted(expected)  # the order in which the episodes end is not the starts' order
    np.testing.assert_array_equal(returns_on_starts(AlwaysLeft(), "CartPole-v1", 5), expected)
    np.testing.assert_array_equal(returns_on_starts(AlwaysLeft(), "CartPole-v1", 5, max_envs=2), expected)


def test_an_expert_returning_nan_stops_collection_with_a_clear_error():
    calls = []

    def flaky_expert(obs):
        calls.append(obs)
        return np.array([np.nan if len(calls) == 7 else 0.5], np.float32)

    with pytest.raises(ValueError, match=r"non-finite action \[nan\] at step 6 \(episode 0\)"):
        collect_demonstrations(BimodalEnv(), flaky_expert, n_episodes=2, seed=0)


def test_collect_accepts_numpy_integers_and_rejects_bad_counts():
    demos = collect_demonstrations(BimodalEnv(episode_length=3), lambda obs: np.zeros(1), n_episodes=np.int64(2), seed=0)
    assert demos.n_episodes == 2
    with pytest.raises(ValueError, match="n_episodes must be a positive integer"):
        collect_demonstrations(BimodalEnv(), lambda obs: np.zeros(1), n_episodes=0)
