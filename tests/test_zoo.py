"""RL-Zoo entry point: registration, train, enjoy, the plots and videos, and tune with two workers sharing one journal."""

import configparser
import os
import subprocess
import sys
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("rl_zoo3")

from sb3_flow import registry  # noqa: E402
from sb3_flow.cli import main as sb3_flow_main  # noqa: E402
from sb3_flow.fpo import FlowPPO  # noqa: E402
from sb3_flow.reinflow import ReinFlow  # noqa: E402
from sb3_flow.zoo import COMMANDS, ZOO_ALGORITHMS, config_dir, main, register, with_config_file, zoo_algorithms  # noqa: E402
from sb3_flow.zoo.samplers import (  # noqa: E402
    sample_cfgrl_params,
    sample_flow_ppo_params,
    sample_fql_params,
    sample_ifql_params,
    sample_reinflow_params,
)

REPO = Path(__file__).resolve().parents[1]
# Small runs: the YAML's 8 environments become 2, rollouts and minibatches shrink.
SMALL = ["--hyperparams", "n_envs:2", "n_steps:64", "batch_size:64", "n_epochs:2"]


def test_register_adds_the_registry_algorithms_and_samplers():
    from rl_zoo3 import ALGOS
    from rl_zoo3.hyperparams_opt import HYPERPARAMS_CONVERTER, HYPERPARAMS_SAMPLER

    # One list: the Zoo offers the registry's algorithms that train from an env id (not the BC trainers: they need demos).
    assert ZOO_ALGORITHMS is registry.ZOO_ALGORITHMS
    assert set(ZOO_ALGORITHMS) == {"flow_ppo", "reinflow", "dsrl_na", "fql", "fbrac", "ifql", "cfgrl"}
    # The algorithms that learn from a dataset are all offered, and are the off-policy flow core's subclasses.
    assert set(registry.offline_algorithms()) == {"fql", "fbrac", "ifql", "cfgrl"} <= set(ZOO_ALGORITHMS)
    assert set(ZOO_ALGORITHMS) <= set(registry.SB3_FLOW_ALGORITHMS)
    assert zoo_algorithms() == {name: registry.SB3_FLOW_ALGORITHMS[name] for name in ZOO_ALGORITHMS}
    register()
    assert ALGOS["flow_ppo"] is FlowPPO and ALGOS["reinflow"] is ReinFlow
    for name in ZOO_ALGORITHMS:
        assert ALGOS[name] is registry.all_algorithms()[name]
        assert name in HYPERPARAMS_SAMPLER and name in HYPERPARAMS_CONVERTER


def test_config_files_by_short_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not a clone's root: zoo_configs/ is not here
    packaged = str(config_dir() / "sac_dsrl.yml")
    assert with_config_file(["--algo", "flow_ppo", "--env", "Pendulum-v1"]) == [
        "--algo", "flow_ppo", "--env", "Pendulum-v1", "--conf-file", str(config_dir() / "flow_ppo.yml"),
    ]  # fmt: skip
    assert with_config_file(["--algo", "sac", "--conf-file", "sac_dsrl"]) == ["--algo", "sac", "--conf-file", packaged]
    assert with_config_file(["--conf-file=sac_dsrl.yml"]) == [f"--conf-file={packaged}"]
    assert with_config_file(["-conf", "zoo_configs/sac_dsrl.yml"]) == ["-conf", packaged]  # the docs' clone path
    assert with_config_file(["--algo", "ppo"]) == ["--algo", "ppo"]  # the Zoo's own algorithms keep the Zoo's configs
    (tmp_path / "sac_dsrl.yml").write_text("Pendulum-v1: {}\n")  # the user's own file wins over a packaged name
    assert with_config_file(["--conf-file", "sac_dsrl.yml"]) == ["--conf-file", str(tmp_path / "sac_dsrl.yml")]
    assert with_config_file(["--conf-file", "my_package.hyperparams"]) == ["--conf-file", "my_package.hyperparams"]
    with pytest.raises(FileNotFoundError, match=r"no packaged config of that name.*sac_dsrl"):
        with_config_file(["--conf-file", "missing.yml"])


