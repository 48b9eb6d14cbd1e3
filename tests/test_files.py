"""Files: saves that never destroy the previous file, loads that find what save wrote and name what a wrong file holds."""

import base64
import json
import os
import pathlib
import stat
import sys
import types
import zipfile

import cloudpickle
import numpy as np
import pytest
import torch as th

from sb3_flow import DSRLNA, Demonstrations, FlowBC, FlowPolicy, FlowPPO, GaussianBC, GaussianPolicy, ReinFlow
from tests.helpers import BimodalEnv, bimodal_demonstrations

TINY = {"net_arch": [8]}


def _fail_after_writing(*args, **kwargs):
    # Writes part of the output first, as a real failure half-way (disk full, a pickling error) does.
    target = args[1] if len(args) > 1 else args[0]
    if hasattr(target, "write"):
        target.write(b"partial")
    raise OSError("simulated failure while writing")


def _flow_ppo():
    return FlowPPO("MlpPolicy", BimodalEnv(), n_steps=16, batch_size=16, policy_kwargs=TINY, seed=0)


def test_failed_model_save_keeps_the_previous_file(tmp_path, monkeypatch):
    model = _flow_ppo()
    path = tmp_path / "model.zip"
    model.save(path)
    before = path.read_bytes()
    monkeypatch.setattr(th, "save", _fail_after_writing)
    with pytest.raises(OSError, match="simulated failure"):
        model.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.zip"]  # no temporary file left behind
    monkeypatch.undo()
    FlowPPO.load(path)


def test_failed_policy_save_keeps_the_previous_file(tmp_path, monkeypatch):
    policy = _flow_ppo().policy
    path = tmp_path / "policy.pth"
    flow = FlowPolicy(policy.observation_space, policy.action_space, lambda _: 1e-3, net_arch=[8])
    flow.save(path)
    before = path.read_bytes()
    monkeypatch.setattr(th, "save", _fail_after_writing)
    with pytest.raises(OSError, match="simulated failure"):
        flow.save(path)
    assert path.read_bytes() == before


def test_failed_demonstrations_save_keeps_the_previous_file(tmp_path, monkeypatch):
    demos = bimodal_demonstrations(100)
    path = tmp_path / "demos.npz"
    demos.save(path)
    before = path.read_bytes()
    monkeypatch.setattr(np, "savez_compressed", _fail_after_writing)
    with pytest.raises(OSError, match="simulated failure"):
        demos.save(path)
    assert path.read_bytes() == before


def test_demonstrations_load_finds_the_npz_that_save_wrote(tmp_path):
    demos = bimodal_demonstrations(100)
    written = demos.save(tmp_path / "demos")
    assert written == str(tmp_path / "demos.npz")
    loaded = Demonstrations.load(tmp_path / "demos")
    np.testing.assert_array_equal(loaded.actions, demos.actions)


def test_demonstrations_with_a_bad_crc_give_a_clear_error(tmp_path):
    path = tmp_path / "demos.npz"
    bimodal_demonstrations(500).save(path)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        member = archive.getinfo("observations.npy")
    # Flip bytes inside one member's compressed data: the zip directory stays readable, decompression or the CRC fails.
    data_start = member.header_offset + 30 + len(member.filename) + len(member.extra)
    for offset in range(member.compress_size // 2, member.compress_size // 2 + 16):
        raw[data_start + offset] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"demos\.npz is not a readable demonstrations"):
        Demonstrations.load(path)


@pytest.mark.parametrize("algorithm", [FlowBC, GaussianBC])
def test_bc_save_keeps_the_optimizer_state(tmp_path, algorithm):
    model = algorithm("MlpPolicy", BimodalEnv(), bimodal_demonstrations(200), batch_size=32, policy_kwargs=TINY, seed=0)
    model.learn(20)
    model.save(tmp_path / "bc")
    loaded = algorithm.load(tmp_path / "bc", env=BimodalEnv())
    saved_state = model.policy.optimizer.state_dict()["state"]
    loaded_state = loaded.policy.optimizer.state_dict()["state"]
    assert saved_state.keys() == loaded_state.keys() and len(saved_state) > 0
    for key in saved_state:
        assert th.equal(saved_state[key]["exp_avg_sq"], loaded_state[key]["exp_avg_sq"])


