"""The sb3-flow command line: collect / dataset -> pretrain / offline -> evaluate, the demo, and its error messages."""

import json
import sys
import warnings
import zipfile

import numpy as np
import pytest
from stable_baselines3 import SAC

from sb3_flow import (
    CFGRL,
    DSRLNA,
    FBRAC,
    FQL,
    IFQL,
    ConditionalFlowPolicy,
    FlowBC,
    FlowPPO,
    GaussianBC,
    ReinFlow,
    ReturnHeadFlowPolicy,
)
from sb3_flow.cli import main, ogbench_dataset_name
from sb3_flow.common.demonstrations import Demonstrations
from sb3_flow.common.experts import expert_cache_path, train_expert
from sb3_flow.common.files import SAVED_BY_KEY
from sb3_flow.demo import DemoConfig
from sb3_flow.registry import all_algorithms, detect_algorithm, load_any


def test_collect_pretrain_evaluate(tmp_path, capsys):
    demos_path = tmp_path / "demos.npz"
    assert main(["collect", "--expert", "scripted", "--episodes", "3", "--action-noise", "0.2", "--out", str(demos_path)]) == 0
    demos = Demonstrations.load(demos_path)
    assert demos.n_episodes == 3 and demos.actions.shape == (600, 1)
    assert "3 episodes" in capsys.readouterr().out

    model_path = tmp_path / "flow_bc.zip"
    assert (
        main(["pretrain", "--demos", str(demos_path), "--steps", "20", "--n-flow-steps", "3", "--out", str(model_path)]) == 0
    )
    loaded, name = load_any(model_path)
    assert name == "flow_bc" and loaded.policy.n_flow_steps == 3

    assert main(["evaluate", str(model_path), "--episodes", "2"]) == 0
    out = capsys.readouterr().out
    assert "(flow_bc)" in out and "2 episodes" in out

    policy_path = tmp_path / "policy.pt"
    loaded.policy.save(str(policy_path))
    assert main(["evaluate", str(policy_path), "--episodes", "1"]) == 0
    assert "(FlowPolicy)" in capsys.readouterr().out


def test_cli_errors_name_the_problem(tmp_path, capsys):
    assert main(["pretrain", "--demos", str(tmp_path / "missing.npz")]) == 2
    assert "No demonstrations file" in capsys.readouterr().err
    (tmp_path / "junk.zip").write_bytes(b"junk")
    assert main(["evaluate", str(tmp_path / "junk.zip")]) == 2
    assert "neither a saved model" in capsys.readouterr().err
    assert (
        main(["collect", "--expert", "scripted", "--env", "MountainCarContinuous-v0", "--out", str(tmp_path / "x.npz")]) == 2
    )
    assert "only controls Pendulum-v1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["pretrain", "--demos", "x.npz", "--algo", "unknown"])


def test_trained_expert_is_cached_and_reused(tmp_path):
    model = train_expert("Pendulum-v1", "sac", total_timesteps=150, seed=1, cache_dir=tmp_path)
    path = expert_cache_path("Pendulum-v1", "sac", 150, 1, tmp_path)
    assert path.is_file()
    again = train_expert("Pendulum-v1", "sac", total_timesteps=150, seed=1, cache_dir=tmp_path)
    obs = np.zeros((2, 3), dtype=np.float32)
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], again.predict(obs, deterministic=True)[0])
    assert isinstance(again, SAC) and again.num_timesteps == 150  # loaded, not retrained
    _loaded, name = load_any(path)
    assert name == "sac"


# ----- hardening: one list of algorithms, exact detection, one-line errors, checked numbers, honest help -----


