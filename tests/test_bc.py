"""FlowBC and GaussianBC: multimodality, Pendulum imitation, SB3 conformance, save/load, numerics, bad input."""

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure

from sb3_flow import FlowBC, GaussianBC
from sb3_flow.common.demonstrations import Demonstrations, collect_demonstrations
from sb3_flow.common.evaluation import returns_on_starts
from tests.helpers import BimodalEnv, ChannelLastImageEnv, DictObsEnv, bimodal_demonstrations


def test_flow_bc_keeps_both_modes_where_gaussian_bc_averages_them():
    demos = bimodal_demonstrations(4000)
    flow = FlowBC("MlpPolicy", BimodalEnv(), demos, seed=0, policy_kwargs={"net_arch": [64, 64]}, learning_rate=1e-3)
    flow.learn(2000)
    gaussian = GaussianBC("MlpPolicy", BimodalEnv(), demos, seed=0, policy_kwargs={"net_arch": [64, 64]}, learning_rate=1e-3)
    gaussian.learn(1000)

    states = np.random.default_rng(1).uniform(-1, 1, (5, 2)).astype(np.float32)
    obs = np.repeat(states, 400, axis=0)
    samples, _ = flow.predict(obs, deterministic=False)
    near_plus = np.mean(np.abs(samples - 0.8) < 0.25)
    near_minus = np.mean(np.abs(samples + 0.8) < 0.25)
    near_zero = np.mean(np.abs(samples) < 0.25)
    assert near_plus >= 0.35 and near_minus >= 0.35, (near_plus, near_minus)
    assert near_zero < 0.10, near_zero

    gaussian_mean, _ = gaussian.predict(states, deterministic=True)
    assert np.all(np.abs(gaussian_mean) < 0.2), gaussian_mean


def test_flow_bc_imitates_a_noisy_pendulum_expert(pendulum_demos):
    model = FlowBC(
        "MlpPolicy", "Pendulum-v1", pendulum_demos, seed=0, learning_rate=1e-3, policy_kwargs={"net_arch": [128, 128]}
    )
    model.learn(3000)
    # Evaluate on the demonstrations' own initial states, so the comparison is not swamped by start-state luck.
    flow_returns = returns_on_starts(model, "Pendulum-v1", 20)
    demo_mean = pendulum_demos.summary()["mean_return"]
    # Returns are negative: "within 15%" means no more than 15% worse than the demonstrations.
    assert flow_returns.mean() >= 1.15 * demo_mean, (flow_returns.mean(), demo_mean)
    # and far better than an untrained flow policy
    untrained = FlowBC("MlpPolicy", "Pendulum-v1", pendulum_demos, seed=0, policy_kwargs={"net_arch": [128, 128]})
    assert returns_on_starts(untrained, "Pendulum-v1", 5).mean() < 2 * demo_mean


def test_save_load_round_trip_and_continued_training(tmp_path):
    demos = bimodal_demonstrations(500)
    model = FlowBC("MlpPolicy", BimodalEnv(), demos, seed=0, n_flow_steps=4, policy_kwargs={"net_arch": [16]})
    model.learn(20)
    model.save(tmp_path / "flow_bc.zip")
    loaded = FlowBC.load(tmp_path / "flow_bc.zip", env=BimodalEnv())
    obs = np.random.default_rng(0).uniform(-1, 1, (8, 2)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])
    for (name, param), (_, loaded_param) in zip(
        model.policy.state_dict().items(), loaded.policy.state_dict().items(), strict=True
    ):
        assert th.equal(param, loaded_param), name
    assert loaded.policy.n_flow_steps == 4 and loaded.num_timesteps == 20
    # Demonstrations are not saved with the model; learn() says so, set_demonstrations() fixes it.
    with pytest.raises(ValueError, match="needs demonstrations"):
        loaded.learn(5)
    loaded.set_demonstrations(demos)
    loaded.learn(5, reset_num_timesteps=False)
    assert loaded.num_timesteps == 25


