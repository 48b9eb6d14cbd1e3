"""ReinFlow: exact chain log-probabilities, ratio 1 at the start, deterministic = base, noise modes, last-M-steps
fine-tuning, learning, bad input. SB3 conformance is in test_on_policy_conformance.py."""

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.envs import IdentityEnvBox
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_flow import FlowBC, ReinFlow
from tests.helpers import BimodalEnv, bimodal_demonstrations

SMALL = {"net_arch": [32, 32], "value_net_arch": [32]}


class Nop(BaseCallback):
    def _on_step(self) -> bool:
        return True


def collect_one_rollout(model: ReinFlow) -> None:
    model._setup_learn(model.n_steps * model.n_envs, None)
    callback = Nop()
    callback.init_callback(model)
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)


def brute_force_chain_log_prob(policy, observations: th.Tensor, chain: th.Tensor, normalize: bool) -> th.Tensor:
    """Transition by transition with torch.distributions and the network's plain forward (no grid shortcuts)."""
    n_steps, action_dim = chain.shape[0] - 1, chain.shape[-1]
    features = policy.extract_features(observations, policy.features_extractor)
    stds = policy.noise_stds(features, n_steps).expand(n_steps, chain.shape[1], action_dim)
    total = th.distributions.Normal(0.0, 1.0).log_prob(chain[0]).sum(-1)
    for k in range(n_steps):
        t = th.full((chain.shape[1],), k / n_steps)
        mean = chain[k] + policy.velocity_net(features, chain[k], t) / n_steps
        total = total + th.distributions.Normal(mean, stds[k]).log_prob(chain[k + 1]).sum(-1)
    return total / ((n_steps + 1) * action_dim) if normalize else total


