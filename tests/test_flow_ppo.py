"""FlowPPO: ratio at the start, learning, SB3 conformance, fine-tuning hand-off, numerics, bad input."""

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.envs import IdentityEnvBox
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_flow import FlowBC
from sb3_flow.fpo import FlowPPO
from sb3_flow.fpo.fpo import clamp_log_ratio, fpo_log_ratio, trust_region_surrogate
from tests.helpers import BimodalEnv, DictObsEnv, bimodal_demonstrations

SMALL = {"net_arch": [32, 32], "value_net_arch": [32]}


class Nop(BaseCallback):
    def _on_step(self) -> bool:
        return True


def collect_one_rollout(model: FlowPPO) -> None:
    model._setup_learn(model.n_steps * model.n_envs, None)
    callback = Nop()
    callback.init_callback(model)
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)


@pytest.mark.parametrize(
    "ratio_mode, weighting", [("per_action", "velocity"), ("per_sample", "velocity"), ("per_action", "noise")]
)
def test_ratio_is_exactly_one_before_any_update(ratio_mode, weighting):
    model = FlowPPO(
        "MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=32, seed=0, ratio_mode=ratio_mode,
        cfm_loss_weighting=weighting, policy_kwargs=SMALL,
    )  # fmt: skip
    collect_one_rollout(model)
    model.prepare_update()
    ratios = []
    for samples in model.rollout_buffer.get(model.batch_size):
        ratio, _log_ratio, _ = model.policy_ratio(samples)
        assert ratio.shape == ((32,) if ratio_mode == "per_action" else (32, 8))
        ratios.append(ratio.flatten())
        assert samples.times.shape == (32, 8) and samples.noises.shape == (32, 8, 1)
    ratios = th.cat(ratios)
    assert th.equal(ratios, th.ones_like(ratios))
    # The buffer keeps the pre-clip action the flow generated; the env got the clipped, unscaled one.
    actions = model.rollout_buffer.actions
    assert np.isfinite(actions).all()