def test_same_seed_same_model():
    demos = bimodal_demonstrations(500)

    def train():
        model = FlowBC("MlpPolicy", BimodalEnv(), demos, seed=3, policy_kwargs={"net_arch": [16]})
        return model.learn(30)

    a, b = train(), train()
    for pa, pb in zip(a.policy.parameters(), b.policy.parameters(), strict=True):
        assert th.equal(pa, pb)


def test_logger_callback_and_evaluation(tmp_path):
    demos = bimodal_demonstrations(500)
    model = FlowBC("MlpPolicy", BimodalEnv(), demos, seed=0, eval_freq=10, n_eval_episodes=2, policy_kwargs={"net_arch": [16]})
    model.set_logger(configure(str(tmp_path), ["csv"]))

    class StopAt(BaseCallback):
        def __init__(self):
            super().__init__()
            self.steps = 0

        def _on_step(self) -> bool:
            self.steps += 1
            return self.steps < 25

    callback = StopAt()
    model.learn(100, callback=callback, log_interval=5)
    assert callback.steps == 25 and model.num_timesteps == 25
    assert [step for step, _, _ in model.eval_results] == [10, 20]
    progress = (tmp_path / "progress.csv").read_text()
    assert "train/cfm_loss" in progress and "eval/mean_reward" in progress


def test_tensorboard_and_progress_bar(tmp_path):
    model = FlowBC(
        "MlpPolicy", BimodalEnv(), bimodal_demonstrations(200), tensorboard_log=str(tmp_path), policy_kwargs={"net_arch": [8]}
    )
    model.learn(10, log_interval=5, progress_bar=True)
    assert list(tmp_path.glob("FlowBC_1/events.out.tfevents.*"))


def test_dict_observations():
    env = DictObsEnv()
    from sb3_flow.common.demonstrations import collect_demonstrations

    demos = collect_demonstrations(env, lambda obs: obs["goal"], 20, seed=0)
    model = FlowBC("MultiInputPolicy", env, demos, seed=0, policy_kwargs={"net_arch": [64, 64]}, learning_rate=1e-3)
    before = model.evaluate(n_eval_episodes=5)[0]
    model.learn(600)
    after = model.evaluate(n_eval_episodes=5)[0]
    assert after > before + 2.0, (before, after)


def test_non_finite_loss_raises_and_leaves_weights_unchanged():
    model = FlowBC("MlpPolicy", BimodalEnv(), bimodal_demonstrations(200), seed=0, policy_kwargs={"net_arch": [8]})
    # Past the demonstrations' own check: the training tensors go bad (as a diverging features extractor would).
    model._demonstration_tensors()["observations"][:] = float("inf")
    before = [p.detach().clone() for p in model.policy.parameters()]
    with pytest.raises(FloatingPointError, match="cfm_loss is nan"):
        model.learn(3)
    for old, new in zip(before, model.policy.parameters(), strict=True):
        assert th.equal(old, new)


def test_nan_learning_rate_schedule_raises_before_any_step():
    def schedule(progress_remaining: float) -> float:
        return 1e-3 if progress_remaining > 0.5 else float("nan")

    model = FlowBC("MlpPolicy", BimodalEnv(), bimodal_demonstrations(200), learning_rate=schedule, seed=0)
    with pytest.raises(FloatingPointError, match="learning-rate schedule returned nan"):
        model.learn(10)
    assert model.num_timesteps == 5
    assert all(th.isfinite(p).all() for p in model.policy.parameters())


@pytest.mark.parametrize("algorithm", [FlowBC, GaussianBC])
@pytest.mark.parametrize("field", ["actions", "observations"])
def test_non_finite_demonstrations_are_rejected(algorithm, field):
    demos = bimodal_demonstrations(200)
    getattr(demos, field)[7] = np.nan
    with pytest.raises(ValueError, match=f"Demonstration {field} hold NaN or inf in 1 of 200 rows \\(first at row 7\\)"):
        algorithm("MlpPolicy", BimodalEnv(), demos)


