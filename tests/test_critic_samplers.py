"""Sampling a flow with a critic: best-of-N, CFGRL's guidance weight, critic-gradient guidance, IQL critics, IFQL."""

import math

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import SAC
from stable_baselines3.common.policies import BasePolicy

from sb3_flow import CFGRL, IFQL, BestOfNPolicy, ConditionalFlowPolicy, CriticGuidedPolicy, FlowBC, ReturnHeadFlowPolicy
from sb3_flow.common.critics import expectile_loss
from sb3_flow.common.flow import integrate
from sb3_flow.common.guidance import critic_gradient_guidance
from sb3_flow.common.networks import ConditionedVelocity
from sb3_flow.policies import FlowPolicy, load_flow_policy
from sb3_flow.policies.conditional import NULL_LABEL
from sb3_flow.policies.critic_samplers import deterministic_noises
from tests.test_fql import BEST_ACTION, BanditEnv, bandit_dataset

OBS_SPACE = spaces.Box(-1.0, 1.0, (3,), np.float32)
ACTION_SPACE = spaces.Box(-2.0, 2.0, (2,), np.float32)
PEAK = th.tensor([0.5, -0.25])  # the known maximum of KnownMaximumCritic, in normalized actions


def constant(_progress: float) -> float:
    return 1e-3


class KnownMaximumCritic(BasePolicy):
    """Two Q networks, both ``-||a - PEAK||^2`` (times 1 and 2): the best action is PEAK whatever the observation."""

    def __init__(self, observation_space=OBS_SPACE, action_space=ACTION_SPACE):
        super().__init__(observation_space, action_space)
        self.unused = th.nn.Linear(1, 1)  # a parameter, so that the policy has a device

    def q_values(self, obs, actions):
        distance = (actions - PEAK.to(actions.device)).pow(2).sum(dim=-1)
        return th.stack([-distance, -2.0 * distance])

    def _predict(self, observation, deterministic=False):
        raise NotImplementedError


def random_flow(seed: int = 0, n_flow_steps: int = 4) -> FlowPolicy:
    th.manual_seed(seed)
    return FlowPolicy(OBS_SPACE, ACTION_SPACE, constant, net_arch=[16, 16], n_flow_steps=n_flow_steps)


def random_conditional_flow(seed: int = 0) -> ConditionalFlowPolicy:
    th.manual_seed(seed)
    policy = ConditionalFlowPolicy(OBS_SPACE, ACTION_SPACE, constant, net_arch=[16, 16], n_flow_steps=4)
    with th.no_grad():  # as after training: the labels move the flow apart
        policy.label_embedding.weight.normal_()
    return policy


def observations(n: int = 5) -> th.Tensor:
    return th.as_tensor(np.random.default_rng(0).uniform(-1, 1, (n, 3)), dtype=th.float32)


# ---------------------------------------------------------------------------------------------------------- best-of-N


def test_best_of_n_returns_the_sample_with_the_highest_q():
    flow = random_flow()
    sampler = BestOfNPolicy(flow, KnownMaximumCritic(), n_samples=16)
    obs = observations(5)
    chosen = sampler._predict(obs, deterministic=True)
    # The same 16 candidates by hand: the deterministic noises (zero first), each integrated by the flow.
    noise = deterministic_noises(16, 2, flow.device).repeat(5, 1)
    candidates = flow.sample(obs.repeat_interleave(16, dim=0), noise=noise).reshape(5, 16, 2)
    distances = (candidates - PEAK).pow(2).sum(dim=-1)
    expected = candidates[th.arange(5), distances.argmin(dim=1)]
    th.testing.assert_close(chosen, expected)
    # Closer to the maximum than the flow's own (zero-noise) action, and than the average candidate.
    assert distances.min(dim=1).values.mean() < distances[:, 0].mean()
    assert distances.min(dim=1).values.mean() < distances.mean()


def test_best_of_n_is_one_batched_flow_call_per_integration_step():
    sampler = BestOfNPolicy(random_flow(n_flow_steps=4), KnownMaximumCritic(), n_samples=32)
    calls = []
    sampler.flow.velocity_net.trunk.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    sampler.predict(np.zeros((3, 3), np.float32))
    assert calls == [3 * 32] * 4


def test_softmax_selection_follows_the_temperature():
    sampler = BestOfNPolicy(random_flow(), KnownMaximumCritic(), n_samples=8, selection="softmax", temperature=1e-4)
    obs = observations(64)
    th.manual_seed(1)
    cold = sampler._predict(obs)
    sampler.temperature = 1e4  # near-uniform choice among the candidates
    th.manual_seed(1)
    hot = sampler._predict(obs)
    assert (cold - PEAK).pow(2).sum(-1).mean() < (hot - PEAK).pow(2).sum(-1).mean()


