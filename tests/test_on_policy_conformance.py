"""What an SB3 user expects of every on-policy flow algorithm (FlowPPO, ReinFlow): one set of tests for both."""

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import SubprocVecEnv, VecNormalize

from sb3_flow import FlowPPO, ReinFlow
from tests.helpers import DictObsEnv

SMALL = {"net_arch": [32, 32], "value_net_arch": [32]}
ALGORITHMS = [FlowPPO, ReinFlow]


class Nop(BaseCallback):
    def _on_step(self) -> bool:
        return True


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_save_load_identical_actions_and_parameters(algo, tmp_path):
    kwargs = {"n_steps": 32, "batch_size": 16, "n_epochs": 1, "clip_range": 0.03}
    model = algo("MlpPolicy", "Pendulum-v1", seed=0, policy_kwargs=SMALL, **kwargs)
    model.learn(32)
    model.save(tmp_path / "model")
    loaded = algo.load(tmp_path / "model", env=make_vec_env("Pendulum-v1", n_envs=1))
    obs = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])
    state, loaded_state = model.policy.state_dict(), loaded.policy.state_dict()
    assert state.keys() == loaded_state.keys()
    for name in state:
        assert th.equal(state[name], loaded_state[name]), name
    assert type(loaded.policy) is type(model.policy) and loaded.clip_range(1.0) == 0.03
    loaded.learn(32, reset_num_timesteps=False)
    assert loaded.num_timesteps == 64


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_same_seed_same_run(algo):
    def run():
        model = algo("MlpPolicy", "Pendulum-v1", n_steps=32, batch_size=16, n_epochs=2, seed=7, policy_kwargs=SMALL)
        return model.learn(64)

    a, b = run(), run()
    for pa, pb in zip(a.policy.parameters(), b.policy.parameters(), strict=True):
        assert th.equal(pa, pb)


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_multiple_envs_vecnormalize_callbacks_tensorboard_progress_bar(algo, tmp_path):
    env = VecNormalize(make_vec_env("Pendulum-v1", n_envs=4, seed=0))
    model = algo(
        "MlpPolicy", env, n_steps=16, batch_size=32, n_epochs=1, seed=0, policy_kwargs=SMALL, tensorboard_log=str(tmp_path)
    )

    class Count(BaseCallback):
        calls = 0

        def _on_step(self) -> bool:
            Count.calls += 1
            return True

    model.learn(128, callback=Count(), progress_bar=True)
    assert model.num_timesteps == 128 and Count.calls == 32  # once per vectorized step
    assert env.obs_rms.count > 100  # VecNormalize saw the rollouts
    assert list(tmp_path.glob(f"{algo.__name__}_1/events.out.tfevents.*"))
    for key in ("train/ratio", "train/clip_fraction", "train/approx_kl", "train/explained_variance", "train/value_loss"):
        assert key in model.logger.name_to_value, key


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_subproc_vec_env(algo):
    env = make_vec_env("Pendulum-v1", n_envs=2, vec_env_cls=SubprocVecEnv, seed=0)
    try:
        model = algo("MlpPolicy", env, n_steps=16, batch_size=16, n_epochs=1, seed=0, policy_kwargs=SMALL)
        model.learn(32)
        assert model.num_timesteps == 32
    finally:
        env.close()


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_dict_observations(algo):
    model = algo("MultiInputPolicy", DictObsEnv(), n_steps=32, batch_size=16, n_epochs=1, seed=0, policy_kwargs=SMALL)
    model.learn(32)
    obs, _ = DictObsEnv().reset(seed=0)
    assert model.predict(obs)[0].shape == (2,)


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_predict_single_and_batched(algo):
    model = algo("MlpPolicy", "Pendulum-v1", seed=0, policy_kwargs=SMALL)
    single, _ = model.predict(np.zeros(3, dtype=np.float32), deterministic=True)
    batch, _ = model.predict(np.zeros((4, 3), dtype=np.float32), deterministic=True)
    assert single.shape == (1,) and batch.shape == (4, 1)
    np.testing.assert_allclose(batch, np.repeat(single[None], 4, axis=0), atol=1e-6)
    np.testing.assert_array_equal(single, model.predict(np.zeros(3, dtype=np.float32), deterministic=True)[0])
    stochastic = np.stack([model.predict(np.zeros(3, dtype=np.float32))[0] for _ in range(10)])
    assert stochastic.std() > 0


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_non_finite_loss_stops_training_before_the_weights_change(algo):
    class NaNReward(gym.Wrapper):
        def step(self, action):
            obs, _, terminated, truncated, info = self.env.step(action)
            return obs, float("nan"), terminated, truncated, info

    model = algo("MlpPolicy", NaNReward(gym.make("Pendulum-v1")), n_steps=32, batch_size=16, seed=0, policy_kwargs=SMALL)
    before = [p.detach().clone() for p in model.policy.parameters()]
    with pytest.raises(FloatingPointError, match=f"{algo.__name__}: the loss"):
        model.learn(32)
    assert all(th.equal(a, b) for a, b in zip(before, model.policy.parameters(), strict=True))


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_target_kl_stops_the_update_early(algo):
    kwargs = {"n_steps": 64, "batch_size": 16, "n_epochs": 10, "learning_rate": 1e-2, "seed": 0, "policy_kwargs": SMALL}
    free = algo("MlpPolicy", "Pendulum-v1", **kwargs).learn(64)
    stopped = algo("MlpPolicy", "Pendulum-v1", target_kl=1e-9, **kwargs).learn(64)
    # Without a limit every epoch runs; with a tiny one the first minibatch that moves the policy ends the update.
    assert free._n_updates == 10 and stopped._n_updates == 1