def test_flow_bc_takes_demonstrations_recorded_from_its_channel_last_image_env():
    env = ChannelLastImageEnv()
    demos = collect_demonstrations(env, lambda obs: np.array([obs.mean() / 255.0], np.float32), n_episodes=2, seed=0)
    assert demos.observations.shape[1:] == (36, 36, 3)
    model = FlowBC("CnnPolicy", ChannelLastImageEnv(), demos, batch_size=8, seed=0,
                   policy_kwargs={"net_arch": [8], "features_extractor_kwargs": {"features_dim": 8}})  # fmt: skip
    # SB3 transposed the env to channel-first; the demonstrations were transposed the same way, the caller's kept.
    assert model.observation_space.shape == (3, 36, 36)
    assert model.demonstrations.observations.shape[1:] == (3, 36, 36)
    np.testing.assert_array_equal(model.demonstrations.observations[0], demos.observations[0].transpose(2, 0, 1))
    assert demos.observations.shape[1:] == (36, 36, 3)
    model.learn(2)


def test_bad_input_errors(tmp_path, pendulum_demos):
    with pytest.raises(TypeError, match="Box action space"):
        FlowBC("MlpPolicy", "CartPole-v1", None)
    with pytest.raises(ValueError, match="n_flow_steps"):
        FlowBC("MlpPolicy", "Pendulum-v1", pendulum_demos, n_flow_steps=0)
    with pytest.raises(ValueError, match=r"expects \(2,\)"):
        FlowBC("MlpPolicy", BimodalEnv(), pendulum_demos)
    with pytest.raises(FileNotFoundError, match="No demonstrations file"):
        FlowBC("MlpPolicy", "Pendulum-v1", tmp_path / "missing.npz")
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_text("not numpy")
    with pytest.raises(ValueError, match="not a readable demonstrations"):
        FlowBC("MlpPolicy", "Pendulum-v1", corrupt)
    with pytest.raises(ValueError, match="time_sampling"):
        FlowBC("MlpPolicy", "Pendulum-v1", pendulum_demos, time_sampling="normal")
    empty = Demonstrations(np.zeros((0, 3)), np.zeros((0, 1)), [], np.zeros((0, 3)), [], [], [])
    with pytest.raises(ValueError, match="empty"):
        FlowBC("MlpPolicy", "Pendulum-v1", empty)


def test_loading_a_foreign_or_corrupt_zip_is_a_clear_error(tmp_path):
    gaussian = GaussianBC("MlpPolicy", BimodalEnv(), bimodal_demonstrations(100), policy_kwargs={"net_arch": [8]})
    gaussian.save(tmp_path / "gaussian.zip")
    with pytest.raises(ValueError, match="holds a GaussianBC model, not a FlowBC model"):
        FlowBC.load(tmp_path / "gaussian.zip")
    loaded = GaussianBC.load(tmp_path / "gaussian.zip")
    obs = np.zeros((3, 2), dtype=np.float32)
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], gaussian.predict(obs, deterministic=True)[0])
    (tmp_path / "corrupt.zip").write_bytes(b"PK not really")
    with pytest.raises(ValueError, match="not a readable SB3 model zip"):
        FlowBC.load(tmp_path / "corrupt.zip")
    with pytest.raises(FileNotFoundError):
        FlowBC.load(tmp_path / "missing.zip")


@pytest.mark.parametrize("time_sampling", ["uniform", "beta", "grid"])
def test_time_sampling_modes_all_learn(time_sampling):
    demos = bimodal_demonstrations(1000)
    demos.actions = 0.5 * demos.observations[:, :1]  # unimodal, so the CFM loss can fall well below its start
    model = FlowBC(
        "MlpPolicy",
        BimodalEnv(),
        demos,
        seed=0,
        time_sampling=time_sampling,
        n_noise_draws=2,
        policy_kwargs={"net_arch": [32, 32]},
        learning_rate=1e-3,
    )
    obs = th.as_tensor(demos.observations[:256])
    actions = th.as_tensor(demos.actions[:256])
    draws = (th.rand(256, 4), th.randn(256, 4, 1))
    with th.no_grad():
        before = model.policy.cfm_loss(obs, actions, *draws).mean().item()
    model.learn(300)
    with th.no_grad():
        after = model.policy.cfm_loss(obs, actions, *draws).mean().item()
    assert after < 0.5 * before, (before, after)