def test_best_of_n_scores_with_an_sb3_critic_and_round_trips_through_save(tmp_path):
    env = BanditEnv()
    sac = SAC("MlpPolicy", env, policy_kwargs={"net_arch": [8]}, seed=0)
    flow = FlowPolicy(env.observation_space, env.action_space, constant, net_arch=[8], n_flow_steps=3)
    sampler = BestOfNPolicy(flow, sac, n_samples=6, q_agg="min")
    obs = np.zeros((4, 1), np.float32)
    expected = sampler.predict(obs, deterministic=True)[0]
    sampler.save(tmp_path / "best_of_n.pt")
    loaded = BestOfNPolicy.load(tmp_path / "best_of_n.pt")
    assert (loaded.n_samples, loaded.q_agg) == (6, "min")
    np.testing.assert_allclose(loaded.predict(obs, deterministic=True)[0], expected)
    # The sampler holds copies: training the SAC model afterwards does not change it.
    with th.no_grad():
        for parameter in sac.policy.critic.parameters():
            parameter.add_(1.0)
    np.testing.assert_allclose(sampler.predict(obs, deterministic=True)[0], expected)


def test_critic_guided_policy_round_trips_and_best_of_n_keeps_a_conditional_base(tmp_path):
    guided = CriticGuidedPolicy(random_flow(), KnownMaximumCritic(), guidance_scale=0.05)
    obs = observations(4)
    # KnownMaximumCritic has no constructor arguments to save: a FlowQPolicy-style critic is saved instead.
    base = random_conditional_flow()
    base.guidance_weight = 2.0
    sampler = BestOfNPolicy(base, KnownMaximumCritic(), n_samples=3)
    assert isinstance(sampler.flow, ConditionalFlowPolicy) and sampler.flow.guidance_weight == 2.0
    assert th.equal(guided._predict(obs, deterministic=True), guided._predict(obs, deterministic=True))
    ifql = IFQL("MlpPolicy", BanditEnv(), dataset=bandit_dataset(100), **TINY_BANDIT)
    flow = FlowPolicy(ifql.observation_space, ifql.action_space, constant, net_arch=[8], n_flow_steps=3)
    guided = CriticGuidedPolicy(flow, ifql, guidance_scale=0.2, q_agg="min")
    guided.save(tmp_path / "guided.pt")
    loaded = CriticGuidedPolicy.load(tmp_path / "guided.pt")
    assert (loaded.guidance_scale, loaded.q_agg) == (0.2, "min")
    bandit_obs = np.zeros((3, 1), np.float32)
    np.testing.assert_allclose(
        loaded.predict(bandit_obs, deterministic=True)[0], guided.predict(bandit_obs, deterministic=True)[0]
    )


def test_sampler_bad_input_gets_clear_errors(tmp_path):
    flow = random_flow()
    with pytest.raises(ValueError, match="n_samples"):
        BestOfNPolicy(flow, KnownMaximumCritic(), n_samples=-1)
    sampler = BestOfNPolicy(flow, KnownMaximumCritic(), n_samples=2)
    with pytest.raises(ValueError, match="n_samples"):
        sampler.n_samples = 0
    with pytest.raises(ValueError, match="selection"):
        BestOfNPolicy(flow, KnownMaximumCritic(), selection="max")
    with pytest.raises(ValueError, match="temperature"):
        BestOfNPolicy(flow, KnownMaximumCritic(), selection="softmax", temperature=0.0)
    wrong_actions = KnownMaximumCritic(action_space=spaces.Box(-1.0, 1.0, (3,), np.float32))
    with pytest.raises(ValueError, match="action space"):
        BestOfNPolicy(flow, wrong_actions)
    with pytest.raises(ValueError, match="action space"):
        CriticGuidedPolicy(flow, wrong_actions)
    with pytest.raises(ValueError, match="observation space"):
        BestOfNPolicy(flow, KnownMaximumCritic(observation_space=spaces.Box(-1.0, 1.0, (4,), np.float32)))
    with pytest.raises(TypeError, match="critic"):
        BestOfNPolicy(flow, object())
    for bad in (math.nan, -1.0):
        with pytest.raises(ValueError, match="temperature"):
            sampler.temperature = bad
    with pytest.raises(TypeError, match="guidance_scale"):
        CriticGuidedPolicy(flow, KnownMaximumCritic(), guidance_scale="0.1")
    with pytest.raises(TypeError, match="labels"):
        random_conditional_flow().check_labels(th.tensor([1.7, 0.2]))
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="guidance_scale"):
            CriticGuidedPolicy(flow, KnownMaximumCritic(), guidance_scale=bad)
        with pytest.raises(ValueError, match="guidance_weight"):
            random_conditional_flow().guidance_weight = bad
    (tmp_path / "junk.pt").write_bytes(b"not a file")
    with pytest.raises(ValueError, match=r"junk\.pt"):
        BestOfNPolicy.load(tmp_path / "junk.pt")


