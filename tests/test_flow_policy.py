"""FlowPolicy: sampling, explicit noise, predict, the time-term cache, save/load, bad input."""

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces

from sb3_flow.common.flow import integrate
from sb3_flow.policies import CnnPolicy, FlowPolicy, MultiInputPolicy, load_flow_policy
from tests.helpers import DictObsEnv


def make_policy(n_flow_steps: int = 10, **kwargs) -> FlowPolicy:
    env = gym.make("Pendulum-v1")
    return FlowPolicy(env.observation_space, env.action_space, lambda _: 1e-3, n_flow_steps=n_flow_steps, **kwargs)


def test_sample_shapes_clipping_and_deterministic_zero_noise():
    th.manual_seed(0)
    policy = make_policy(net_arch=[32, 32])
    obs = th.randn(7, 3)
    with th.no_grad():
        actions = policy.sample(obs)
        assert actions.shape == (7, 1) and actions.abs().max() <= 1.0
        deterministic = policy.sample(obs, deterministic=True)
        assert th.equal(deterministic, policy.sample(obs, noise=th.zeros(7, 1)))
        assert th.equal(deterministic, policy.sample(obs, deterministic=True))
        # Explicit noise is what is integrated: the same noise gives the same action, another noise another one.
        noise = th.randn(7, 1)
        assert th.equal(policy.sample(obs, noise=noise), policy.sample(obs, noise=noise))
        assert not th.equal(policy.sample(obs, noise=noise), policy.sample(obs, noise=noise + 1.0))
        # Unclipped integration can leave the box; sample() clips it back.
        big = policy.integrate(obs, noise=th.full((7, 1), 10.0)).actions
        assert big.abs().max() > 1.0
        assert policy.sample(obs, noise=th.full((7, 1), 10.0)).abs().max() <= 1.0


def test_fast_grid_path_equals_the_plain_field_and_cache_follows_weight_updates():
    th.manual_seed(0)
    policy = make_policy(n_flow_steps=5, net_arch=[16, 16])
    obs, noise = th.randn(4, 3), th.randn(4, 1)
    with th.no_grad():
        field = policy.velocity_field(obs)
        plain = integrate(lambda x, t: field(x, t), noise, 5).actions
        fast = policy.integrate(obs, noise=noise).actions
        assert th.allclose(plain, fast, atol=1e-6)
    # An optimizer step changes the time projection: cached time terms must not survive it.
    loss = policy.cfm_loss(obs, th.zeros(4, 1), th.rand(4, 2), th.randn(4, 2, 1)).mean()
    policy.optimizer.zero_grad()
    loss.backward()
    policy.optimizer.step()
    with th.no_grad():
        field = policy.velocity_field(obs)
        plain_after = integrate(lambda x, t: field(x, t), noise, 5).actions
        assert th.allclose(plain_after, policy.integrate(obs, noise=noise).actions, atol=1e-6)
        assert not th.allclose(plain_after, plain)
    # load_state_dict updates weights in place: the cache must see that too.
    other = make_policy(n_flow_steps=5, net_arch=[16, 16])
    other.load_state_dict(policy.state_dict())
    with th.no_grad():
        assert th.allclose(other.sample(obs, noise=noise), policy.sample(obs, noise=noise), atol=1e-6)


def test_device_follows_the_parameters():
    policy = make_policy(net_arch=[8])
    assert policy.device == th.device("cpu")
    policy.to("meta")  # a device move without data: the property must report where the weights went
    assert policy.device == th.device("meta") == next(policy.parameters()).device


def test_observation_features_are_computed_once_per_action():
    policy = make_policy(n_flow_steps=10, net_arch=[16])
    calls = {"features": 0, "observation_projection": 0, "action_projection": 0}
    policy.features_extractor.register_forward_hook(lambda *_: calls.__setitem__("features", calls["features"] + 1))
    policy.velocity_net.observation_projection.register_forward_hook(
        lambda *_: calls.__setitem__("observation_projection", calls["observation_projection"] + 1)
    )
    with th.no_grad():
        policy.sample(th.randn(5, 3))
    assert calls["features"] == 1 and calls["observation_projection"] == 1