def test_flow_bc_loads_with_an_env_id(tmp_path, pendulum_demos):
    model = FlowBC("MlpPolicy", "Pendulum-v1", pendulum_demos, policy_kwargs=TINY, seed=0)
    model.save(tmp_path / "flow_bc")
    loaded = FlowBC.load(tmp_path / "flow_bc", env="Pendulum-v1")
    assert loaded.env is not None and loaded.env.observation_space.shape == (3,)
    loaded.set_demonstrations(pendulum_demos)
    loaded.learn(2)


def test_a_model_zip_of_another_algorithm_is_named(tmp_path):
    _flow_ppo().save(tmp_path / "flow_ppo")
    reinflow = ReinFlow("MlpPolicy", BimodalEnv(), n_steps=16, batch_size=16, policy_kwargs=TINY, seed=0)
    reinflow.save(tmp_path / "reinflow")
    with pytest.raises(ValueError, match=r"reinflow\.zip holds a ReinFlow model, not a FlowPPO model: load it with ReinFlow"):
        FlowPPO.load(tmp_path / "reinflow")
    for algorithm in (FlowBC, DSRLNA, ReinFlow):
        with pytest.raises(ValueError, match=f"holds a FlowPPO model, not a {algorithm.__name__} model"):
            algorithm.load(tmp_path / "flow_ppo")


def test_a_truncated_model_zip_is_named(tmp_path):
    path = tmp_path / "model.zip"
    _flow_ppo().save(path)
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ValueError, match=r"truncated\.zip is not a readable SB3 model zip"):
        FlowPPO.load(truncated)
    with pytest.raises(FileNotFoundError, match=r"No saved FlowPPO model at .*missing or .*missing\.zip"):
        FlowPPO.load(tmp_path / "missing")


def test_policy_files_load_their_weights_without_pickle(tmp_path, monkeypatch):
    policy = FlowPolicy(BimodalEnv().observation_space, BimodalEnv().action_space, lambda _: 1e-3, net_arch=[8])
    policy.save(tmp_path / "policy.pth")
    calls = []
    real_load = th.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(th, "load", recording_load)
    loaded = FlowPolicy.load(tmp_path / "policy.pth")
    assert calls == [True]
    obs = np.zeros((4, 2), np.float32)
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], policy.predict(obs, deterministic=True)[0])
    with pytest.raises(ValueError, match="holds a FlowPolicy, not a GaussianPolicy"):
        GaussianPolicy.load(tmp_path / "policy.pth")


class _Payload:
    """Pickles as a call that creates a marker file: what a crafted file would run on load."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_a_crafted_policy_file_does_not_run_its_payload(tmp_path):
    marker = tmp_path / "payload_ran"
    th.save({"state_dict": _Payload(marker), "data": {}}, tmp_path / "crafted.pth")
    with pytest.raises(ValueError, match="need pickle to load, which runs any code"):
        FlowPolicy.load(tmp_path / "crafted.pth")
    assert not marker.exists()


def test_saved_files_get_the_usual_permissions(tmp_path):
    _flow_ppo().save(tmp_path / "model.zip")
    bimodal_demonstrations(20).save(tmp_path / "demos.npz")
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.zip", "demos.npz"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask


def _pickled_function_of_a_missing_module() -> str:
    """What SB3 stores for a schedule defined in a module the loading machine does not have."""
    module = types.ModuleType("sb3_flow_test_missing_module")
    exec("def schedule(progress):\n    return 1e-3", module.__dict__)
    sys.modules[module.__name__] = module
    try:
        return base64.b64encode(cloudpickle.dumps(module.schedule)).decode()
    finally:
        del sys.modules[module.__name__]


def test_a_model_zip_loads_with_custom_objects_for_what_cannot_be_unpickled(tmp_path):
    path = tmp_path / "model.zip"
    _flow_ppo().save(path)
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    data = json.loads(members["data"])
    data["lr_schedule"][":serialized:"] = _pickled_function_of_a_missing_module()
    members["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(tmp_path / "other_machine.zip", "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    # SB3's documented workaround for files from another machine: the unreadable entry is replaced, nothing unpickled.
    loaded = FlowPPO.load(tmp_path / "other_machine.zip", custom_objects={"lr_schedule": lambda _: 1e-4})
    assert loaded.predict(np.zeros(2, np.float32), deterministic=True)[0].shape == (1,)