# -------------------------------------------------------------------------------------------- critic-gradient guidance


def test_guidance_at_zero_is_the_base_exactly_and_moves_actions_toward_the_maximum():
    flow = random_flow()
    guided = CriticGuidedPolicy(flow, KnownMaximumCritic(), guidance_scale=0.0)
    obs = observations(32)
    assert th.equal(guided._predict(obs, deterministic=True), flow.sample(obs, deterministic=True))
    distances = []
    for scale in (0.0, 0.05, 0.2):
        guided.guidance_scale = scale
        th.manual_seed(0)  # the same initial noises at every scale
        distances.append((guided._predict(obs) - PEAK).pow(2).sum(-1).mean().item())
    assert distances[0] > distances[1] > distances[2]


def test_guidance_does_not_clip_the_estimate_before_the_critic():
    # A flow whose clean-action estimate lies outside the box: clipping it before Q would give a zero gradient.
    flow = random_flow()
    with th.no_grad():
        flow.velocity_net.trunk[-1].bias.fill_(5.0)
    guided = CriticGuidedPolicy(flow, KnownMaximumCritic(), guidance_scale=0.1)
    unclipped = guided.flow.integrate(observations(4), deterministic=True).actions
    modifier = critic_gradient_guidance(lambda actions: guided.score(observations(4), actions), 0.1)
    steered = guided.flow.integrate(observations(4), deterministic=True, velocity_modifier=modifier).actions
    assert (steered - unclipped).abs().max() > 0.1


def test_return_head_trained_by_flow_bc_guides_toward_higher_returns(tmp_path):
    model = FlowBC(ReturnHeadFlowPolicy, BanditEnv(), bandit_dataset(), batch_size=128, learning_rate=3e-3, seed=0,
                   policy_kwargs={"net_arch": [32, 32], "n_flow_steps": 4})  # fmt: skip
    model.learn(600)
    obs = np.zeros((400, 1), np.float32)
    head = model.policy.q_values(th.zeros(3, 1), th.tensor([[-0.6], [0.0], [0.6]]))[0]
    assert head[2] > head[1] > head[0]  # returns-to-go of one-step episodes are the rewards: best at 0.6
    th.manual_seed(0)
    plain = model.predict(obs)[0]
    model.policy.guidance_scale = 0.3
    th.manual_seed(0)
    guided = model.predict(obs)[0]
    assert np.mean(np.abs(guided - BEST_ACTION)) < 0.75 * np.mean(np.abs(plain - BEST_ACTION))
    model.save(tmp_path / "bc")
    loaded = FlowBC.load(tmp_path / "bc", policy_kwargs={"net_arch": [32, 32], "n_flow_steps": 4})
    assert loaded.policy.guidance_scale == 0.3
    # The head is trained on standardized returns and answers in return units (the statistics are saved with it).
    assert loaded.policy.return_std.item() == pytest.approx(float(bandit_dataset().returns_to_go(0.99).std(ddof=1)), rel=1e-4)
    th.testing.assert_close(
        loaded.policy.q_values(th.zeros(3, 1), th.zeros(3, 1)), model.policy.q_values(th.zeros(3, 1), th.zeros(3, 1))
    )


def test_returns_to_go_restart_at_each_episode():
    demos = bandit_dataset(4)
    demos.episode_starts[:] = [True, False, False, True]
    demos.rewards[:] = [1.0, 2.0, 3.0, 4.0]
    np.testing.assert_allclose(demos.returns_to_go(0.5), [1 + 0.5 * (2 + 0.5 * 3), 2 + 0.5 * 3, 3, 4])


# ---------------------------------------------------------------------------------------------- conditioning (CFGRL)