def _stripped_of_saved_by(path, out):
    """A copy of a model zip as an older sb3-flow (or SB3 itself) wrote it: no record of the algorithm."""
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(out, "w") as target:
        for item in source.infolist():
            content = source.read(item)
            if item.filename == "data":
                data = json.loads(content)
                data.pop(SAVED_BY_KEY, None)
                content = json.dumps(data).encode()
            target.writestr(item, content)
    return out


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sb3-flow {command}: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory, pendulum_demos):
    """A tiny saved model of each sb3-flow algorithm (no training beyond a few steps: only the files matter)."""
    folder = tmp_path_factory.mktemp("models")

    def small():
        return {"net_arch": [8]}  # one dict per model: SB3's off-policy constructor writes use_sde into the one it gets

    def tiny_flow_q():
        return {"net_arch": [8], "critic_net_arch": [8]}

    flow_bc = FlowBC("MlpPolicy", "Pendulum-v1", pendulum_demos, n_flow_steps=2, policy_kwargs=small()).learn(2)
    models = {
        "flow_bc": flow_bc,
        "gaussian_bc": GaussianBC("MlpPolicy", "Pendulum-v1", pendulum_demos, policy_kwargs=small()),
        "flow_ppo": FlowPPO("MlpPolicy", "Pendulum-v1", n_steps=16, batch_size=16, n_flow_steps=2, policy_kwargs=small()),
        "reinflow": ReinFlow("MlpPolicy", "Pendulum-v1", n_steps=16, batch_size=16, n_flow_steps=2, policy_kwargs=small()),
        "dsrl_na": DSRLNA("MlpPolicy", "Pendulum-v1", base_policy=flow_bc, buffer_size=10, policy_kwargs=small()),
        "fql": FQL("MlpPolicy", "Pendulum-v1", buffer_size=10, n_flow_steps=2, policy_kwargs=tiny_flow_q()),
        "fbrac": FBRAC("MlpPolicy", "Pendulum-v1", buffer_size=10, n_flow_steps=2, policy_kwargs=tiny_flow_q()),
        "ifql": IFQL("MlpPolicy", "Pendulum-v1", buffer_size=10, n_flow_steps=2, n_samples=2, policy_kwargs=tiny_flow_q()),
        "cfgrl": CFGRL("MlpPolicy", "Pendulum-v1", buffer_size=10, n_flow_steps=2, policy_kwargs=tiny_flow_q()),
        # A FlowBC model whose policy is guided up its return head's gradient (guidance_scale, a test-time knob).
        "flow_bc_return_head": FlowBC(
            ReturnHeadFlowPolicy, "Pendulum-v1", pendulum_demos, n_flow_steps=2, policy_kwargs=small()
        ).learn(2),
    }
    paths = {}
    for name, model in models.items():
        model.save(folder / f"{name}.zip")
        paths[name] = folder / f"{name}.zip"
    return paths


def test_reinflow_is_known_to_the_cli(saved_models, capsys):
    path = str(saved_models["reinflow"])
    assert main(["evaluate", path, "--episodes", "1"]) == 0
    assert "(reinflow)" in capsys.readouterr().out  # was labelled "(flow_ppo)"
    assert main(["evaluate", path, "--episodes", "1", "--algo", "reinflow"]) == 0  # was "unknown"
    assert "(reinflow)" in capsys.readouterr().out
    assert main(["evaluate", path, "--algo", "flow_ppo"]) == 2
    assert "holds a reinflow model, not a flow_ppo model" in _one_error_line(capsys, "evaluate")


@pytest.mark.parametrize("name", ["ppo", "a2c", "sac", "td3", "ddpg"])
def test_detection_tells_apart_sb3_algorithms_that_share_a_policy(name, tmp_path):
    algorithm = all_algorithms()[name]
    kwargs = {"buffer_size": 10} if name in ("sac", "td3", "ddpg") else {"n_steps": 8}
    algorithm("MlpPolicy", "Pendulum-v1", policy_kwargs={"net_arch": [8]}, **kwargs).save(tmp_path / "model.zip")
    # "The first algorithm whose load works" called an A2C zip "ppo" and a DDPG zip "td3".
    assert detect_algorithm(tmp_path / "model.zip") == name
    loaded, loaded_as = load_any(tmp_path / "model.zip")
    assert loaded_as == name and type(loaded) is algorithm


@pytest.mark.parametrize(
    "name", ["flow_bc", "gaussian_bc", "flow_ppo", "reinflow", "dsrl_na", "fql", "fbrac", "ifql", "cfgrl"]
)
def test_detection_of_sb3_flow_models_with_and_without_the_saved_by_record(name, saved_models, tmp_path):
    assert detect_algorithm(saved_models[name]) == name
    # Files that do not record their algorithm are told apart by their policy class and saved settings.
    assert detect_algorithm(_stripped_of_saved_by(saved_models[name], tmp_path / "old.zip")) == name


def test_detection_of_a_model_no_algorithm_of_the_list_saved(tmp_path):
    from stable_baselines3 import DQN

    DQN("MlpPolicy", "CartPole-v1", buffer_size=10, policy_kwargs={"net_arch": [8]}).save(tmp_path / "dqn.zip")
    with pytest.raises(ValueError, match=r"stable_baselines3\.dqn\.policies\.DQNPolicy, which belongs to none of"):
        detect_algorithm(tmp_path / "dqn.zip")


def _corrupt_data_member(path, out):
    """The model zip with one byte of its stored ``data`` member changed: its CRC no longer matches."""
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for item in source.infolist():
            target.writestr(item.filename, source.read(item))
    raw = out.read_bytes()
    out.write_bytes(raw.replace(b'"policy_class"', b'"policy_clasz"', 1))
    return out