def test_gradients_flow_through_sampling_when_enabled():
    policy = make_policy(n_flow_steps=3, net_arch=[16])
    actions = policy.integrate(th.randn(2, 3), noise=th.randn(2, 1)).actions
    actions.sum().backward()
    assert policy.velocity_net.time_projection.weight.grad is not None
    assert policy.velocity_net.time_projection.weight.grad.abs().sum() > 0


def test_predict_single_and_batched_in_env_units():
    th.manual_seed(0)
    policy = make_policy(net_arch=[16])
    single, _ = policy.predict(np.zeros(3, dtype=np.float32), deterministic=True)
    assert single.shape == (1,)
    batch, _ = policy.predict(np.zeros((4, 3), dtype=np.float32), deterministic=True)
    assert batch.shape == (4, 1)
    with th.no_grad():
        normalized = policy.sample(th.zeros(1, 3), deterministic=True).numpy()
    # Pendulum's box is [-2, 2]: predict unscales the normalized action.
    assert np.allclose(single, 2.0 * normalized.reshape(1), atol=1e-6)
    np.testing.assert_allclose(batch, np.repeat(single[None], 4, axis=0), atol=1e-6)


def test_save_load_gives_identical_deterministic_actions(tmp_path):
    policy = make_policy(net_arch=[32, 32], n_flow_steps=4, integration_method="midpoint")
    path = tmp_path / "policy.pt"
    policy.save(str(path))
    loaded = FlowPolicy.load(path)
    obs = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    assert loaded.n_flow_steps == 4 and loaded.integration_method == "midpoint"
    np.testing.assert_array_equal(policy.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])


def test_cnn_and_multi_input_policies_sample():
    image_space = spaces.Box(0, 255, (3, 36, 36), np.uint8)  # channel-first, as SB3 algorithms feed it
    action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    cnn = CnnPolicy(image_space, action_space, lambda _: 1e-3, net_arch=[16], features_extractor_kwargs={"features_dim": 32})
    action, _ = cnn.predict(image_space.sample(), deterministic=True)
    assert action.shape == (2,)
    env = DictObsEnv()
    multi = MultiInputPolicy(env.observation_space, env.action_space, lambda _: 1e-3, net_arch=[16])
    obs, _ = env.reset(seed=0)
    action, _ = multi.predict(obs)
    assert action.shape == (2,) and env.action_space.contains(action)


def test_bad_input_errors(tmp_path):
    box = spaces.Box(-1.0, 1.0, (3,), np.float32)
    with pytest.raises(TypeError, match="Box action space"):
        FlowPolicy(box, spaces.Discrete(3), lambda _: 1e-3)
    with pytest.raises(ValueError, match="finite action bounds"):
        FlowPolicy(box, spaces.Box(-np.inf, np.inf, (1,), np.float32), lambda _: 1e-3)
    for bad_steps in (0, -1):
        with pytest.raises(ValueError, match="n_flow_steps"):
            FlowPolicy(box, box, lambda _: 1e-3, n_flow_steps=bad_steps)
    with pytest.raises(ValueError, match="integration_method"):
        FlowPolicy(box, box, lambda _: 1e-3, integration_method="rk4")
    policy = FlowPolicy(box, box, lambda _: 1e-3, net_arch=[8])
    with pytest.raises(ValueError, match="initial noise must have shape"):
        policy.sample(th.zeros(2, 3), noise=th.zeros(3, 3))
    with pytest.raises(ValueError, match="n_flow_steps"):
        policy.sample(th.zeros(2, 3), n_steps=0)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"this is not a policy")
    with pytest.raises(ValueError, match=r"corrupt\.pt is not a readable policy file"):
        FlowPolicy.load(corrupt)
    with pytest.raises(FileNotFoundError):
        FlowPolicy.load(tmp_path / "missing.pt")