def test_ratio_moves_after_an_update_and_is_logged():
    model = FlowPPO("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=32, n_epochs=2, seed=0, policy_kwargs=SMALL)
    model.learn(64)
    values = model.logger.name_to_value
    assert values["train/ratio"] != 1.0 and values["train/approx_kl"] > 0
    for key in ("train/clip_fraction", "train/cfm_loss", "train/explained_variance", "train/value_loss"):
        assert key in values


def test_noise_weighting_scales_each_draws_log_ratio_by_t_squared():
    model = FlowPPO(
        "MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=64, n_epochs=2, seed=0, ratio_mode="per_sample",
        time_sampling="uniform", cfm_loss_clamp=None, policy_kwargs=SMALL,
    )  # fmt: skip
    model.learn(64)  # moves the policy away from the one whose draws and losses the buffer still holds
    samples = next(model.rollout_buffer.get(64))
    _, velocity_log_ratio, _ = model.policy_ratio(samples)
    model.cfm_loss_weighting = "noise"
    _, noise_log_ratio, _ = model.policy_ratio(samples)
    assert velocity_log_ratio.abs().max() > 1e-3 and velocity_log_ratio.abs().max() < model.log_ratio_clamp
    assert th.allclose(noise_log_ratio, samples.times.pow(2) * velocity_log_ratio, atol=1e-5)


def test_surrogate_helpers():
    old = th.tensor([[1.0, 3.0], [2.0, 2.0]])
    new = th.tensor([[0.5, 2.5], [2.5, 2.5]])
    assert th.allclose(fpo_log_ratio(old, new, "per_action"), th.tensor([0.5, -0.5]))
    assert th.allclose(fpo_log_ratio(old, new, "per_sample"), th.tensor([[0.5, 0.5], [-0.5, -0.5]]))
    ratio = th.tensor([1.5, 1.5, 0.5, 0.5])
    advantages = th.tensor([1.0, -1.0, 1.0, -1.0])
    clip = trust_region_surrogate(ratio, advantages, 0.2, "clip")
    assert th.allclose(clip, th.tensor([1.2, -1.5, 0.5, -0.8]))
    aspo = trust_region_surrogate(ratio, advantages, 0.2, "aspo")
    # Positive advantages: PPO clip; negative: A r - |A| (r - 1)^2 / (2 eps)
    assert th.allclose(aspo, th.tensor([1.2, -1.5 - 0.25 / 0.4, 0.5, -0.5 - 0.25 / 0.4]))


def test_learns_identity_box_from_scratch():
    env = IdentityEnvBox(eps=0.2, ep_length=100)
    model = FlowPPO(
        "MlpPolicy",
        env,
        n_steps=256,
        batch_size=64,
        learning_rate=1e-3,
        gamma=0.0,
        n_flow_steps=4,
        seed=0,
        policy_kwargs={"net_arch": [64, 64], "value_net_arch": [64]},
    )
    before, _ = evaluate_policy(model, IdentityEnvBox(eps=0.2, ep_length=100), n_eval_episodes=5, warn=False)
    model.learn(4096)
    after, _ = evaluate_policy(model, IdentityEnvBox(eps=0.2, ep_length=100), n_eval_episodes=10, warn=False)
    assert before < 60 and after >= 90, (before, after)


def test_predict_single_and_batched_and_deterministic_is_zero_noise():
    model = FlowPPO("MlpPolicy", "Pendulum-v1", seed=0, policy_kwargs=SMALL)
    single, _ = model.predict(np.zeros(3, dtype=np.float32), deterministic=True)
    batch, _ = model.predict(np.zeros((4, 3), dtype=np.float32), deterministic=True)
    assert single.shape == (1,) and batch.shape == (4, 1)
    np.testing.assert_allclose(batch, np.repeat(single[None], 4, axis=0), atol=1e-6)
    with th.no_grad():
        zero_noise = model.policy.sample(th.zeros(1, 3), noise=th.zeros(1, 1)).numpy() * 2.0
    np.testing.assert_allclose(single, zero_noise.reshape(1), atol=1e-6)
    stochastic = np.stack([model.predict(np.zeros(3, dtype=np.float32))[0] for _ in range(10)])
    assert stochastic.std() > 0


def test_fine_tuning_starts_from_the_base_policy_and_warmup_leaves_the_actor_alone(tmp_path):
    from tests.helpers import BimodalEnv

    bc = FlowBC("MlpPolicy", BimodalEnv(), bimodal_demonstrations(300), n_flow_steps=5, policy_kwargs={"net_arch": [16, 16]})
    bc.learn(50)
    bc.save(tmp_path / "base.zip")
    for source in (bc, bc.policy, tmp_path / "base.zip"):
        model = FlowPPO(
            "MlpPolicy",
            BimodalEnv(),
            base_policy=source,
            n_steps=32,
            batch_size=16,
            n_epochs=2,
            seed=0,
            critic_warmup_rollouts=1,
            critic_learning_rate=1e-3,
            base_regularization_coef=0.1,
        )
        assert model.policy.net_arch == [16, 16] and model.policy.n_flow_steps == 5
        obs = np.random.default_rng(0).uniform(-1, 1, (6, 2)).astype(np.float32)
        np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], bc.predict(obs, deterministic=True)[0])
    actor_before = [p.detach().clone() for p in model.policy.velocity_net.parameters()]
    value_before = [p.detach().clone() for p in model.policy.value_net.parameters()]
    model.learn(32)  # one rollout: critic warm-up
    assert all(th.equal(a, b) for a, b in zip(actor_before, model.policy.velocity_net.parameters(), strict=True))
    assert not all(th.equal(a, b) for a, b in zip(value_before, model.policy.value_net.parameters(), strict=True))
    assert model.logger.name_to_value["train/critic_warmup"] == 1
    assert model.policy.optimizer.param_groups[1]["lr"] == 1e-3
    model.learn(32, reset_num_timesteps=False)  # second rollout: the actor learns, pulled toward the base
    assert not all(th.equal(a, b) for a, b in zip(actor_before, model.policy.velocity_net.parameters(), strict=True))
    assert "train/base_regularization" in model.logger.name_to_value
    # The frozen reference policy is saved and restored with the model.
    model.save(tmp_path / "tuned.zip")
    loaded = FlowPPO.load(tmp_path / "tuned.zip", env=BimodalEnv())
    for a, b in zip(model.reference_policy.parameters(), loaded.reference_policy.parameters(), strict=True):
        assert th.equal(a, b)