def test_guidance_weight_zero_is_the_unconditional_flow_exactly():
    policy = random_conditional_flow()
    obs, noise = observations(6), th.randn(6, 2)
    policy.guidance_weight = 0.0
    features = policy.extract_features(obs, policy.features_extractor)
    null_field = ConditionedVelocity(policy.velocity_net, policy.labelled_conditioning(features, NULL_LABEL))
    expected = integrate(null_field, noise, policy.n_flow_steps).actions.clamp(-1, 1)
    assert th.equal(policy.sample(obs, noise=noise), expected)
    # The plain FlowPolicy that folds the null label into its bias is the same flow.
    th.testing.assert_close(policy.unconditional_flow().sample(obs, noise=noise), expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="unconditional_flow"):
        load_flow_policy(policy)


def test_guided_velocity_combines_both_branches_in_one_call():
    policy = random_conditional_flow()
    obs, x, t = observations(4), th.randn(4, 2), th.tensor(0.3)
    features = policy.extract_features(obs, policy.features_extractor)
    null = ConditionedVelocity(policy.velocity_net, policy.labelled_conditioning(features, NULL_LABEL))(x, t)
    optimal = ConditionedVelocity(policy.velocity_net, policy.labelled_conditioning(features, 2))(x, t)
    field = policy.velocity_field_from_features(features, guidance_weight=2.5)
    th.testing.assert_close(field(x, t), null + 2.5 * (optimal - null))
    calls = []
    policy.velocity_net.trunk.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    policy.sample(obs, guidance_weight=2.5)
    assert calls == [8] * policy.n_flow_steps  # both branches of the 4 rows, batched: one call per step


def test_guidance_weight_is_saved_and_restored(tmp_path):
    policy = random_conditional_flow()
    policy.guidance_weight = 3.0
    policy.save(tmp_path / "conditional.pt")
    loaded = ConditionalFlowPolicy.load(tmp_path / "conditional.pt")
    assert loaded.guidance_weight == 3.0
    obs, noise = observations(3), th.randn(3, 2)
    th.testing.assert_close(loaded.sample(obs, noise=noise), policy.sample(obs, noise=noise))


# ------------------------------------------------------------------------------------------------- IQL, IFQL and CFGRL

TINY_BANDIT = dict(batch_size=64, learning_rate=3e-3, n_flow_steps=4, seed=0,
                   policy_kwargs={"net_arch": [32, 32], "critic_net_arch": [32, 32]})  # fmt: skip


def test_expectile_loss_matches_a_hand_computed_value():
    differences = th.tensor([2.0, -1.0, 0.5])
    # tau weighs positive differences, 1 - tau negative ones: 0.9*4, 0.1*1, 0.9*0.25
    th.testing.assert_close(expectile_loss(differences, 0.9), th.tensor([3.6, 0.1, 0.225]))
    model = IFQL("MlpPolicy", BanditEnv(), dataset=bandit_dataset(), expectile=0.7, **TINY_BANDIT)
    data = model.replay_buffer.sample(16)
    with th.no_grad():
        target_q = model.policy.q_values(data.observations, data.actions, target=True).min(dim=0).values
        differences = target_q - model.policy.values(data.observations)
        expected = (th.where(differences >= 0, 0.7, 0.3) * differences**2).mean()
        th.testing.assert_close(model.value_loss(data), expected)


def test_ifql_picks_the_best_action_that_the_data_rarely_holds(tmp_path):
    model = IFQL("MlpPolicy", BanditEnv(), dataset=bandit_dataset(), n_samples=32, **TINY_BANDIT)
    model.learn_offline(600)
    obs = np.zeros((300, 1), np.float32)
    best_of_32 = model.predict(obs)[0]
    model.policy.n_samples = 1  # the BC flow alone
    flow_only = model.predict(obs)[0]
    distance = {"best_of_32": np.abs(best_of_32 - BEST_ACTION).mean(), "flow": np.abs(flow_only - BEST_ACTION).mean()}
    assert distance["best_of_32"] < 0.4 * distance["flow"]
    assert np.mean(best_of_32 > 0) > 0.75  # the rare good mode, found by the critic among 32 flow samples
    assert np.mean(flow_only < 0) > 0.6  # the flow imitates the data: mostly the worse mode
    # The knob is saved: the loaded model acts as the BC flow until it is changed back.
    model.save(tmp_path / "ifql")
    loaded = IFQL.load(tmp_path / "ifql", policy_kwargs=TINY_BANDIT["policy_kwargs"])
    assert loaded.policy.n_samples == 1
    loaded.policy.n_samples = 32
    assert np.abs(loaded.predict(obs)[0] - BEST_ACTION).mean() < 0.5 * distance["flow"]