def test_the_packaged_configs_are_package_data():
    # An installed copy finds its configs next to the code: every YAML there is matched by setup.cfg's package_data.
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    patterns = parser["options.package_data"]["sb3_flow.zoo"].split()
    package = Path(sys.modules["sb3_flow.zoo"].__file__).parent
    assert config_dir().parent == package
    shipped = {path for pattern in patterns for path in package.glob(pattern)}
    expected = {"flow_ppo.yml", "reinflow.yml", "dsrl_na.yml", "sac_dsrl.yml", "fql.yml", "fbrac.yml", "fql_offline.yml"}
    assert expected | {"ifql.yml", "cfgrl.yml"} <= {path.name for path in shipped}
    assert shipped == set(config_dir().glob("*.yml"))


def test_zoo_help_lists_its_commands(capsys):
    assert main(["--help"]) == 0
    printed = capsys.readouterr().out
    for command in ("train", "tune", "enjoy", "record_video", "plot_train", "all_plots", "plot_from_file"):
        assert f"  {command} " in printed and command in COMMANDS
    assert "--max-total-trials" in printed and "sac_dsrl" in printed
    assert main([]) == 2 and main(["push_to_hub"]) == 2
    assert "unknown command 'push_to_hub'" in capsys.readouterr().err


def test_a_missing_base_policy_fails_before_any_env_naming_the_config_and_folder(tmp_path, monkeypatch, capsys):
    from rl_zoo3.exp_manager import ExperimentManager

    def no_env(*args, **kwargs):
        raise AssertionError("an environment was built before the base policy was checked")

    monkeypatch.setattr(ExperimentManager, "create_envs", no_env)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--algo", "reinflow", "--env", "Pendulum-v1", "-n", "64", "-f", "logs"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(config_dir() / "reinflow.yml") in err and f"'flow_bc.zip' not found in {tmp_path}" in err
    assert not (tmp_path / "logs").exists()


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