def test_bad_input_errors():
    with pytest.raises(TypeError, match="Box action space"):
        FlowPPO("MlpPolicy", "CartPole-v1")
    with pytest.raises(ValueError, match="n_mc_samples"):
        FlowPPO("MlpPolicy", "Pendulum-v1", n_mc_samples=0)
    with pytest.raises(ValueError, match="ratio_mode"):
        FlowPPO("MlpPolicy", "Pendulum-v1", ratio_mode="mean")
    with pytest.raises(ValueError, match="trust_region"):
        FlowPPO("MlpPolicy", "Pendulum-v1", trust_region="kl")
    with pytest.raises(ValueError, match="n_flow_steps"):
        FlowPPO("MlpPolicy", "Pendulum-v1", n_flow_steps=0)
    with pytest.raises(ValueError, match="cfm_loss_weighting"):
        FlowPPO("MlpPolicy", "Pendulum-v1", cfm_loss_weighting="eps")
    with pytest.raises(ValueError, match="log_ratio_clamp"):
        FlowPPO("MlpPolicy", "Pendulum-v1", log_ratio_clamp=float("inf"))
    with pytest.raises(ValueError, match="log_ratio_clamp_mode"):
        FlowPPO("MlpPolicy", "Pendulum-v1", log_ratio_clamp_mode="soft")
    with pytest.raises(ValueError, match="n_mc_samples"):
        FlowPPO("MlpPolicy", "Pendulum-v1", n_mc_samples=2.0)
    with pytest.raises(ValueError, match="observation space"):
        FlowPPO("MlpPolicy", "Pendulum-v1", base_policy=FlowPPO("MultiInputPolicy", DictObsEnv(), policy_kwargs=SMALL).policy)
    with pytest.raises(FileNotFoundError):
        FlowPPO("MlpPolicy", "Pendulum-v1", base_policy="missing_base.zip")


def test_action_perturbation_is_added_to_rollout_actions_only():
    model = FlowPPO("MlpPolicy", "Pendulum-v1", seed=0, action_perturbation_std=0.5, policy_kwargs=SMALL)
    obs = th.zeros(4000, 3)
    noise = th.zeros(4000, 1)
    with th.no_grad():
        flow_actions = model.policy.integrate(obs, noise=noise).actions
        th.manual_seed(1)
        rollout_actions, _, _ = model.policy(obs, deterministic=True)  # zero flow noise: only the perturbation varies
        th.manual_seed(1)
        stochastic, _, _ = model.policy(obs)
    # Deterministic rollouts are not perturbed; stochastic ones are, with the configured std.
    assert th.equal(rollout_actions, flow_actions)
    model.policy.action_perturbation_std = 0.0
    with th.no_grad():
        th.manual_seed(1)
        unperturbed, _, _ = model.policy(obs)
    assert abs((stochastic - unperturbed).std().item() - 0.5) < 0.03
    # predict() never perturbs: deterministic predictions equal the zero-noise flow.
    model.policy.action_perturbation_std = 0.5
    predicted, _ = model.predict(np.zeros((3, 3), dtype=np.float32), deterministic=True)
    np.testing.assert_allclose(predicted, np.clip(flow_actions[:3].numpy(), -1, 1) * 2.0, atol=1e-6)


# --- FPO++'s log-ratio clamp -------------------------------------------------------------------------------------


def surrogate_gradient(log_ratio: th.Tensor, mode: str, clamp: float = 10.0) -> th.Tensor:
    """d(PPO loss)/d(log-ratio) for a negative advantage, through the clamp."""
    log_ratio = log_ratio.clone().requires_grad_(True)
    ratio = th.exp(clamp_log_ratio(log_ratio, clamp, mode))
    loss = -trust_region_surrogate(ratio, th.full_like(ratio, -1.0), 0.05, "clip").sum()
    loss.backward()
    return log_ratio.grad


def test_straight_through_clamp_bounds_from_above_and_keeps_the_gradient():
    log_ratio = th.tensor([12.0, 3.0, -20.0])
    assert th.equal(clamp_log_ratio(log_ratio, 10.0, "straight_through"), th.tensor([10.0, 3.0, -20.0]))
    assert th.equal(clamp_log_ratio(log_ratio, 10.0, "hard"), th.tensor([10.0, 3.0, -10.0]))
    assert th.equal(clamp_log_ratio(log_ratio, None, "hard"), log_ratio)
    # A draw whose ratio grew past e^c under a negative advantage: the hard clamp gives it no gradient, FPO++'s
    # straight-through clamp the gradient of the bounded ratio, which pushes it back.
    assert surrogate_gradient(th.tensor([12.0]), "hard").item() == 0.0
    assert surrogate_gradient(th.tensor([12.0]), "straight_through").item() == pytest.approx(np.exp(10.0), rel=1e-5)