def test_load_flow_policy_accepts_objects_models_and_paths(tmp_path):
    from sb3_flow import FlowBC
    from tests.helpers import BimodalEnv, bimodal_demonstrations

    model = FlowBC("MlpPolicy", BimodalEnv(), bimodal_demonstrations(100), policy_kwargs={"net_arch": [8]})
    assert load_flow_policy(model.policy) is not model.policy  # a copy: see the test below
    assert load_flow_policy(model).state_dict().keys() == model.policy.state_dict().keys()
    model.save(tmp_path / "bc.zip")
    model.policy.save(str(tmp_path / "policy.pt"))
    obs = np.zeros((2, 2), dtype=np.float32)
    expected = model.predict(obs, deterministic=True)[0]
    for source in (tmp_path / "bc.zip", str(tmp_path / "bc"), tmp_path / "policy.pt"):
        loaded = load_flow_policy(source, observation_space=model.observation_space, action_space=model.action_space)
        np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], expected)
    pendulum = gym.make("Pendulum-v1")
    with pytest.raises(ValueError, match="observation space"):
        load_flow_policy(model, observation_space=pendulum.observation_space, action_space=pendulum.action_space)
    with pytest.raises(ValueError, match="action space"):
        load_flow_policy(model, observation_space=model.observation_space, action_space=pendulum.action_space)
    with pytest.raises(TypeError, match="FlowPolicy"):
        load_flow_policy(42)
    with pytest.raises(FileNotFoundError):
        load_flow_policy(tmp_path / "nothing.zip")


def test_predict_and_rollout_steps_run_small_batches_without_onednn(monkeypatch):
    from sb3_flow import FlowPPO, ReinFlow

    seen: list[bool] = []
    original = integrate

    def recording_integrate(*args, **kwargs):
        seen.append(th.backends.mkldnn.enabled)
        return original(*args, **kwargs)

    monkeypatch.setattr("sb3_flow.policies.flow_policy.integrate", recording_integrate)
    policy = make_policy(net_arch=[16], n_flow_steps=3)
    policy.predict(np.zeros(3, dtype=np.float32), deterministic=True)  # one row: native kernels
    policy.predict(np.zeros((64, 3), dtype=np.float32), deterministic=True)  # 64 rows: oneDNN kept
    with policy.inference_kernels(th.zeros(1, 3)):  # autograd recording: nothing changes
        policy.integrate(th.zeros(1, 3))
    assert seen == [False, True, True] and th.backends.mkldnn.enabled
    for algorithm in (FlowPPO, ReinFlow):  # their rollout forward, under no_grad, with 2 environments
        seen.clear()
        model = algorithm("MlpPolicy", "Pendulum-v1", n_steps=4, batch_size=4, n_epochs=1, seed=0,
                          policy_kwargs={"net_arch": [16]})  # fmt: skip
        obs = th.zeros(2, 3)
        with th.no_grad():
            model.policy(obs)
        assert seen == [False] and th.backends.mkldnn.enabled
    # DSRLNA's frozen base acting for one environment
    from sb3_flow import DSRLNA

    seen.clear()
    DSRLNA("MlpPolicy", "Pendulum-v1", base_policy=policy, seed=0).predict(np.zeros(3, dtype=np.float32))
    assert seen == [False] and th.backends.mkldnn.enabled


def test_linear_policy_with_empty_net_arch():
    # SB3's net_arch=[]: no hidden layer, so the velocity is affine in x for fixed observation and time.
    policy = make_policy(n_flow_steps=3, net_arch=[])
    assert not any(isinstance(layer, th.nn.Linear) for layer in policy.velocity_net.trunk)
    features = th.randn(4, 3)
    t = th.full((4,), 0.3)
    x, y = th.randn(4, 1), th.randn(4, 1)
    with th.no_grad():
        v = policy.velocity_net
        assert th.allclose(v(features, x + y, t) - v(features, y, t), v(features, x, t) - v(features, th.zeros(4, 1), t))
        actions, _ = policy.predict(np.zeros((5, 3), dtype=np.float32))
    assert actions.shape == (5, 1)
    with pytest.raises(ValueError, match="net_arch"):
        make_policy(net_arch=[16, 0])


