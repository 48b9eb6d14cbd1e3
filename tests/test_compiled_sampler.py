"""The opt-in compiled sampler (issue 16): the same results as the eager integration, weights seen, never pickled."""

import copy
import pickle
import warnings

import gymnasium as gym
import pytest
import torch as th
from stable_baselines3.common.envs import IdentityEnvBox

import sb3_flow.policies.flow_policy as flow_policy_module
from sb3_flow import ReinFlow
from sb3_flow.policies.flow_policy import FlowPolicy
from tests.test_reinflow import SMALL, brute_force_chain_log_prob, collect_one_rollout

# "aot_eager" traces and compiles the graph the same way without generating code (seconds, not tens of seconds);
# one test below runs inductor itself.
TRACE_ONLY = "aot_eager"


def make_policy(method: str = "euler", net_arch=(32, 32)) -> FlowPolicy:
    env = gym.make("Pendulum-v1")
    th.manual_seed(0)
    policy = FlowPolicy(
        env.observation_space, env.action_space, lambda _: 1e-3, net_arch=list(net_arch), integration_method=method
    )
    policy.set_training_mode(False)
    return policy


@pytest.fixture
def no_eager_integration(monkeypatch):
    """Makes the policy's eager path fail, so that a result proves the compiled graph produced it."""

    def eager_integrate(*args, **kwargs):
        raise AssertionError("integrated eagerly")

    monkeypatch.setattr(flow_policy_module, "integrate", eager_integrate)


def eager_and_compiled(policy: FlowPolicy, call, backend: str = TRACE_ONLY):
    """``call(policy)`` with the eager sampler, then compiled (first call compiles, second reuses the graph)."""
    with th.no_grad():
        eager = call(policy.eager_sampler())
        policy.compile_sampler(backend=backend)
        first = call(policy)
        again = call(policy)
    assert policy.compiled_integrator.n_graphs == 1
    return eager, first, again


def assert_same_sample(eager, compiled, atol=0.0):
    for name in ("actions", "chain", "step_log_probs"):
        expected, got = getattr(eager, name), getattr(compiled, name)
        assert (expected is None) == (got is None), name
        if expected is not None:
            th.testing.assert_close(got, expected, atol=atol, rtol=0.0 if atol == 0 else 1e-5)


@pytest.mark.parametrize("method", ["euler", "midpoint"])
def test_compiled_equals_eager_with_noise_hook_and_velocity_modifier(method):
    policy = make_policy(method)
    obs, noise = th.randn(5, 3), th.randn(5, 1)
    step_noises, stds = th.randn(10, 5, 1), th.rand(10, 5, 1) + 0.05

    calls = {
        "deterministic": lambda p: p.integrate(obs, deterministic=True, return_chain=True),
        "given noise": lambda p: p.integrate(obs, noise=noise),
        # A new closure over new tensors per call, as ReinFlow builds one per rollout step.
        "noise hook": lambda p: p.integrate(
            obs, noise=noise, noise_std_fn=(lambda x, t, k: stds.clone()[k]), step_noises=step_noises
        ),
        "modifier": lambda p: p.integrate(obs, noise=noise, velocity_modifier=lambda x, t, v: 0.5 * v + t - x),
    }
    for name, call in calls.items():
        eager, first, again = eager_and_compiled(policy, call)
        assert_same_sample(eager, first)
        assert_same_sample(eager, again)
        assert name != "noise hook" or first.step_log_probs is not None


def test_the_compiled_graph_is_what_runs(no_eager_integration):
    policy = make_policy().compile_sampler(backend=TRACE_ONLY)
    with th.no_grad():
        actions = policy.sample(th.randn(2, 3), deterministic=True)
    assert actions.shape == (2, 1) and policy.compiled_integrator.n_graphs == 1
    policy.eager_sampler()
    with pytest.raises(AssertionError, match="integrated eagerly"):
        policy.sample(th.randn(2, 3), deterministic=True)