@pytest.mark.parametrize("mode", ["hard", "straight_through"])
def test_flow_ppo_applies_the_chosen_log_ratio_clamp(mode):
    model = FlowPPO(
        "MlpPolicy", "Pendulum-v1", n_steps=32, batch_size=32, seed=0, ratio_mode="per_sample", log_ratio_clamp=10.0,
        log_ratio_clamp_mode=mode, cfm_loss_clamp=None, policy_kwargs=SMALL,
    )  # fmt: skip
    collect_one_rollout(model)
    model.prepare_update()
    samples = next(model.rollout_buffer.get(32))
    # Old losses far above the new ones: every draw's log-ratio is past the bound.
    samples = samples._replace(old_cfm_losses=samples.old_cfm_losses + 50.0)
    features = model.policy.extract_features(samples.observations, model.policy.features_extractor)
    log_ratio = model.policy_terms(samples, features).log_ratio
    assert th.allclose(log_ratio, th.full_like(log_ratio, 10.0))
    loss = -trust_region_surrogate(th.exp(log_ratio), th.full((32, 1), -1.0), 0.05, "clip").mean()
    loss.backward()
    gradient = sum(p.grad.abs().sum() for p in model.policy.velocity_net.parameters() if p.grad is not None)
    assert (gradient > 0) == (mode == "straight_through")


# --- base policies: only the flow is taken ----------------------------------------------------------------------


def test_a_flow_ppo_base_brings_its_flow_and_the_critic_starts_fresh(tmp_path):
    kwargs = {"n_steps": 32, "batch_size": 16, "n_epochs": 1, "n_flow_steps": 3}
    source = FlowPPO("MlpPolicy", BimodalEnv(), seed=0, policy_kwargs=SMALL, **kwargs).learn(32)
    source.save(tmp_path / "source.zip")
    source_state = {name: value.clone() for name, value in source.policy.state_dict().items()}
    for base in (source, source.policy, tmp_path / "source.zip"):
        tuned = FlowPPO("MlpPolicy", BimodalEnv(), base_policy=base, seed=1, policy_kwargs=SMALL, **kwargs)
        fresh = FlowPPO("MlpPolicy", BimodalEnv(), seed=1, policy_kwargs=SMALL, **kwargs)
        assert tuned.policy.n_flow_steps == 3  # the saved model's policy is rebuilt as it was built, not with defaults
        state = tuned.policy.state_dict()
        for name, value in state.items():
            expected = source_state[name] if name.startswith(("features_extractor.", "velocity_net.")) else None
            if expected is None:  # the value network: freshly initialized, as without a base
                assert th.equal(value, fresh.policy.state_dict()[name]) and not th.equal(value, source_state[name]), name
            else:
                assert th.equal(value, expected), name
        tuned.learn(32)
        # Training the fine-tuned model leaves the base's object as it was.
        assert all(th.equal(source_state[name], value) for name, value in source.policy.state_dict().items())


# --- numbers ----------------------------------------------------------------------------------------------------


def test_numpy_integers_are_accepted_for_counts():
    model = FlowPPO("MlpPolicy", "Pendulum-v1", n_mc_samples=np.int64(4), n_flow_steps=np.int64(3), policy_kwargs=SMALL)
    assert model.n_mc_samples == 4 and model.policy.n_flow_steps == 3
    assert type(model.n_mc_samples) is int and type(model.policy.n_flow_steps) is int


def test_from_scratch_defaults_are_ppo_sizes_and_a_base_or_an_old_zip_keeps_its_own(tmp_path, monkeypatch):
    from sb3_flow import ReinFlow

    for algorithm in (FlowPPO, ReinFlow):
        model = algorithm("MlpPolicy", "Pendulum-v1", seed=0)
        assert (model.policy.net_arch, model.policy.value_net_arch) == ([64, 64], [64, 64])
    # What the user says wins, and a base brings its actor shape.
    model = FlowPPO("MlpPolicy", "Pendulum-v1", policy_kwargs={"net_arch": [16]}, seed=0)
    assert (model.policy.net_arch, model.policy.value_net_arch) == ([16], [64, 64])
    base = FlowBC("MlpPolicy", "Pendulum-v1", policy_kwargs={"net_arch": [24, 24, 24]}, seed=0)
    assert FlowPPO("MlpPolicy", "Pendulum-v1", base_policy=base, seed=0).policy.net_arch == [24, 24, 24]
    # Saved and loaded with its sizes.
    FlowPPO("MlpPolicy", "Pendulum-v1", seed=0).save(tmp_path / "new.zip")
    assert FlowPPO.load(tmp_path / "new.zip").policy.net_arch == [64, 64]
    # A zip saved before the sizes were recorded (built with the policy's own 3x256 default) still loads.
    with monkeypatch.context() as patch:
        patch.setattr(FlowPPO, "from_scratch_architecture", {})
        old = FlowPPO("MlpPolicy", "Pendulum-v1", seed=0)
        assert old.policy.net_arch == [256, 256, 256]
        old.save(tmp_path / "old.zip")
    loaded = FlowPPO.load(tmp_path / "old.zip")
    assert loaded.policy.net_arch == [256, 256, 256]
    for name, tensor in old.policy.state_dict().items():
        assert th.equal(tensor, loaded.policy.state_dict()[name])