def test_load_flow_policy_returns_a_copy_that_holds_only_the_flow():
    from sb3_flow import FlowPPO

    model = FlowPPO("MlpPolicy", "Pendulum-v1", n_flow_steps=4, seed=0, policy_kwargs={"net_arch": [8], "value_net_arch": [8]})
    user_policy = model.policy
    for source in (model, user_policy):
        copy = load_flow_policy(source)
        # A plain FlowPolicy: the value network stays behind, the flow acts the same.
        assert type(copy) is FlowPolicy and not hasattr(copy, "value_net") and copy.n_flow_steps == 4
        obs = np.zeros((2, 3), dtype=np.float32)
        np.testing.assert_array_equal(copy.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])
        # No shared tensor: freezing or changing the copy leaves the user's policy as it was.
        before = {name: value.clone() for name, value in user_policy.state_dict().items()}
        for parameter in copy.parameters():
            parameter.requires_grad_(False)
            with th.no_grad():
                parameter.add_(1.0)
        assert all(parameter.requires_grad for parameter in user_policy.parameters())
        assert all(th.equal(before[name], value) for name, value in user_policy.state_dict().items())


@pytest.mark.parametrize("damage", ["truncated", "flipped_bytes", "garbage"])
def test_damaged_base_policy_file_is_a_value_error_naming_it(tmp_path, damage):
    from sb3_flow import FlowBC
    from tests.helpers import BimodalEnv, bimodal_demonstrations

    FlowBC("MlpPolicy", BimodalEnv(), bimodal_demonstrations(100), policy_kwargs={"net_arch": [8]}).save(tmp_path / "bc.zip")
    content = (tmp_path / "bc.zip").read_bytes()
    damaged = tmp_path / f"{damage}.zip"
    if damage == "truncated":
        damaged.write_bytes(content[: len(content) // 2])
    elif damage == "flipped_bytes":  # the zip's directory is intact, a member's compressed data is not
        middle = len(content) // 3
        damaged.write_bytes(content[:middle] + bytes(255 - b for b in content[middle : middle + 64]) + content[middle + 64 :])
    else:
        damaged.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match=damage):
        load_flow_policy(damaged)


def test_adam_is_fused_where_torch_has_it_unless_the_user_chose():
    from sb3_flow import FlowPPO
    from sb3_flow.common.utils import fused_adam_available

    env = gym.make("Pendulum-v1")
    policy = FlowPolicy(env.observation_space, env.action_space, lambda _: 1e-3, net_arch=[8])
    assert policy.optimizer.defaults["fused"] is (True if fused_adam_available() else None)
    assert policy.optimizer_kwargs == {}  # the saved constructor arguments stay the user's
    chosen = FlowPolicy(
        env.observation_space, env.action_space, lambda _: 1e-3, net_arch=[8], optimizer_kwargs={"foreach": True}
    )
    assert not chosen.optimizer.defaults["fused"] and chosen.optimizer.defaults["foreach"]
    sgd = FlowPolicy(env.observation_space, env.action_space, lambda _: 1e-3, net_arch=[8], optimizer_class=th.optim.SGD)
    assert isinstance(sgd.optimizer, th.optim.SGD)
    # the critic's own learning rate rebuilds the optimizer: fused too
    model = FlowPPO("MlpPolicy", "Pendulum-v1", critic_learning_rate=1e-4, policy_kwargs={"net_arch": [8]}, seed=0)
    assert model.policy.optimizer.defaults["fused"] is (True if fused_adam_available() else None)