def test_inductor_graph_equals_eager_to_float_tolerance():
    policy = make_policy(net_arch=(64, 64))
    obs, step_noises, stds = th.randn(3, 3), th.randn(10, 3, 1), th.full((10, 1, 1), 0.1)

    def call(p):
        return p.integrate(obs, deterministic=True, noise_std_fn=lambda x, t, k: stds[k], step_noises=step_noises)

    eager, first, again = eager_and_compiled(policy, call, backend="inductor")
    if policy.compiled_integrator.disabled_reason is not None:
        pytest.skip(f"inductor unavailable here: {policy.compiled_integrator.disabled_reason}")
    assert_same_sample(eager, first, atol=1e-5)
    assert_same_sample(eager, again, atol=1e-5)
    assert policy.compiled_integrator.compile_seconds > 0


def test_weight_updates_and_a_new_k_are_seen():
    policy = make_policy().compile_sampler(backend=TRACE_ONLY)
    obs = th.randn(4, 3)
    with th.no_grad():
        before = policy.sample(obs, deterministic=True)
    # An optimizer step, as training between rollouts does.
    loss = policy.cfm_loss(obs, th.rand(4, 1) * 2 - 1, th.rand(4, 2), th.randn(4, 2, 1)).mean()
    policy.optimizer.zero_grad()
    loss.backward()
    policy.optimizer.step()
    with th.no_grad():
        after_step = policy.sample(obs, deterministic=True)
        reference = copy.deepcopy(policy).eager_sampler()
        th.testing.assert_close(after_step, reference.sample(obs, deterministic=True), atol=0.0, rtol=0.0)
        assert not th.equal(before, after_step)
        # load_state_dict copies into the same parameters: seen too.
        policy.load_state_dict(make_policy().state_dict())
        th.testing.assert_close(policy.sample(obs, deterministic=True), before, atol=0.0, rtol=0.0)
        few_steps = policy.sample(obs, deterministic=True, n_steps=3)
        reference.load_state_dict(policy.state_dict())
        eager_few_steps = reference.sample(obs, deterministic=True, n_steps=3)
    th.testing.assert_close(few_steps, eager_few_steps, atol=0.0, rtol=0.0)
    assert policy.compiled_integrator.n_graphs == 2  # K = 10 and K = 3


def test_autograd_runs_eagerly():
    policy = make_policy().compile_sampler(backend=TRACE_ONLY)
    actions = policy.integrate(th.randn(2, 3), deterministic=True).actions
    actions.sum().backward()
    assert policy.velocity_net.action_projection.weight.grad is not None
    assert policy.compiled_integrator.n_graphs == 0


def test_copies_pickles_and_saves_hold_the_choice_not_the_graphs(tmp_path):
    policy = make_policy().compile_sampler(backend=TRACE_ONLY)
    obs = th.randn(2, 3)
    with th.no_grad():
        expected = policy.sample(obs, deterministic=True)
    for duplicate in (copy.deepcopy(policy), pickle.loads(pickle.dumps(policy))):
        assert duplicate.compiled_integrator.backend == TRACE_ONLY and duplicate.compiled_integrator.n_graphs == 0
        with th.no_grad():
            th.testing.assert_close(duplicate.sample(obs, deterministic=True), expected, atol=0.0, rtol=0.0)
        assert duplicate.compiled_integrator.n_graphs == 1
    policy.save(tmp_path / "policy.pt")
    loaded = FlowPolicy.load(tmp_path / "policy.pt")
    loaded.set_training_mode(False)
    assert loaded.compiled_integrator is None  # a saved file loads eager
    with th.no_grad():
        th.testing.assert_close(loaded.sample(obs, deterministic=True), expected, atol=0.0, rtol=0.0)


def test_a_failing_compiler_warns_once_and_samples_eagerly(monkeypatch):
    policy = make_policy()
    obs = th.randn(2, 3)
    with th.no_grad():
        expected = policy.sample(obs, deterministic=True)

    def broken_compile(*args, **kwargs):
        def compiled(*call_args, **call_kwargs):
            raise RuntimeError("no C++ compiler found\nlong details")

        return compiled

    monkeypatch.setattr(th, "compile", broken_compile)
    policy.compile_sampler()
    expected_warning = r"compiled sampler unavailable \(RuntimeError: no C\+\+ compiler found\)"
    with pytest.warns(UserWarning, match=expected_warning), th.no_grad():
        got = policy.sample(obs, deterministic=True)
    th.testing.assert_close(got, expected, atol=0.0, rtol=0.0)
    assert policy.compiled_integrator.disabled_reason is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        with th.no_grad():
            policy.sample(obs, deterministic=True)