class MatrixActionEnv(gym.Env):
    """Box(2, 2) actions (SB3's conformance tests use such a space); reward: minus the distance to the identity."""

    observation_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = spaces.Box(-2.0, 2.0, (2, 2), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return np.zeros(3, np.float32), {}

    def step(self, action):
        assert action.shape == (2, 2) and self.action_space.contains(action.astype(np.float32))
        self._t += 1
        return np.zeros(3, np.float32), -float(np.abs(action - np.eye(2)).sum()), False, self._t >= 8, {}


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_matrix_shaped_box_action_space_learns_and_predicts(algo):
    model = algo("MlpPolicy", MatrixActionEnv(), n_steps=16, batch_size=8, n_epochs=1, seed=0, policy_kwargs=SMALL)
    model.learn(32)
    assert model.rollout_buffer.actions.shape == (16, 4)  # flat, as SB3 stores Box actions (flattened by the update)
    action, _ = model.predict(np.zeros(3, np.float32))
    assert action.shape == (2, 2)


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_load_with_the_constructor_arguments(algo, tmp_path):
    # The algorithm's own policy options do not go into policy_kwargs, so SB3's load(..., policy_kwargs=...) check
    # passes with what the user gave the constructor.
    options = {"n_flow_steps": 3, "policy_kwargs": {"net_arch": [16], "value_net_arch": [16]}}
    if algo is ReinFlow:
        options.update(noise="fixed", max_std=0.3, n_finetune_steps=2)
    model = algo("MlpPolicy", "Pendulum-v1", n_steps=32, batch_size=16, n_epochs=1, seed=0, **options)
    assert model.policy_kwargs == options["policy_kwargs"] and model.policy.n_flow_steps == 3
    model.learn(32)
    model.save(tmp_path / "model")
    loaded = algo.load(tmp_path / "model", env=make_vec_env("Pendulum-v1", n_envs=1), **options)
    assert loaded.policy.n_flow_steps == 3 and loaded.policy_kwargs == options["policy_kwargs"]
    obs = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])
    loaded.learn(32, reset_num_timesteps=False)
    with pytest.raises(ValueError, match="policy kwargs"):
        algo.load(tmp_path / "model", policy_kwargs={"net_arch": [8]})


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_linear_policy_with_empty_net_arch_trains(algo):
    policy_kwargs = {"net_arch": [], "value_net_arch": []}
    model = algo("MlpPolicy", "Pendulum-v1", n_steps=16, batch_size=8, n_epochs=1, seed=0, policy_kwargs=policy_kwargs)
    before = [p.detach().clone() for p in model.policy.velocity_net.parameters()]
    model.learn(32)
    assert not all(th.equal(a, b) for a, b in zip(before, model.policy.velocity_net.parameters(), strict=True))


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_rollout_and_minibatch_sizes_are_checked_as_sb3_ppo_does(algo):
    # Without advantage normalization a minibatch (and a rollout) of one is fine, as in SB3's PPO.
    model = algo("MlpPolicy", "Pendulum-v1", n_steps=1, batch_size=1, n_epochs=1, normalize_advantage=False, seed=0,
                 policy_kwargs=SMALL)  # fmt: skip
    model.learn(2)
    assert model.num_timesteps == 2 and model._n_updates == 2
    with pytest.raises(ValueError, match="batch_size must be > 1"):
        algo("MlpPolicy", "Pendulum-v1", batch_size=1, policy_kwargs=SMALL)
    with pytest.raises(ValueError, match="n_steps \\* n_envs must be > 1"):
        algo("MlpPolicy", "Pendulum-v1", n_steps=1, batch_size=2, policy_kwargs=SMALL)
    with pytest.warns(UserWarning, match="mini-batch size of 64"):  # larger than the rollout
        algo("MlpPolicy", "Pendulum-v1", n_steps=32, batch_size=64, policy_kwargs=SMALL)
    with pytest.warns(UserWarning, match="truncated mini-batch of size 2"):
        algo("MlpPolicy", "Pendulum-v1", n_steps=32, batch_size=10, policy_kwargs=SMALL)


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_clip_range_must_be_positive(algo):
    for bad in (0.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="clip_range"):
            algo("MlpPolicy", "Pendulum-v1", clip_range=bad, policy_kwargs=SMALL)
    with pytest.raises(ValueError, match="clip_range_vf"):
        algo("MlpPolicy", "Pendulum-v1", clip_range_vf=0.0, policy_kwargs=SMALL)
    model = algo("MlpPolicy", "Pendulum-v1", clip_range=lambda progress: progress - 0.5, n_steps=16, batch_size=16,
                 n_epochs=1, seed=0, policy_kwargs=SMALL)  # fmt: skip
    with pytest.raises(ValueError, match=r"clip_range .*progress_remaining=0\.5000"):
        model.learn(32)


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_non_finite_learning_rate_or_gradient_stops_training_before_the_weights_change(algo):
    class Snapshot(BaseCallback):
        """The weights as each update starts."""

        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            self.weights = [p.detach().clone() for p in self.model.policy.parameters()]

    def learning_rate(progress: float) -> float:
        return 1e-3 if progress > 0.5 else float("nan")

    for options in ({"learning_rate": learning_rate}, {"critic_learning_rate": learning_rate}):
        model = algo("MlpPolicy", "Pendulum-v1", n_steps=16, batch_size=8, n_epochs=2, seed=0, policy_kwargs=SMALL, **options)
        snapshot = Snapshot()
        with pytest.raises(FloatingPointError, match="learning-rate schedule returned nan"):
            model.learn(64, callback=snapshot)  # updates at progress 0.75 (fine), then 0.5
        assert model._n_updates == 2  # the first update ran
        for before, after in zip(snapshot.weights, model.policy.parameters(), strict=True):
            assert th.isfinite(after).all() and th.equal(before, after)
    # A finite loss with a non-finite gradient: no step either.
    model = algo("MlpPolicy", "Pendulum-v1", n_steps=16, batch_size=8, seed=0, policy_kwargs=SMALL)
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.policy.value_net[0].weight.register_hook(lambda gradient: gradient * float("nan"))
    with pytest.raises(FloatingPointError, match="gradient norm is nan"):
        model.learn(16)
    assert all(th.equal(a, b) for a, b in zip(before, model.policy.parameters(), strict=True))


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_map_rollout_covers_every_row_in_order(algo):
    with pytest.warns(UserWarning, match="truncated mini-batch"):
        model = algo("MlpPolicy", "Pendulum-v1", n_steps=10, batch_size=4, seed=0, policy_kwargs=SMALL)
    model._setup_learn(10, None)
    callback = Nop()
    callback.init_callback(model)
    model.collect_rollouts(model.env, callback, model.rollout_buffer, 10)
    rows = model.map_rollout(lambda samples: samples.returns)
    # Three chunks (4 + 4 + 2 rows), joined in the buffer's row order; no autograd graph.
    assert th.equal(rows, th.as_tensor(model.rollout_buffer.returns.flatten())) and not rows.requires_grad


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_class_docstring_cites_the_paper_and_the_reference_code(algo):
    assert "Paper" in algo.__doc__ and "https://arxiv.org/abs/" in algo.__doc__
    assert "Reference implementation" in algo.__doc__ and "https://github.com/" in algo.__doc__