@pytest.mark.parametrize(
    "options",
    [
        {"noise": "learned"},
        {"noise": "fixed", "log_prob_normalization": "none"},
        {"noise": "learned", "policy_kwargs": {**SMALL, "integration_method": "midpoint"}},
    ],
)
def test_ratio_is_exactly_one_and_log_probs_are_the_chain_likelihood(options):
    options = {"policy_kwargs": SMALL, **options}
    model = ReinFlow("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=32, seed=0, **options)
    collect_one_rollout(model)
    buffer = model.rollout_buffer
    assert buffer.chains.shape == (64, 1, model.policy.n_flow_steps + 1, 1)
    # The buffer's action is the chain's end point (pre-clip).
    np.testing.assert_array_equal(buffer.chains[:, :, -1], buffer.actions)
    model.prepare_update()
    ratios = []
    for samples in buffer.get(model.batch_size):
        features = model.policy.extract_features(samples.observations, model.policy.features_extractor)
        with th.no_grad():
            log_ratio = model.policy_terms(samples, features).log_ratio
        ratios.append(th.exp(log_ratio))
        if options["policy_kwargs"].get("integration_method", "euler") == "euler":
            with th.no_grad():
                brute = brute_force_chain_log_prob(
                    model.policy, samples.observations, samples.chains, options.get("log_prob_normalization") != "none"
                )
            th.testing.assert_close(samples.old_log_prob, brute, atol=1e-4, rtol=1e-5)
    ratios = th.cat(ratios)
    assert th.equal(ratios, th.ones_like(ratios))
    # The log-probabilities the integrator records while sampling are the ones the re-evaluation computes from the
    # stored chain: same time grid, same means, same stds.
    policy = model.policy
    with th.no_grad():
        features = policy.extract_features(th.randn(16, 3), policy.features_extractor)
        flow = policy.sample_chain(features)
        sampled = policy.chain_log_prob(flow.step_log_probs, flow.chain)
        th.testing.assert_close(sampled, policy.evaluate_chains(features, flow.chain)[0], atol=1e-5, rtol=1e-6)


def test_noise_std_bounds_fixed_noise_and_schedule():
    model = ReinFlow("MlpPolicy", "Pendulum-v1", min_std=0.05, max_std=0.3, seed=0, policy_kwargs=SMALL)
    with th.no_grad():
        for layer in model.policy.noise_net:
            if isinstance(layer, th.nn.Linear):
                layer.weight.normal_(0, 30.0)  # saturate the squashing both ways
        stds = model.policy.noise_stds(th.randn(500, 3) * 5)
    assert stds.shape == (4, 500, 1)
    assert stds.min() >= 0.05 - 1e-6 and stds.max() <= 0.3 + 1e-6
    assert stds.min() < 0.06 and stds.max() > 0.29
    fixed = ReinFlow(
        "MlpPolicy", "Pendulum-v1", noise="fixed", max_std=lambda progress: 0.1 + 0.2 * progress, n_steps=64, batch_size=64,
        seed=0,
    )  # fmt: skip
    assert not hasattr(fixed.policy, "noise_net")
    fixed.policy.current_max_std = 0.25
    policy, features = fixed.policy, th.zeros(4000, 3)
    with th.no_grad():
        chain = policy.sample_chain(features).chain
        for k in range(policy.n_flow_steps):
            t = th.full((4000,), k / policy.n_flow_steps)
            mean = chain[k] + policy.velocity_net(features, chain[k], t) / policy.n_flow_steps
            # Each transition's spread around its mean is the fixed std.
            assert abs((chain[k + 1] - mean).std().item() - 0.25) < 0.01
    # The schedule sets the std of each rollout from the remaining progress.
    fixed.learn(fixed.n_steps)
    assert fixed.policy.current_max_std == pytest.approx(0.3)


def test_deterministic_is_the_base_policy_and_reproducible(tmp_path):
    base = FlowBC("MlpPolicy", BimodalEnv(), bimodal_demonstrations(300), n_flow_steps=5, policy_kwargs={"net_arch": [16, 16]})
    base.learn(50)
    obs = np.random.default_rng(0).uniform(-1, 1, (6, 2)).astype(np.float32)
    for n_finetune_steps in (None, 2):
        model = ReinFlow("MlpPolicy", BimodalEnv(), base_policy=base, n_finetune_steps=n_finetune_steps, seed=0)
        assert model.policy.n_flow_steps == 5 and model.policy.net_arch == [16, 16]
        first, _ = model.predict(obs, deterministic=True)
        np.testing.assert_array_equal(first, base.predict(obs, deterministic=True)[0])
        np.testing.assert_array_equal(first, model.predict(obs, deterministic=True)[0])
        stochastic = np.stack([model.predict(obs[:1])[0] for _ in range(20)])
        assert stochastic.std() > 0


def test_only_the_last_steps_are_fine_tuned():
    base = FlowBC("MlpPolicy", BimodalEnv(), bimodal_demonstrations(300), n_flow_steps=4, policy_kwargs={"net_arch": [16, 16]})
    base.learn(50)
    model = ReinFlow(
        "MlpPolicy", BimodalEnv(), base_policy=base, n_finetune_steps=1, n_steps=64, batch_size=32, learning_rate=1e-2, seed=0
    )
    frozen = model.policy.frozen_velocity_net
    assert all(not p.requires_grad for p in frozen.parameters())
    for a, b in zip(frozen.parameters(), base.policy.velocity_net.parameters(), strict=True):
        assert th.equal(a, b)
    obs = th.as_tensor(np.random.default_rng(1).uniform(-1, 1, (8, 2)), dtype=th.float32)
    with th.no_grad():
        chain_before = model.policy.integrate(obs, deterministic=True, return_chain=True).chain
    model.learn(128)
    for a, b in zip(frozen.parameters(), base.policy.velocity_net.parameters(), strict=True):
        assert th.equal(a, b)
    assert not all(
        th.equal(a, b)
        for a, b in zip(model.policy.velocity_net.parameters(), base.policy.velocity_net.parameters(), strict=True)
    )
    with th.no_grad():
        chain_after = model.policy.integrate(obs, deterministic=True, return_chain=True).chain
    # The first three steps (t = 0, 1/4, 2/4) are the frozen base's: x_3 does not move; the last step does.
    assert th.equal(chain_after[3], chain_before[3])
    assert not th.equal(chain_after[4], chain_before[4])
    # Two velocity networks are not one FlowPolicy: such a model is refused as a base, not silently flattened.
    with pytest.raises(ValueError, match="n_finetune_steps"):
        ReinFlow("MlpPolicy", BimodalEnv(), base_policy=model)


def test_learns_identity_box_from_scratch():
    env = IdentityEnvBox(eps=0.2, ep_length=100)
    model = ReinFlow(
        "MlpPolicy",
        env,
        n_steps=256,
        batch_size=64,
        n_epochs=10,
        learning_rate=1e-3,
        clip_range=0.2,
        gamma=0.0,
        ent_coef=0.0,
        max_std=0.5,
        seed=0,
        policy_kwargs={"net_arch": [64, 64], "value_net_arch": [64]},
    )
    before, _ = evaluate_policy(model, IdentityEnvBox(eps=0.2, ep_length=100), n_eval_episodes=5, warn=False)
    model.learn(4096)
    after, _ = evaluate_policy(model, IdentityEnvBox(eps=0.2, ep_length=100), n_eval_episodes=10, warn=False)
    assert before < 60 and after >= 90, (before, after)


def test_warmup_trains_only_the_critic_then_the_actor_and_noise_learn():
    model = ReinFlow(
        "MlpPolicy", "Pendulum-v1", n_steps=32, batch_size=16, critic_warmup_rollouts=1, seed=0, policy_kwargs=SMALL
    )
    actor_before = [p.detach().clone() for p in model.policy.actor_parameters()]
    model.learn(32)
    assert all(th.equal(a, b) for a, b in zip(actor_before, model.policy.actor_parameters(), strict=True))
    model.learn(32, reset_num_timesteps=False)
    noise_before = actor_before[-len(list(model.policy.noise_net.parameters())) :]
    assert not all(th.equal(a, b) for a, b in zip(noise_before, model.policy.noise_net.parameters(), strict=True))
    assert "train/noise_std" in model.logger.name_to_value and "train/entropy_loss" in model.logger.name_to_value


def test_bad_input_errors():
    with pytest.raises(TypeError, match="Box action space"):
        ReinFlow("MlpPolicy", "CartPole-v1")
    with pytest.raises(ValueError, match="noise must be one of"):
        ReinFlow("MlpPolicy", "Pendulum-v1", noise="ou")
    with pytest.raises(ValueError, match="min_std"):
        ReinFlow("MlpPolicy", "Pendulum-v1", min_std=0.3, max_std=0.1)
    with pytest.raises(ValueError, match="min_std"):
        ReinFlow("MlpPolicy", "Pendulum-v1", min_std=0.0)
    with pytest.raises(ValueError, match="n_finetune_steps"):
        ReinFlow("MlpPolicy", "Pendulum-v1", n_finetune_steps=5)
    with pytest.raises(ValueError, match="log_prob_normalization"):
        ReinFlow("MlpPolicy", "Pendulum-v1", log_prob_normalization="mean")
    with pytest.raises(ValueError, match="ent_coef"):
        ReinFlow("MlpPolicy", "Pendulum-v1", ent_coef=float("nan"))
    with pytest.raises(ValueError, match="batch_size"):
        ReinFlow("MlpPolicy", "Pendulum-v1", batch_size=1)
    with pytest.raises(ValueError, match="space"):
        ReinFlow("MlpPolicy", "MountainCarContinuous-v0", base_policy=ReinFlow("MlpPolicy", "Pendulum-v1").policy)


# --- the noise levels ---------------------------------------------------------------------------------------------


def saturate_noise_net(policy) -> None:
    with th.no_grad():
        for layer in policy.noise_net:
            if isinstance(layer, th.nn.Linear):
                layer.weight.normal_(0, 30.0)


def test_frozen_early_steps_inject_the_fixed_min_std():
    model = ReinFlow(
        "MlpPolicy", "Pendulum-v1", n_flow_steps=np.int64(4), n_finetune_steps=np.int64(1), min_std=0.05, max_std=0.3,
        seed=0, policy_kwargs=SMALL,
    )  # fmt: skip
    assert model.policy.n_finetune_steps == 1 and type(model.policy.n_finetune_steps) is int
    saturate_noise_net(model.policy)
    with th.no_grad():
        stds = model.policy.noise_stds(th.randn(200, 3) * 5)
    # The three frozen steps (the base's velocity network) use min_std whatever the noise network says; the trained
    # last step uses the learned std.
    assert th.equal(stds[:3], th.full_like(stds[:3], 0.05))
    assert stds[3].max() > 0.29
    fixed = ReinFlow("MlpPolicy", "Pendulum-v1", noise="fixed", n_finetune_steps=2, max_std=0.3, seed=0, policy_kwargs=SMALL)
    with th.no_grad():
        fixed_stds = fixed.policy.noise_stds(th.zeros(1, 3))
    assert fixed_stds.flatten().tolist() == pytest.approx([0.1, 0.1, 0.3, 0.3])


def test_fixed_noise_std_is_floored_at_min_std():
    model = ReinFlow("MlpPolicy", "Pendulum-v1", noise="fixed", min_std=0.05, max_std=0.3, seed=0, policy_kwargs=SMALL)
    model.policy.current_max_std = 0.0  # an annealing schedule at its end
    features = model.policy.extract_features(th.randn(8, 3), model.policy.features_extractor)
    with th.no_grad():
        stds = model.policy.noise_stds(features)
        flow = model.policy.sample_chain(features)
        log_probs, entropy = model.policy.evaluate_chains(features, flow.chain)
    assert th.equal(stds, th.full_like(stds, 0.05))
    assert th.isfinite(log_probs).all() and th.isfinite(entropy).all()


def test_a_max_std_schedule_going_negative_stops_training_with_a_clear_error():
    model = ReinFlow(
        "MlpPolicy", "Pendulum-v1", noise="fixed", max_std=lambda progress: 0.6 * progress - 0.4, n_steps=32,
        batch_size=16, n_epochs=1, seed=0, policy_kwargs=SMALL,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"max_std .*schedule.* got -0\.1"):
        model.learn(64)  # the second rollout starts at progress 0.5