def test_cfgrl_guidance_weight_moves_from_cloning_to_the_optimal_actions(tmp_path):
    model = CFGRL("MlpPolicy", BanditEnv(), dataset=bandit_dataset(), n_flow_steps=4, **{
        key: value for key, value in TINY_BANDIT.items() if key != "n_flow_steps"})  # fmt: skip
    model.learn_offline(400)
    obs = np.zeros((300, 1), np.float32)
    near_best = {}
    for weight in (0.0, 1.0):
        model.policy.guidance_weight = weight
        near_best[weight] = np.mean(np.abs(model.predict(obs)[0] - BEST_ACTION) < 0.15)
    assert near_best[0.0] < 0.4 < 0.8 < near_best[1.0]  # w = 0 clones the data (mostly the worse mode)
    model.policy.guidance_weight, model.policy.n_samples = 3.0, 2  # knobs set at test time, not the defaults
    model.save(tmp_path / "cfgrl")
    loaded = CFGRL.load(tmp_path / "cfgrl", policy_kwargs=TINY_BANDIT["policy_kwargs"])  # SB3 compares policy_kwargs
    assert (loaded.policy.guidance_weight, loaded.policy.n_samples) == (3.0, 2)
    assert loaded.policy.bc_policy.guidance_weight == 3.0


def test_in_sample_critic_bootstraps_through_truncations_but_not_terminations():
    model = IFQL("MlpPolicy", BanditEnv(), dataset=bandit_dataset(), gamma=0.5, **TINY_BANDIT)
    data = model.replay_buffer.sample(8)
    dones = th.tensor([[1.0], [0.0]] * 4)
    data = data._replace(dones=dones, rewards=th.ones(8, 1))
    with th.no_grad():
        next_values = model.policy.values(data.next_observations)
        targets = model.bootstrapped_targets(data, next_values)
    th.testing.assert_close(targets, 1.0 + 0.5 * (1.0 - dones.flatten()) * next_values)


def test_ifql_and_cfgrl_bad_options_get_clear_errors():
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="expectile"):
            IFQL("MlpPolicy", BanditEnv(), expectile=bad, **TINY_BANDIT)
    with pytest.raises(ValueError, match="n_samples"):
        IFQL("MlpPolicy", BanditEnv(), n_samples=0, **TINY_BANDIT)
    with pytest.raises(ValueError, match="guidance_weight"):
        CFGRL("MlpPolicy", BanditEnv(), guidance_weight=math.inf, **TINY_BANDIT)
    with pytest.raises(ValueError, match="label_dropout"):
        CFGRL("MlpPolicy", BanditEnv(), label_dropout=1.0, **TINY_BANDIT)
    with pytest.raises(TypeError, match="expectile"):
        IFQL("MlpPolicy", BanditEnv(), expectile="high", **TINY_BANDIT)
    with pytest.raises(ValueError, match="given both"):
        IFQL("MlpPolicy", BanditEnv(), n_samples=8, **{**TINY_BANDIT, "policy_kwargs": {"n_samples": 4}})
    with pytest.raises(ValueError, match="return_gamma"):
        FlowBC(ReturnHeadFlowPolicy, BanditEnv(), return_gamma=1.5)


def test_cfgrl_with_a_monte_carlo_advantage_learns_offline_only(tmp_path):
    model = CFGRL("MlpPolicy", BanditEnv(), dataset=bandit_dataset(), advantage="monte_carlo", n_flow_steps=4, **{
        key: value for key, value in TINY_BANDIT.items() if key != "n_flow_steps"})  # fmt: skip
    model.learn_offline(400)
    obs = np.zeros((300, 1), np.float32)
    rewards = {}
    for weight in (0.0, 1.0, 3.0):
        model.policy.guidance_weight = weight
        th.manual_seed(0)
        rewards[weight] = float(np.mean(1.0 - (model.predict(obs)[0] - BEST_ACTION) ** 2))
    # V regresses the returns (a mean baseline): "optimal" is every action better than the data's average, and guidance
    # toward it raises the reward step by step.
    assert rewards[0.0] + 0.3 < rewards[1.0] and rewards[1.0] + 0.3 < rewards[3.0]
    with pytest.raises(ValueError, match="offline only"):
        model.learn(10)
    model.save(tmp_path / "recap")
    loaded = CFGRL.load(tmp_path / "recap", dataset=bandit_dataset())  # the returns come back with the dataset
    assert loaded.advantage == "monte_carlo" and len(loaded._offline_returns) == loaded.replay_buffer.n_offline
    with pytest.raises(ValueError, match="advantage"):
        CFGRL("MlpPolicy", BanditEnv(), advantage="td", **TINY_BANDIT)