def test_an_untraceable_hook_runs_eagerly_and_the_others_stay_compiled():
    policy = make_policy().compile_sampler(backend=TRACE_ONLY)
    obs, noise = th.randn(2, 3), th.randn(2, 1)

    def untraceable(x, t, v):
        th._dynamo.graph_break()  # stands for any code dynamo cannot put in one graph
        return 0.5 * v

    with th.no_grad():
        expected = policy.eager_sampler().sample(obs, noise=noise, velocity_modifier=untraceable)
        policy.compile_sampler(backend=TRACE_ONLY)
        with pytest.warns(UserWarning, match="compiled sampler unavailable"):
            got = policy.sample(obs, noise=noise, velocity_modifier=untraceable)
        th.testing.assert_close(got, expected, atol=0.0, rtol=0.0)
        assert policy.compiled_integrator.disabled_reason is None
        policy.sample(obs, noise=noise)
    assert policy.compiled_integrator.n_graphs == 1


def test_max_graphs_then_eager_with_a_warning():
    policy = make_policy().compile_sampler(backend=TRACE_ONLY, max_graphs=1)
    with th.no_grad():
        policy.sample(th.randn(1, 3))
        with pytest.warns(UserWarning, match="max_graphs"):
            policy.sample(th.randn(3, 3))
    assert policy.compiled_integrator.n_graphs == 1
    with pytest.raises(ValueError, match="max_graphs"):
        make_policy().compile_sampler(max_graphs=0)


def test_reinflow_rollout_with_compiled_sampler_keeps_one_graph_and_exact_log_probs():
    env = IdentityEnvBox(ep_length=10)
    model = ReinFlow("MlpPolicy", env, n_steps=16, batch_size=16, n_epochs=1, policy_kwargs=SMALL, seed=0)
    model.policy.compile_sampler(backend=TRACE_ONLY)
    collect_one_rollout(model)
    # One graph for the whole rollout although every step builds a new noise hook over new stds.
    assert model.policy.compiled_integrator.n_graphs == 1
    # The stored chains are draws of the policy's own Gaussian transitions: standardized residuals are N(0, 1).
    buffer, policy = model.rollout_buffer, model.policy
    chains = th.as_tensor(buffer.chains[:, 0]).transpose(0, 1)  # (K + 1, n_steps, action_dim)
    observations = th.as_tensor(buffer.observations[:, 0])
    n_steps = chains.shape[0] - 1
    with th.no_grad():
        features = policy.extract_features(observations, policy.features_extractor)
        stds = policy.noise_stds(features, n_steps).expand(n_steps, *chains.shape[1:])
        residuals = []
        for k in range(n_steps):
            t = th.full((chains.shape[1],), k / n_steps)
            mean = chains[k] + policy.velocity_net(features, chains[k], t) / n_steps
            residuals.append((chains[k + 1] - mean) / stds[k])
    residuals = th.stack(residuals).flatten()
    assert abs(residuals.mean().item()) < 4.0 / residuals.numel() ** 0.5
    assert 0.6 < residuals.var().item() < 1.5
    # and their log-probabilities are still the exact chain likelihood
    with th.no_grad():
        log_probs, _ = policy.evaluate_chains(features, chains)
    th.testing.assert_close(log_probs, brute_force_chain_log_prob(policy, observations, chains, True), atol=1e-5, rtol=1e-5)


def test_steering_wrappers_sample_their_base_through_the_compiled_graph(no_eager_integration):
    from sb3_flow.wrappers import NoiseActionWrapper, ResidualActionWrapper

    base = make_policy()
    for wrapper in (NoiseActionWrapper(gym.make("Pendulum-v1"), base), ResidualActionWrapper(gym.make("Pendulum-v1"), base)):
        assert wrapper.base_policy is not base  # the wrapper's own frozen copy
        wrapper.base_policy.compile_sampler(backend=TRACE_ONLY)
        wrapper.reset(seed=0)
        wrapper.step(wrapper.action_space.sample())
        assert wrapper.base_policy.compiled_integrator.n_graphs >= 1