def _expected_failures(tmp_path, saved_models):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(saved_models["flow_bc"].read_bytes()[:2000])
    flow_bc = str(saved_models["flow_bc"])
    return {
        "bad env id": (["evaluate", flow_bc, "--env", "NoSuchEnv-v0"], "gymnasium NameNotFound"),
        "truncated zip": (["evaluate", str(truncated)], "neither a saved model"),
        "bad CRC": (["evaluate", str(_corrupt_data_member(saved_models["flow_bc"], tmp_path / "crc.zip"))], "cannot be read"),
        "collect output under a file": (
            ["collect", "--expert", "scripted", "--out", str(a_file / "demos.npz")],
            f"{a_file} is a file, not a folder",
        ),
        "pretrain output under a file": (
            ["pretrain", "--demos", "missing.npz", "--out", str(a_file / "model.zip")],
            f"{a_file} is a file, not a folder",
        ),
        "demo output is a file": (["demo", "--expert", "scripted", "--out-dir", str(a_file)], "is a file, not a folder"),
        "mismatched --algo": (["evaluate", flow_bc, "--algo", "dsrl_na"], "holds a flow_bc model, not a dsrl_na model"),
        "mismatched spaces": (["evaluate", flow_bc, "--env", "MountainCarContinuous-v0"], "does not match"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "bad env id",
        "truncated zip",
        "bad CRC",
        "collect output under a file",
        "pretrain output under a file",
        "demo output is a file",
        "mismatched --algo",
        "mismatched spaces",
    ],
)
def test_expected_failures_are_one_line_and_a_non_zero_exit(case, tmp_path, saved_models, capsys):
    argv, message = _expected_failures(tmp_path, saved_models)[case]
    assert main(argv) == 2  # an exception escaping main would fail the test with its traceback
    assert message in _one_error_line(capsys, argv[0])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["pretrain", "--demos", "d.npz", "--steps", "-5"], "argument --steps: must be a positive integer, got '-5'"),
        (["evaluate", "m.zip", "--episodes", "0"], "argument --episodes: must be a positive integer, got '0'"),
        (["collect", "--episodes", "2.5"], "argument --episodes: must be a positive integer, got '2.5'"),
        (["pretrain", "--demos", "d.npz", "--learning-rate", "nan"], "argument --learning-rate: must be a finite number > 0"),
        (["collect", "--action-noise", "-0.1"], "argument --action-noise: must be a finite number >= 0"),
        (["demo", "--workers", "0"], "argument --workers: must be a positive integer"),
        (["demo", "--budget", "-5"], "argument --budget: must be a positive integer, got '-5'"),
        (["demo", "--seeds"], "argument --seeds: expected at least one argument"),
        (["demo", "--methods", "nope"], "argument --methods: invalid choice: 'nope'"),
        (["evaluate", "m.zip", "--algo", "unknown"], "argument --algo: invalid choice: 'unknown'"),
    ],
)
def test_argparse_rejects_bad_numbers_and_names(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_help_shows_defaults_and_the_algorithm_choices(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "250")  # one option per line, so that no default is wrapped apart
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--help"])
    assert exit_info.value.code == 0
    evaluate_help = capsys.readouterr().out
    assert "--episodes EPISODES   evaluation episodes (default: 10)" in evaluate_help
    assert "{" + ",".join(sorted(all_algorithms())) + "}" in evaluate_help and "reinflow" in evaluate_help
    assert "(default: None)" not in evaluate_help
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    demo_help = capsys.readouterr().out
    # The demo's defaults are DemoConfig's, shown as such.
    assert f"env steps of each method and seed (default: {DemoConfig().budget})" in demo_help
    assert f"(default: {DemoConfig().expert_steps})" in demo_help
    assert f"the comparison's seeds (default: {list(DemoConfig().seeds)})" in demo_help


def test_collect_says_whether_it_trained_or_loaded_the_cached_expert(tmp_path, capsys):
    cache_dir = tmp_path / "cache"
    argv = ["collect", "--expert", "sac", "--expert-steps", "100", "--episodes", "1", "--cache-dir", str(cache_dir)]
    argv += ["--out", str(tmp_path / "demos.npz")]
    cache = expert_cache_path("Pendulum-v1", "sac", 100, 0, cache_dir)
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert f"trained a sac expert; cached at {cache}" in first and "loaded the cached" not in first
    assert cache.is_file()
    assert main(argv) == 0
    second = capsys.readouterr().out
    assert f"loaded the cached sac expert from {cache}" in second and "train" not in second


# ----- offline RL: dataset (OGBench), offline (FQL / FBRAC, then online), evaluate (success rate on OGBench) -----

TINY_OFFLINE = ["--net-arch", "8", "--batch-size", "32", "--n-flow-steps", "2", "--eval-episodes", "1"]


@pytest.fixture(scope="module")
def pendulum_dataset(tmp_path_factory, pendulum_demos):
    """The 20-episode Pendulum dataset (4000 transitions, rewards and terminations) as a file."""
    return pendulum_demos.save(tmp_path_factory.mktemp("offline") / "pendulum.npz")


def test_offline_then_online_writes_the_model_and_the_buffer(tmp_path, pendulum_dataset, pendulum_demos, capsys):
    model_path, buffer_path = tmp_path / "fql.zip", tmp_path / "buffer.pkl"
    argv = ["offline", "--algo", "fql", "--dataset", pendulum_dataset, "--steps", "20", "--online-steps", "30"]
    argv += ["--alpha", "3", "--normalize-q-loss", *TINY_OFFLINE, "--out", str(model_path)]
    assert main([*argv, "--save-replay-buffer", str(buffer_path)]) == 0
    out = capsys.readouterr().out
    assert f"{len(pendulum_demos)} transitions, 20 episodes" in out
    assert "fql, 20 offline gradient steps, 30 environment steps" in out
    assert f"{len(pendulum_demos)} dataset and 30 online transitions" in out
    assert "evaluation over 1 episodes: " in out
    model = FQL.load(model_path, env="Pendulum-v1")
    assert model.n_offline_steps == 20 and model.num_timesteps == 30 and model._n_updates == 50
    assert model.alpha == 3.0 and model.normalize_q_loss and model.batch_size == 32
    assert model.policy.net_arch == [8] and model.policy.critic_net_arch == [8] and model.policy.n_flow_steps == 2
    model.load_replay_buffer(buffer_path)
    buffer = model.replay_buffer
    assert buffer.n_offline == len(pendulum_demos) and buffer.n_online == 30
    for row in (0, -1):  # the dataset exactly, in order, before the online transitions
        np.testing.assert_allclose(np.asarray(buffer.offline.observations[row]), pendulum_demos.observations[row])
        np.testing.assert_allclose(np.asarray(buffer.offline.rewards[row, 0]), pendulum_demos.rewards[row])


def test_offline_fbrac_evaluates_during_pretraining_and_keeps_its_options(tmp_path, pendulum_dataset, capsys):
    model_path = tmp_path / "fbrac.zip"
    argv = ["offline", "--algo", "fbrac", "--dataset", pendulum_dataset, "--steps", "20", "--eval-freq", "10"]
    argv += ["--no-normalize-q-loss", *TINY_OFFLINE, "--critic-net-arch", "16", "--q-agg", "min", "--out", str(model_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    # EvalCallback every 10 gradient steps while offline (num_timesteps counts gradient steps there).
    assert "Eval num_timesteps=10," in out and "Eval num_timesteps=20," in out
    assert "fbrac, 20 offline gradient steps, 0 environment steps" in out
    model = FBRAC.load(model_path, env="Pendulum-v1")
    assert model.n_offline_steps == 20 and model.num_timesteps == 0
    assert not model.normalize_q_loss  # FBRAC's own default is True: the flag turned it off
    assert model.alpha == 1.0 and model.q_agg == "min"
    assert model.policy.net_arch == [8] and model.policy.critic_net_arch == [16]


@pytest.mark.parametrize("name", ["fql", "fbrac", "ifql", "cfgrl"])
def test_evaluate_labels_fql_and_fbrac_models(name, saved_models, capsys):
    assert main(["evaluate", str(saved_models[name]), "--episodes", "1"]) == 0
    assert f"({name}) on Pendulum-v1" in capsys.readouterr().out


def test_ogbench_short_names():
    name = "cube-single-play-singletask-task2-v0"
    assert ogbench_dataset_name("cube-single") == name  # OGBench's (and the FQL paper's) default task
    assert ogbench_dataset_name("cube-single", task=3) == "cube-single-play-singletask-task3-v0"
    assert ogbench_dataset_name("puzzle-3x3") == "puzzle-3x3-play-singletask-task4-v0"
    assert ogbench_dataset_name("scene", dataset_type="noisy") == "scene-noisy-singletask-task2-v0"
    assert ogbench_dataset_name(name) == name
    assert ogbench_dataset_name("puzzle-4x4-noisy-singletask-v0") == "puzzle-4x4-noisy-singletask-v0"
    # The single-task environment id (what gymnasium registers) names the same environment.
    assert ogbench_dataset_name("cube-double-singletask-task5-v0") == "cube-double-play-singletask-task5-v0"
    assert ogbench_dataset_name("cube-double-singletask-v0") == "cube-double-play-singletask-task2-v0"
    assert ogbench_dataset_name("Pendulum-v1") is None and ogbench_dataset_name("HalfCheetah-v5") is None
    cases = [
        ("cube-single", {"task": 6}, "tasks 1..5"),
        (name, {"task": 3}, "sets the task and the dataset type itself"),
        ("cube-single-singletask-task3-v0", {"task": 2}, "contradicts"),
        ("Pendulum-v1", {"task": 2}, "is no OGBench name"),
        ("visual-cube-single-play-singletask-task2-v0", {}, "pixel-based"),
    ]
    for text, options, message in cases:
        with pytest.raises(ValueError, match=message):
            ogbench_dataset_name(text, **options)


@pytest.fixture
def fake_ogbench(monkeypatch):
    """OGBench's environment and success rate replaced by Pendulum and a recorder: the CLI's routing, without ogbench."""
    import gymnasium as gym

    from sb3_flow.common import ogbench

    calls = []

    def success_rate(policy, env_name, n_episodes=10, seed=0, deterministic=True):
        calls.append({"policy": policy, "env_name": env_name, "n_episodes": n_episodes, "deterministic": deterministic})
        return 0.5

    monkeypatch.setattr(ogbench, "make_ogbench_env", lambda name: gym.make("Pendulum-v1"))
    monkeypatch.setattr(ogbench, "ogbench_success_rate", success_rate)
    return calls


def test_offline_and_evaluate_report_the_ogbench_success_rate(tmp_path, pendulum_dataset, saved_models, fake_ogbench, capsys):
    model_path = tmp_path / "fql.zip"
    argv = ["offline", "--env", "cube-single", "--task", "3", "--dataset", pendulum_dataset, "--steps", "5"]
    assert main([*argv, *TINY_OFFLINE, "--out", str(model_path)]) == 0
    out = capsys.readouterr().out
    assert "cube-single: OGBench cube-single-play-singletask-task3-v0" in out
    assert "success rate over 1 episodes: 50%" in out and "evaluation over" not in out
    (call,) = fake_ogbench
    assert call["env_name"] == "cube-single-play-singletask-task3-v0" and isinstance(call["policy"], FQL)
    assert call["n_episodes"] == 1 and call["deterministic"]

    assert main(["evaluate", str(saved_models["flow_bc"]), "--env", "cube-single", "--episodes", "4", "--stochastic"]) == 0
    out = capsys.readouterr().out
    assert "(flow_bc) on OGBench cube-single-play-singletask-task2-v0, 4 episodes: success rate 50%" in out
    assert fake_ogbench[-1]["n_episodes"] == 4 and not fake_ogbench[-1]["deterministic"]


def test_dataset_ogbench_writes_play_data_and_says_how_often_the_task_is_solved(tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # glfw warns that there is no display
        pytest.importorskip("ogbench")
    out_path = tmp_path / "cube.npz"
    # 120 steps from seed 0: the episode passes through task 2's goal, so both kinds of rows are there.
    argv = ["dataset", "ogbench", "cube-single", "--episodes", "1", "--episode-length", "120", "--out", str(out_path)]
    assert main(argv) == 0
    data = Demonstrations.load(out_path)
    assert len(data) == 120 and data.n_episodes == 1
    assert data.observations.shape == (120, 28) and data.actions.shape == (120, 5)
    solved = int(data.terminations.sum())
    assert 0 < solved < 120 and set(np.unique(data.rewards)) == {-1.0, 0.0}
    np.testing.assert_array_equal(data.rewards == 0.0, data.terminations)  # cube-single: reward 0 exactly when solved
    out = capsys.readouterr().out
    assert "cube-single: OGBench cube-single-play-singletask-task2-v0, 1 episodes of 120 steps" in out
    assert f"120 transitions, 1 episodes; the task is solved in {solved} rows ({solved / 120:.1%})" in out
    assert "sb3-flow offline --algo fql --env cube-single-play-singletask-task2-v0" in out


def test_dataset_without_ogbench_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ogbench", None)  # import ogbench now raises ImportError
    assert main(["dataset", "ogbench", "cube-single", "--episodes", "1", "--out", str(tmp_path / "x.npz")]) == 2
    assert "pip install 'sb3-flow[ogbench]'" in _one_error_line(capsys, "dataset")
    assert not (tmp_path / "x.npz").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["offline", "--dataset", "{dataset}", "--steps", "0"], "nothing to train: --steps and --online-steps are both 0"),
        (["offline", "--dataset", "{tmp}/missing.npz"], "No demonstrations file"),
        (
            ["offline", "--dataset", "{dataset}", "--env", "MountainCarContinuous-v0", "--net-arch", "8"],
            "Demonstration observations have shape (3,) per step",
        ),
        (["offline", "--dataset", "{dataset}", "--task", "2"], "Pendulum-v1 is no OGBench name"),
        (["offline", "--dataset", "{dataset}", "--out", "{tmp}/a_file/fql.zip"], "is a file, not a folder"),
        (["dataset", "ogbench", "Pendulum-v1", "--episodes", "1"], "Pendulum-v1 is no OGBench name"),
        (["dataset", "ogbench", "cube-single", "--task", "9", "--episodes", "1"], "--task must be one of the OGBench tasks"),
        (["evaluate", "m.zip", "--task", "2"], "--task applies to an OGBench environment"),
    ],
)
def test_offline_and_dataset_failures_are_one_line(argv, message, tmp_path, pendulum_dataset, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    argv = [arg.format(dataset=pendulum_dataset, tmp=tmp_path) for arg in argv]
    assert main(argv) == 2
    assert message in _one_error_line(capsys, argv[0])


# ----- IFQL and CFGRL: offline options that only some algorithms take, and evaluate's test-time knobs -----


def test_offline_ifql_keeps_its_options_and_its_own_defaults(tmp_path, pendulum_dataset, capsys):
    model_path = tmp_path / "ifql.zip"
    argv = ["offline", "--algo", "ifql", "--dataset", pendulum_dataset, "--steps", "10", "--online-steps", "20"]
    argv += ["--expectile", "0.8", "--n-samples", "4", *TINY_OFFLINE, "--out", str(model_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "ifql, 10 offline gradient steps, 20 environment steps" in out and "evaluation over 1 episodes: " in out
    model = IFQL.load(model_path, env="Pendulum-v1")
    assert model.n_offline_steps == 10 and model.num_timesteps == 20 and model._n_updates == 30
    assert model.expectile == 0.8 and model.n_samples == 4 and model.policy.n_samples == 4
    # No --q-agg: IFQL's own "min" (the authors'), not the "mean" of FQL the command once passed to every algorithm.
    assert model.q_agg == "min" and model.policy.q_agg == "min"
    assert model.policy.net_arch == [8] and model.policy.critic_net_arch == [8] and model.policy.n_flow_steps == 2


def test_offline_cfgrl_keeps_its_options_and_its_own_defaults(tmp_path, pendulum_dataset, capsys):
    model_path = tmp_path / "cfgrl.zip"
    argv = ["offline", "--algo", "cfgrl", "--dataset", pendulum_dataset, "--steps", "10", "--guidance-weight", "2.5"]
    argv += ["--expectile", "0.7", "--net-arch", "8", "--batch-size", "32", "--eval-episodes", "1"]
    assert main([*argv, "--out", str(model_path)]) == 0
    assert "cfgrl, 10 offline gradient steps, 0 environment steps" in capsys.readouterr().out
    model = CFGRL.load(model_path, env="Pendulum-v1")
    assert model.n_offline_steps == 10 and model.expectile == 0.7 and model.q_agg == "min"
    assert model.guidance_weight == 2.5 and model.policy.guidance_weight == 2.5
    assert model.policy.n_flow_steps == 16  # no --n-flow-steps: CFGRL's own K (the authors'), not FQL's 10


@pytest.mark.parametrize(
    ("algo", "option", "message"),
    [
        ("ifql", ["--alpha", "3"], "--alpha is an option of --algo fql and fbrac; --algo ifql does not take it"),
        ("cfgrl", ["--no-normalize-q-loss"], "--no-normalize-q-loss is an option of --algo fql and fbrac; --algo cfgrl"),
        ("fql", ["--expectile", "0.8"], "--expectile is an option of --algo ifql and cfgrl; --algo fql does not take it"),
        ("cfgrl", ["--n-samples", "4"], "--n-samples is an option of --algo ifql; --algo cfgrl does not take it"),
        ("ifql", ["--guidance-weight", "2"], "--guidance-weight is an option of --algo cfgrl; --algo ifql does not take it"),
    ],
)
def test_offline_refuses_an_option_the_algorithm_does_not_take(algo, option, message, tmp_path, pendulum_dataset, capsys):
    argv = ["offline", "--algo", algo, "--dataset", pendulum_dataset, *option, *TINY_OFFLINE, "--out", str(tmp_path / "m")]
    assert main(argv) == 2
    assert message in _one_error_line(capsys, "offline")
    assert not (tmp_path / "m.zip").exists()


@pytest.fixture
def evaluated_policies(monkeypatch):
    """The policies `sb3-flow evaluate` really evaluates (SB3's evaluate_policy, recorded, then run)."""
    import sb3_flow.cli

    policies = []
    evaluate_policy = sb3_flow.cli.evaluate_policy

    def recording(model, *args, **kwargs):
        policies.append(getattr(model, "policy", model))
        return evaluate_policy(model, *args, **kwargs)

    monkeypatch.setattr(sb3_flow.cli, "evaluate_policy", recording)
    return policies


@pytest.mark.parametrize(
    ("name", "knob", "value"),
    [("ifql", "n_samples", "4"), ("cfgrl", "guidance_weight", "2.5"), ("cfgrl", "n_samples", "3")],
)
def test_evaluate_sets_the_test_time_knobs_of_ifql_and_cfgrl(name, knob, value, saved_models, evaluated_policies, capsys):
    argv = ["evaluate", str(saved_models[name]), "--episodes", "1", f"--{knob.replace('_', '-')}", value]
    assert main(argv) == 0
    assert f"({name}, {knob}={float(value):g}) on Pendulum-v1, raw environment, 1 episodes" in capsys.readouterr().out
    (policy,) = evaluated_policies
    assert getattr(policy, knob) == float(value)  # what acted in the episodes, not only what was printed
    # Nothing is written back: the file keeps its own setting.
    saved, _ = load_any(saved_models[name])
    assert getattr(saved.policy, knob) == {"n_samples": 2 if name == "ifql" else 1, "guidance_weight": 1.0}[knob]


def test_evaluate_sets_the_guidance_of_a_return_head_model_and_of_saved_guided_policies(
    tmp_path, saved_models, evaluated_policies, capsys
):
    path = str(saved_models["flow_bc_return_head"])
    assert main(["evaluate", path, "--episodes", "1", "--guidance-scale", "0.5"]) == 0
    assert "(flow_bc, guidance_scale=0.5) on Pendulum-v1" in capsys.readouterr().out
    assert isinstance(evaluated_policies[-1], ReturnHeadFlowPolicy) and evaluated_policies[-1].guidance_scale == 0.5

    # Files written by policy.save: a FlowPolicy subclass with arguments of its own loads as itself, knobs included.
    load_any(saved_models["flow_bc_return_head"])[0].policy.save(tmp_path / "return_head.pt")
    load_any(saved_models["cfgrl"])[0].policy.bc_policy.save(tmp_path / "conditional.pt")
    assert main(["evaluate", str(tmp_path / "return_head.pt"), "--episodes", "1", "--guidance-scale", "0.2"]) == 0
    assert "(ReturnHeadFlowPolicy, guidance_scale=0.2) on Pendulum-v1" in capsys.readouterr().out
    assert isinstance(evaluated_policies[-1], ReturnHeadFlowPolicy) and evaluated_policies[-1].guidance_scale == 0.2
    assert main(["evaluate", str(tmp_path / "conditional.pt"), "--episodes", "1", "--guidance-weight", "0"]) == 0
    assert "(ConditionalFlowPolicy, guidance_weight=0) on Pendulum-v1" in capsys.readouterr().out
    assert isinstance(evaluated_policies[-1], ConditionalFlowPolicy) and evaluated_policies[-1].guidance_weight == 0.0


@pytest.mark.parametrize(
    ("name", "option", "message"),
    [
        ("fql", ["--n-samples", "4"], "--n-samples sets policy.n_samples, which the fql model's policy (FQLPolicy) does"),
        ("ifql", ["--guidance-weight", "2"], "policy.guidance_weight, which the ifql model's policy (InSampleFlowQPolicy)"),
        ("flow_bc", ["--guidance-scale", "0.5"], "the flow_bc model's policy (FlowPolicy) does not have; it applies to a"),
        ("flow_bc_policy", ["--n-samples", "4"], "which the saved policy (FlowPolicy) does not have; it applies to a policy"),
    ],
)
def test_evaluate_refuses_a_knob_the_policy_does_not_have(name, option, message, tmp_path, saved_models, capsys):
    if name == "flow_bc_policy":
        path = tmp_path / "policy.pt"
        load_any(saved_models["flow_bc"])[0].policy.save(path)
    else:
        path = saved_models[name]
    assert main(["evaluate", str(path), "--episodes", "1", *option]) == 2
    line = _one_error_line(capsys, "evaluate")
    assert message in line
    expected = {"--n-samples": "IFQL", "--guidance-weight": "CFGRL", "--guidance-scale": "ReturnHeadFlowPolicy"}
    assert expected[option[0]] in line  # names what the knob is for


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["evaluate", "m.zip", "--n-samples", "0"], "argument --n-samples: must be a positive integer, got '0'"),
        (["evaluate", "m.zip", "--guidance-weight", "nan"], "argument --guidance-weight: must be a finite number, got 'nan'"),
        (["evaluate", "m.zip", "--guidance-scale", "inf"], "argument --guidance-scale: must be a finite number, got 'inf'"),
        (["offline", "--dataset", "d.npz", "--expectile", "1"], "argument --expectile: must be a number in (0, 1), got '1'"),
        (["offline", "--dataset", "d.npz", "--algo", "iql"], "argument --algo: invalid choice: 'iql'"),
    ],
)
def test_argparse_rejects_bad_knob_values(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


# ----- distill: a steered agent (a Zoo run with a steering env_wrapper, DSRL-NA) back into one flow policy -----


@pytest.fixture(scope="module")
def residual_zoo_run(tmp_path_factory, saved_models):
    """A Zoo run folder as the Zoo writes it for sac_residual: the agent's zip beside <env>/config.yml and args.yml."""
    from stable_baselines3.common.env_util import make_vec_env

    from sb3_flow.wrappers import ResidualActionWrapper, zero_init_actor

    run = tmp_path_factory.mktemp("zoo_run")
    base = str(saved_models["flow_bc"])
    options = {"residual_scale": 0.5, "append_base_action": True}
    env = make_vec_env("Pendulum-v1", wrapper_class=lambda env: ResidualActionWrapper(env, base, **options))
    agent = SAC("MlpPolicy", env, buffer_size=10, policy_kwargs={"net_arch": [8]}, seed=0)
    zero_init_actor(agent)
    agent.actor.mu.bias.data.fill_(0.5)
    agent.save(run / "Pendulum-v1.zip")
    (run / "Pendulum-v1").mkdir()
    (run / "Pendulum-v1" / "config.yml").write_text(
        "env_wrapper:\n- sb3_flow.wrappers.ResidualActionWrapper:\n"
        f"    base_policy: {base}\n    residual_scale: 0.5\n    append_base_action: true\n"
    )
    (run / "Pendulum-v1" / "args.yml").write_text("env: Pendulum-v1\n")
    return run / "Pendulum-v1.zip"


def test_distill_a_zoo_run_through_its_wrapper_with_a_filter_and_demonstrations(
    residual_zoo_run, pendulum_dataset, tmp_path, capsys
):
    out = tmp_path / "distilled.zip"
    argv = ["distill", str(residual_zoo_run), "--episodes", "2", "--top-fraction", "0.5", "--steps", "5"]
    argv += ["--demonstrations", str(pendulum_dataset), "--eval-episodes", "1", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "ResidualActionWrapper" in printed and "steered by a residual on its base's action" in printed
    assert "rollouts of the steered policy (residual): 2 episodes" in printed and "kept 1 " in printed
    assert "mixed with 20 demonstration episodes" in printed
    assert "evaluation over 1 episodes: steered " in printed and ", distilled " in printed
    model, name = load_any(out)
    # A FlowBC whose flow has the base's architecture (net_arch [8], K = 2) in the original spaces.
    assert name == "flow_bc" and model.policy.net_arch == [8] and model.policy.n_flow_steps == 2
    assert model.observation_space.shape == (3,) and float(model.action_space.high[0]) == 2.0


def test_distill_a_dsrl_na_model_on_the_raw_environment(saved_models, tmp_path, capsys):
    out = tmp_path / "distilled"
    argv = ["distill", str(saved_models["dsrl_na"]), "--episodes", "1", "--steps", "2", "--n-flow-steps", "3"]
    assert main([*argv, "--no-warm-start", "--eval-episodes", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "(dsrl_na) on Pendulum-v1, raw environment: steered in the environment's own action space" in printed
    assert f"wrote {out}.zip" in printed and "warm-started" not in printed and "evaluation" not in printed
    model, _ = load_any(out)
    assert model.policy.n_flow_steps == 3


def test_distill_refuses_an_agent_that_is_not_steered_in_one_line(tmp_path, capsys):
    SAC("MlpPolicy", "Pendulum-v1", buffer_size=10, policy_kwargs={"net_arch": [8]}).save(tmp_path / "sac.zip")
    assert main(["distill", str(tmp_path / "sac.zip"), "--out", str(tmp_path / "out.zip")]) == 2
    line = _one_error_line(capsys, "distill")
    assert "SAC is not a steered policy" in line and "--config" in line
    assert not (tmp_path / "out.zip").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--top-fraction", "1.5"], "argument --top-fraction: must be a number in (0, 1], got '1.5'"),
        (["--episodes", "0"], "argument --episodes: must be a positive integer, got '0'"),
        (["--min-return", "-100", "--top-fraction", "0.5"], "argument --top-fraction: not allowed with argument --min-return"),
    ],
)
def test_distill_rejects_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["distill", "agent.zip", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_distill_help_shows_its_defaults(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "250")
    with pytest.raises(SystemExit):
        main(["distill", "--help"])
    printed = capsys.readouterr().out
    assert "--episodes EPISODES   rollout episodes of the steered policy (default: 50)" in printed
    assert "FlowBC gradient steps (default: 5000)" in printed and "(default: None)" not in printed
