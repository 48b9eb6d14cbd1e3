"""RL-Zoo entry point: registration, train, enjoy, and tune with two workers sharing one journal storage."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("rl_zoo3")

from sb3_flow.fpo import FlowPPO  # noqa: E402
from sb3_flow.reinflow import ReinFlow  # noqa: E402
from sb3_flow.zoo import config_dir, default_config_args, main, register  # noqa: E402
from sb3_flow.zoo.samplers import sample_flow_ppo_params, sample_reinflow_params  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Small runs: the YAML's 8 environments become 2, rollouts and minibatches shrink.
SMALL = ["--hyperparams", "n_envs:2", "n_steps:64", "batch_size:64", "n_epochs:2"]


def test_register_adds_algorithms_and_samplers():
    from rl_zoo3 import ALGOS
    from rl_zoo3.hyperparams_opt import HYPERPARAMS_CONVERTER, HYPERPARAMS_SAMPLER

    register()
    assert ALGOS["flow_ppo"] is FlowPPO and ALGOS["reinflow"] is ReinFlow
    for name in ("flow_ppo", "reinflow", "dsrl_na"):
        assert name in HYPERPARAMS_SAMPLER and name in HYPERPARAMS_CONVERTER
    assert default_config_args(["--algo", "flow_ppo", "--env", "Pendulum-v1"]) == [
        "--conf-file",
        str(config_dir() / "flow_ppo.yml"),
    ]
    assert default_config_args(["--algo", "flow_ppo", "--conf-file", "mine.yml"]) == []
    assert default_config_args(["--algo", "ppo"]) == []


def test_sampled_hyperparameters_build_a_model():
    trial = optuna.trial.FixedTrial(
        {
            "batch_size_pow": 5,
            "n_steps_pow": 6,
            "one_minus_gamma": 0.01,
            "one_minus_gae_lambda": 0.05,
            "learning_rate": 1e-3,
            "clip_range": 0.05,
            "n_epochs": 5,
            "n_mc_samples": 4,
            "ratio_mode": "per_sample",
            "cfm_loss_weighting": "noise",
            "n_flow_steps": 4,
            "net_arch": "small",
            "activation_fn": "relu",
        }
    )
    params = sample_flow_ppo_params(trial, 1, 1, {})
    assert params["batch_size"] == 32 and params["n_steps"] == 64 and abs(params["gamma"] - 0.99) < 1e-9
    model = FlowPPO("MlpPolicy", "Pendulum-v1", **params)
    assert model.policy.n_flow_steps == 4 and model.n_mc_samples == 4 and model.policy.net_arch == [64, 64]
    assert model.cfm_loss_weighting == "noise"


def test_sampled_reinflow_hyperparameters_build_a_model():
    trial = optuna.trial.FixedTrial(
        {
            "batch_size_pow": 5,
            "n_steps_pow": 6,
            "one_minus_gamma": 0.01,
            "one_minus_gae_lambda": 0.05,
            "learning_rate": 1e-4,
            "clip_range": 0.01,
            "n_epochs": 5,
            "ent_coef": 0.03,
            "min_std": 0.05,
            "max_std_over_min": 2.0,
            "n_flow_steps": 2,
            "net_arch": "small",
            "activation_fn": "tanh",
        }
    )
    params = sample_reinflow_params(trial, 1, 1, {})
    model = ReinFlow("MlpPolicy", "Pendulum-v1", **params)
    assert model.policy.n_flow_steps == 2 and model.policy.max_std == pytest.approx(0.1) and model.policy.min_std == 0.05


def test_reinflow_fine_tunes_the_yaml_base_policy_then_enjoy(tmp_path, monkeypatch):
    from sb3_flow import FlowBC
    from sb3_flow.common.demonstrations import collect_demonstrations
    from sb3_flow.common.experts import pendulum_swing_up

    monkeypatch.chdir(tmp_path)
    demos = collect_demonstrations("Pendulum-v1", pendulum_swing_up, 1, seed=0)
    base = FlowBC("MlpPolicy", "Pendulum-v1", demos, policy_kwargs={"net_arch": [8]}).learn(5)
    base.save("flow_bc.zip")
    main(["train", "--algo", "reinflow", "--env", "Pendulum-v1", "-n", "256", "--seed", "0", "-f", "logs", *SMALL])
    model = ReinFlow.load(tmp_path / "logs" / "reinflow" / "Pendulum-v1_1" / "Pendulum-v1.zip")
    # The YAML's base policy gave the actor its architecture; the YAML's K = 4 replaced the base's 10.
    assert model.policy.net_arch == [8] and model.policy.n_flow_steps == 4 and model.clip_range(1.0) == 0.01
    main(["enjoy", "--algo", "reinflow", "--env", "Pendulum-v1", "-f", "logs", "--no-render", "-n", "20"])


def test_train_then_enjoy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["train", "--algo", "flow_ppo", "--env", "Pendulum-v1", "-n", "256", "--seed", "0", "-f", "logs", *SMALL])
    saved = tmp_path / "logs" / "flow_ppo" / "Pendulum-v1_1" / "Pendulum-v1.zip"
    assert saved.is_file()
    model = FlowPPO.load(saved)
    assert model.num_timesteps == 256 and model.clip_range(1.0) == 0.05  # the YAML's clip range
    main(["enjoy", "--algo", "flow_ppo", "--env", "Pendulum-v1", "-f", "logs", "--no-render", "-n", "20"])


def test_tune_with_two_workers_sharing_a_journal(tmp_path):
    storage = tmp_path / "study.log"
    command = [
        sys.executable, "-m", "sb3_flow.zoo", "tune", "--algo", "flow_ppo", "--env", "Pendulum-v1", "-n", "512",
        "--n-trials", "2", "--storage", str(storage), "--study-name", "flow_ppo_test", "--sampler", "random",
        "--pruner", "none", "--n-evaluations", "1", "--eval-episodes", "1", "-f", str(tmp_path / "logs"),
        "--hyperparams", "n_envs:1",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    workers = [
        subprocess.Popen(
            [*command, "--seed", str(seed)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for seed in (1, 2)
    ]
    outputs = [worker.communicate(timeout=400)[0].decode() for worker in workers]
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, output[-3000:]
    study = optuna.load_study(
        study_name="flow_ppo_test",
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(storage))),
    )
    complete = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) >= 4, [(trial.number, trial.state) for trial in study.trials]


@pytest.mark.parametrize("config", ["sac_dsrl.yml", "sac_residual.yml"])
def test_wrappers_from_a_yaml_env_wrapper_entry(tmp_path, monkeypatch, config):
    from sb3_flow import FlowBC
    from sb3_flow.common.demonstrations import collect_demonstrations
    from sb3_flow.common.experts import pendulum_swing_up

    monkeypatch.chdir(tmp_path)
    demos = collect_demonstrations("Pendulum-v1", pendulum_swing_up, 1, seed=0)
    FlowBC("MlpPolicy", "Pendulum-v1", demos, policy_kwargs={"net_arch": [8]}).learn(5).save("flow_bc.zip")
    main(
        [
            "train", "--algo", "sac", "--env", "Pendulum-v1", "--conf-file", str(config_dir() / config), "-n", "120",
            "--seed", "0", "-f", "logs", "--hyperparams", "learning_starts:500",
        ]
    )  # fmt: skip
    from stable_baselines3 import SAC

    model = SAC.load(tmp_path / "logs" / "sac" / "Pendulum-v1_1" / "Pendulum-v1.zip")
    # The YAML's ZeroInitActorCallback zeroed the mean head (no gradient step before learning_starts).
    assert not model.actor.mu.weight.any() and not model.actor.mu.bias.any()
    # The agent acted in the wrapper's [-1, 1] space, not Pendulum's [-2, 2] torque box.
    assert float(model.action_space.high[0]) == 1.0
    expected_obs_dim = 4 if config == "sac_residual.yml" else 3
    assert model.observation_space.shape == (expected_obs_dim,)


def test_dsrl_na_train_then_enjoy_reattaches_the_base_from_its_path(tmp_path, monkeypatch):
    from sb3_flow import FlowBC
    from sb3_flow.common.demonstrations import collect_demonstrations
    from sb3_flow.common.experts import pendulum_swing_up
    from sb3_flow.dsrl import DSRLNA

    monkeypatch.chdir(tmp_path)
    demos = collect_demonstrations("Pendulum-v1", pendulum_swing_up, 1, seed=0)
    FlowBC("MlpPolicy", "Pendulum-v1", demos, policy_kwargs={"net_arch": [8]}).learn(5).save("flow_bc.zip")
    main(
        [
            "train",
            "--algo",
            "dsrl_na",
            "--env",
            "Pendulum-v1",
            "-n",
            "120",
            "-f",
            "logs",
            "--hyperparams",
            "learning_starts:60",
        ]
    )
    saved = tmp_path / "logs" / "dsrl_na" / "Pendulum-v1_1" / "Pendulum-v1.zip"
    model = DSRLNA.load(saved)  # no base_policy argument: re-attached from the recorded path
    assert model.base_policy_path == str(tmp_path / "flow_bc.zip") and model.num_timesteps == 120
    main(["enjoy", "--algo", "dsrl_na", "--env", "Pendulum-v1", "-f", "logs", "--no-render", "-n", "20"])