def test_train_then_enjoy_record_video_and_plot_train(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    monkeypatch.chdir(tmp_path)
    # One environment of 256 steps: one finished Pendulum episode for the training-curve plot.
    small = [*SMALL[:1], "n_envs:1", *SMALL[2:]]
    assert main(["train", "--algo", "flow_ppo", "--env", "Pendulum-v1", "-n", "256", "--seed", "0", "-f", "logs", *small]) == 0
    run = tmp_path / "logs" / "flow_ppo" / "Pendulum-v1_1"
    model = FlowPPO.load(run / "Pendulum-v1.zip")
    assert model.num_timesteps == 256 and model.clip_range(1.0) == 0.05  # the YAML's clip range
    assert main(["enjoy", "--algo", "flow_ppo", "--env", "Pendulum-v1", "-f", "logs", "--no-render", "-n", "20"]) == 0
    assert main(["record_video", "--algo", "flow_ppo", "--env", "Pendulum-v1", "-f", "logs", "-n", "5"]) == 0
    (video,) = (run / "videos").glob("*.mp4")
    assert video.stat().st_size > 0
    plt.close("all")
    assert main(["plot_train", "-a", "flow_ppo", "-e", "Pendulum-v1", "-f", "logs", "-w", "1"]) == 0
    (line,) = plt.gcf().axes[0].get_lines()
    assert line.get_label() == "Pendulum-v1_1" and len(line.get_xdata()) == 1  # the run's one training episode
    plt.close("all")


def test_tune_with_two_workers_sharing_a_journal(tmp_path):
    storage = tmp_path / "study.log"
    command = [
        sys.executable, "-m", "sb3_flow.zoo", "tune", "--algo", "flow_ppo", "--env", "Pendulum-v1", "-n", "512",
        "--n-trials", "1", "--storage", str(storage), "--study-name", "flow_ppo_test", "--sampler", "random",
        "--pruner", "none", "--n-evaluations", "1", "--eval-episodes", "1", "-f", str(tmp_path / "logs"),
        "--hyperparams", "n_envs:1",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    workers = [
        subprocess.Popen(
            [*command, "--seed", str(seed)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        # The random sampler's first draw for these seeds is a small trial (n_steps <= 512, 64-unit layers): a few
        # tens of seconds each instead of minutes for the largest draws.
        for seed in (16, 13)
    ]
    outputs = [worker.communicate(timeout=500)[0].decode() for worker in workers]
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, output[-3000:]
    study = optuna.load_study(
        study_name="flow_ppo_test",
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(storage))),
    )
    complete = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.COMPLETE]
    # --n-trials counts per worker (the docs say so): two workers with --n-trials 1 run two trials, not one.
    assert len(complete) == len(study.trials) == 2, [(trial.number, trial.state) for trial in study.trials]


def _evaluate_by_hand(model, wrapper, episodes: int = 2) -> str:
    """Evaluation inside the wrapper the run was trained with, built without the Zoo (as `sb3-flow evaluate` prints it)."""
    import gymnasium as gym
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    env = DummyVecEnv([lambda: wrapper(Monitor(gym.make("Pendulum-v1")))])
    env.seed(0)
    mean, std = evaluate_policy(model, env, n_eval_episodes=episodes, deterministic=True)
    return f"{mean:.1f} ± {std:.1f}"


@pytest.mark.parametrize("config", ["sac_dsrl", "sac_residual"])
def test_wrapper_runs_replay_from_any_folder_and_evaluate_inside_their_wrapper(tmp_path, monkeypatch, capsys, config):
    from stable_baselines3 import SAC

    from sb3_flow import FlowBC
    from sb3_flow.common.demonstrations import collect_demonstrations
    from sb3_flow.common.experts import pendulum_swing_up
    from sb3_flow.wrappers import NoiseActionWrapper, ResidualActionWrapper

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    monkeypatch.chdir(work)
    demos = collect_demonstrations("Pendulum-v1", pendulum_swing_up, 1, seed=0)
    FlowBC("MlpPolicy", "Pendulum-v1", demos, policy_kwargs={"net_arch": [8]}).learn(5).save("flow_bc.zip")
    train = ["train", "--algo", "sac", "--env", "Pendulum-v1", "--conf-file", config, "-n", "120", "--seed", "0"]
    assert main([*train, "-f", "logs", "--hyperparams", "learning_starts:500"]) == 0
    run = work / "logs" / "sac" / "Pendulum-v1_1"
    model = SAC.load(run / "Pendulum-v1.zip")
    # The YAML's ZeroInitActorCallback zeroed the mean head (no gradient step before learning_starts).
    assert not model.actor.mu.weight.any() and not model.actor.mu.bias.any()
    # The agent acted in the wrapper's [-1, 1] space, not Pendulum's [-2, 2] torque box.
    assert float(model.action_space.high[0]) == 1.0
    assert model.observation_space.shape == ((4,) if config == "sac_residual" else (3,))
    # The run's config.yml records the base policy's absolute path: enjoy works from another folder.
    assert f"base_policy: {work / 'flow_bc.zip'}" in (run / "Pendulum-v1" / "config.yml").read_text()
    monkeypatch.chdir(elsewhere)
    enjoy = ["enjoy", "--algo", "sac", "--env", "Pendulum-v1", "-f", str(work / "logs"), "--no-render", "-n", "20"]
    assert main(enjoy) == 0

    # sb3-flow evaluate reads the run's config.yml and scores the policy inside its wrapper, as enjoy does.
    base = str(work / "flow_bc.zip")
    if config == "sac_dsrl":
        expected = _evaluate_by_hand(model, lambda env: NoiseActionWrapper(env, base, noise_bound=1.5))
    else:
        expected = _evaluate_by_hand(
            model, lambda env: ResidualActionWrapper(env, base, residual_scale=0.1, append_base_action=True)
        )
    wrapper_name = "NoiseActionWrapper" if config == "sac_dsrl" else "ResidualActionWrapper"
    assert sb3_flow_main(["evaluate", str(run / "Pendulum-v1.zip"), "--episodes", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"{wrapper_name}, 2 episodes: {expected}" in printed
    # A copy outside its run folder is refused on the raw env (no silent scoring of noise actions), and evaluated
    # inside the wrapper with --config.
    copy = elsewhere / "copy.zip"
    copy.write_bytes((run / "Pendulum-v1.zip").read_bytes())
    assert sb3_flow_main(["evaluate", str(copy), "--episodes", "2"]) == 2
    assert "does not match" in capsys.readouterr().err
    assert sb3_flow_main(["evaluate", str(copy), "--episodes", "2", "--config", str(run / "Pendulum-v1" / "config.yml")]) == 0
    assert f"{wrapper_name}, 2 episodes: {expected}" in capsys.readouterr().out


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


# ----- FQL and FBRAC: online from scratch, a dataset in the buffer, offline_steps before the online run -----

TINY_FLOW_Q = ["policy_kwargs:dict(net_arch=[8], critic_net_arch=[8])", "batch_size:32"]


@pytest.mark.parametrize("algo", ["fql", "fbrac"])
def test_fql_and_fbrac_train_online_from_their_packaged_configs(algo, tmp_path, monkeypatch):
    from sb3_flow import FBRAC, FQL

    monkeypatch.chdir(tmp_path)
    train = ["train", "--algo", algo, "--env", "Pendulum-v1", "-n", "100", "--seed", "0", "-f", "logs"]
    assert main([*train, "--hyperparams", "learning_starts:50", *TINY_FLOW_Q]) == 0
    model = {"fql": FQL, "fbrac": FBRAC}[algo].load(
        tmp_path / "logs" / algo / "Pendulum-v1_1" / "Pendulum-v1.zip", env="Pendulum-v1"
    )
    # The packaged Pendulum entry's alpha and normalize_q_loss; updates after the 50 random-action steps only.
    assert model.alpha == 1.0 and model.normalize_q_loss and model.policy.net_arch == [8]
    assert model.num_timesteps == 100 and model.n_offline_steps == 0 and model._n_updates == 50


@pytest.fixture(scope="module")
def fql_offline_run(tmp_path_factory):
    """A Zoo run of the fql_offline config: a relative dataset path, 20 offline gradient steps, 200 online steps."""
    from sb3_flow.common.demonstrations import collect_demonstrations
    from sb3_flow.common.experts import pendulum_swing_up

    work = tmp_path_factory.mktemp("fql_zoo")
    demos = collect_demonstrations("Pendulum-v1", pendulum_swing_up, 2, action_noise=0.3, seed=0)
    demos.save(work / "pendulum.npz")
    train = ["train", "--algo", "fql", "--env", "Pendulum-v1", "--conf-file", "fql_offline", "-n", "200", "--seed", "0"]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        assert main([*train, "-f", "logs", "--save-replay-buffer", "--hyperparams", "offline_steps:20", *TINY_FLOW_Q]) == 0
    return work, demos


def test_fql_zoo_run_pretrains_offline_on_the_yaml_dataset_then_trains_online(fql_offline_run):
    import yaml

    from sb3_flow import FQL

    work, demos = fql_offline_run
    run = work / "logs" / "fql" / "Pendulum-v1_1"
    model = FQL.load(run / "Pendulum-v1.zip", env="Pendulum-v1")
    assert model.n_offline_steps == 20 and model.num_timesteps == 200 and model._n_updates == 220
    assert model.alpha == 1.0 and model.normalize_q_loss  # the fql_offline entry's
    model.load_replay_buffer(run / "replay_buffer.pkl")
    assert model.replay_buffer.n_offline == len(demos) and model.replay_buffer.n_online == 200
    # The run's config.yml records the dataset's absolute path and offline_steps as given (no callback added to it).
    config = dict(yaml.load((run / "Pendulum-v1" / "config.yml").read_text(), Loader=yaml.UnsafeLoader))
    assert config["dataset"] == str(work / "pendulum.npz") and config["offline_steps"] == 20
    assert "callback" not in config


def test_fql_zoo_run_replays_with_enjoy_and_evaluate(fql_offline_run, monkeypatch, capsys, tmp_path):
    work, _ = fql_offline_run
    monkeypatch.chdir(tmp_path)  # another folder: nothing is read relative to the run's working directory
    logs = str(work / "logs")
    assert main(["enjoy", "--algo", "fql", "--env", "Pendulum-v1", "-f", logs, "--no-render", "-n", "20"]) == 0
    model_path = str(work / "logs" / "fql" / "Pendulum-v1_1" / "Pendulum-v1.zip")
    assert sb3_flow_main(["evaluate", model_path, "--episodes", "1"]) == 0
    assert "(fql) on Pendulum-v1, with " in capsys.readouterr().out
    # A run on a raw environment (no wrappers in its config.yml) is scored by success rate with an OGBench --env; here
    # OGBench is replaced by Pendulum and a recorder, as in test_cli.
    import gymnasium as gym

    from sb3_flow.common import ogbench

    monkeypatch.setattr(ogbench, "make_ogbench_env", lambda name: gym.make("Pendulum-v1"))
    monkeypatch.setattr(ogbench, "ogbench_success_rate", lambda policy, env_name, **kwargs: 0.25)
    assert sb3_flow_main(["evaluate", model_path, "--env", "cube-single", "--episodes", "1"]) == 0
    assert "(fql) on OGBench cube-single-play-singletask-task2-v0, 1 episodes: success rate 25%" in capsys.readouterr().out


def test_a_missing_dataset_fails_before_any_env_naming_the_config_and_folder(tmp_path, monkeypatch, capsys):
    from rl_zoo3.exp_manager import ExperimentManager

    def no_env(*args, **kwargs):
        raise AssertionError("an environment was built before the dataset was checked")

    monkeypatch.setattr(ExperimentManager, "create_envs", no_env)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--algo", "fql", "--env", "Pendulum-v1", "--conf-file", "fql_offline", "-f", "logs"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(config_dir() / "fql_offline.yml") in err and f"dataset 'pendulum.npz' not found in {tmp_path}" in err
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize(
    ("hyperparams", "message"),
    [
        ("offline_steps:10", "flow_ppo does not learn offline, so offline_steps cannot apply (fql, fbrac, ifql, cfgrl do)"),
        ("dataset:'data.npz'", "flow_ppo takes no dataset (the algorithms that learn from one: fql, fbrac, ifql, cfgrl)"),
    ],
)
def test_offline_keys_need_an_algorithm_that_learns_from_a_dataset(hyperparams, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--algo", "flow_ppo", "--env", "Pendulum-v1", "-f", "logs", "--hyperparams", hyperparams]) == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "logs").exists()


def test_offline_steps_become_the_first_callback():
    from sb3_flow.zoo.hyperparams import OFFLINE_PRETRAINING_CALLBACK, ConfigValueError, with_offline_pretraining

    zero_init = "sb3_flow.wrappers.ZeroInitActorCallback"
    hyperparams = {"offline_steps": 1e6, "callback": zero_init, "alpha": 3.0}
    converted = with_offline_pretraining(hyperparams, "where")
    assert converted == {
        "alpha": 3.0,
        "callback": [{OFFLINE_PRETRAINING_CALLBACK: {"n_gradient_steps": 1_000_000, "verbose": 1}}, zero_init],
    }
    assert hyperparams["offline_steps"] == 1e6  # a copy: what the Zoo saves keeps the key as written
    assert with_offline_pretraining({"offline_steps": 0, "alpha": 3.0}, "where") == {"alpha": 3.0}
    with pytest.raises(ConfigValueError, match="where: offline_steps must be an integer >= 0"):
        with_offline_pretraining({"offline_steps": -5}, "where")


def test_offline_pretraining_callback_runs_once_and_leaves_the_online_run_as_it_was(pendulum_demos):
    from sb3_flow import FQL
    from sb3_flow.zoo.callbacks import OfflinePretraining

    model = FQL(
        "MlpPolicy",
        "Pendulum-v1",
        dataset=pendulum_demos,
        batch_size=16,
        policy_kwargs={"net_arch": [8], "critic_net_arch": [8]},
    )
    model.learn(10, callback=OfflinePretraining(5))
    # The online run's bookkeeping is its own again: 10 environment steps of a 10-step run, its logger.
    assert model.n_offline_steps == 5 and model.num_timesteps == 10 and model._n_updates == 15
    assert model._total_timesteps == 10 and model._num_timesteps_at_start == 0
    model.learn(10, callback=OfflinePretraining(5), reset_num_timesteps=False)  # already pretrained: not again
    assert model.n_offline_steps == 5 and model.num_timesteps == 20 and model._n_updates == 25
    with pytest.raises(TypeError, match=r"needs an algorithm that learns offline \(fql, fbrac, ifql, cfgrl\)"):
        FlowPPO("MlpPolicy", "Pendulum-v1", n_steps=16, batch_size=16).learn(16, callback=OfflinePretraining(5))


def test_sampled_fql_hyperparameters_build_a_model():
    from sb3_flow import FQL

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    params = sample_fql_params(trial, 1, 1, {})
    alpha = trial.distributions["alpha"]
    assert (alpha.low, alpha.high, alpha.log) == (0.03, 1000.0, True)  # the authors' sweep range, log-uniform
    assert set(trial.distributions["normalize_q_loss"].choices) == {True, False}
    fixed = optuna.trial.FixedTrial({"alpha": 300.0, "normalize_q_loss": False, "learning_rate": 1e-4, "batch_size_pow": 8})
    params = sample_fql_params(fixed, 1, 1, {})
    assert params == {"alpha": 300.0, "normalize_q_loss": False, "learning_rate": 1e-4, "batch_size": 256}
    model = FQL("MlpPolicy", "Pendulum-v1", policy_kwargs={"net_arch": [8], "critic_net_arch": [8]}, **params)
    assert model.alpha == 300.0 and not model.normalize_q_loss and model.batch_size == 256


# ----- IFQL and CFGRL: their packaged configs, a YAML with a dataset, their samplers -----


@pytest.mark.parametrize("algo", ["ifql", "cfgrl"])
def test_ifql_and_cfgrl_train_online_from_their_packaged_configs(algo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train = ["train", "--algo", algo, "--env", "Pendulum-v1", "-n", "100", "--seed", "0", "-f", "logs"]
    assert main([*train, "--hyperparams", "learning_starts:50", "n_flow_steps:2", *TINY_FLOW_Q]) == 0
    model = registry.SB3_FLOW_ALGORITHMS[algo].load(
        tmp_path / "logs" / algo / "Pendulum-v1_1" / "Pendulum-v1.zip", env="Pendulum-v1"
    )
    # The packaged Pendulum entry's settings; updates after the 50 random-action steps only.
    assert model.expectile == 0.9 and model.policy.net_arch == [8]
    if algo == "ifql":
        assert model.n_samples == 32 and model.policy.n_samples == 32
    else:
        assert model.guidance_weight == 1.0 and model.label_dropout == 0.1
    assert model.num_timesteps == 100 and model.n_offline_steps == 0 and model._n_updates == 50


@pytest.mark.parametrize(("algo", "knob", "value"), [("ifql", "n_samples", 4), ("cfgrl", "guidance_weight", 2.0)])
def test_ifql_and_cfgrl_pretrain_on_a_yaml_dataset_then_replay(algo, knob, value, tmp_path, monkeypatch, capsys):
    import yaml

    from sb3_flow.common.demonstrations import collect_demonstrations
    from sb3_flow.common.experts import pendulum_swing_up

    monkeypatch.chdir(tmp_path)
    demos = collect_demonstrations("Pendulum-v1", pendulum_swing_up, 1, action_noise=0.3, seed=0)
    demos.save(tmp_path / "pendulum.npz")
    entry = {
        "n_timesteps": 40,
        "policy": "MlpPolicy",
        "dataset": "pendulum.npz",  # relative: read from the working directory, recorded absolute
        "offline_steps": 10,
        "expectile": 0.8,
        knob: value,
        "n_flow_steps": 2,
        "batch_size": 32,
        "policy_kwargs": "dict(net_arch=[8], critic_net_arch=[8])",
    }
    (tmp_path / f"{algo}_offline.yml").write_text(yaml.safe_dump({"Pendulum-v1": entry}))
    train = ["train", "--algo", algo, "--env", "Pendulum-v1", "--conf-file", f"{algo}_offline.yml", "--seed", "0"]
    assert main([*train, "-f", "logs"]) == 0
    run = tmp_path / "logs" / algo / "Pendulum-v1_1"
    model = registry.SB3_FLOW_ALGORITHMS[algo].load(run / "Pendulum-v1.zip", env="Pendulum-v1")
    assert model.n_offline_steps == 10 and model.num_timesteps == 40 and model._n_updates == 50
    assert model.expectile == 0.8 and getattr(model.policy, knob) == value
    config = dict(yaml.load((run / "Pendulum-v1" / "config.yml").read_text(), Loader=yaml.UnsafeLoader))
    assert config["dataset"] == str(tmp_path / "pendulum.npz") and config["offline_steps"] == 10

    assert main(["enjoy", "--algo", algo, "--env", "Pendulum-v1", "-f", "logs", "--no-render", "-n", "20"]) == 0
    # sb3-flow evaluate finds the run's config and takes the test-time knob.
    option = f"--{knob.replace('_', '-')}"
    assert sb3_flow_main(["evaluate", str(run / "Pendulum-v1.zip"), "--episodes", "1", option, "3"]) == 0
    assert f"({algo}, {knob}=3) on Pendulum-v1, with " in capsys.readouterr().out


def test_sampled_ifql_and_cfgrl_hyperparameters_build_a_model():
    from sb3_flow import CFGRL, IFQL

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    tiny = {"policy_kwargs": {"net_arch": [8], "critic_net_arch": [8]}, "buffer_size": 10}
    trial = study.ask()
    sample_ifql_params(trial, 1, 1, {})
    assert set(trial.distributions["expectile"].choices) == {0.7, 0.8, 0.9}
    assert set(trial.distributions["n_samples"].choices) == {8, 16, 32}
    rate = trial.distributions["learning_rate"]
    assert (rate.low, rate.high, rate.log) == (1e-4, 1e-3, True)
    trial = study.ask()
    sample_cfgrl_params(trial, 1, 1, {})
    assert set(trial.distributions["guidance_weight"].choices) == {1.0, 1.5, 2.0, 3.0}
    assert set(trial.distributions["label_dropout"].choices) == {0.1, 0.2}

    common = {"expectile": 0.7, "learning_rate": 1e-4, "batch_size_pow": 7}
    params = sample_ifql_params(optuna.trial.FixedTrial({**common, "n_samples": 8}), 1, 1, {})
    assert params == {"expectile": 0.7, "learning_rate": 1e-4, "batch_size": 128, "n_samples": 8}
    model = IFQL("MlpPolicy", "Pendulum-v1", **tiny, **params)
    assert model.expectile == 0.7 and model.policy.n_samples == 8 and model.batch_size == 128
    fixed = optuna.trial.FixedTrial({**common, "guidance_weight": 3.0, "label_dropout": 0.2})
    params = sample_cfgrl_params(fixed, 1, 1, {})
    model = CFGRL("MlpPolicy", "Pendulum-v1", **tiny, **params)
    assert model.policy.guidance_weight == 3.0 and model.label_dropout == 0.2 and model.batch_size == 128
