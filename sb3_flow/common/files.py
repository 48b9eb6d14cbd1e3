"""Files: resolving a saved path the way SB3 writes it, and saving atomically so that a failed save keeps the old file."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import gymnasium as gym
from stable_baselines3.common.save_util import json_to_data

# Attribute a model file records the algorithm's class name under (SB3 saves the attributes of the model).
SAVED_BY_KEY = "saved_by"
SelfModelFile = TypeVar("SelfModelFile", bound="ModelFileMixin")


def with_suffix_if_missing(path: str | os.PathLike, suffix: str) -> str:
    """
    The path a writer that appends a missing suffix really writes (SB3's ``save`` adds ``.zip``, numpy's ``savez``
    adds ``.npz`` to a name without a suffix).

    :param path: the path as given
    :param suffix: e.g. ".zip"
    """
    path = os.fspath(path)
    return path if pathlib.Path(path).suffix else f"{path}{suffix}"


def existing_file(path: str | os.PathLike, suffix: str | None = None, what: str = "saved file") -> str:
    """
    The file a user means: ``path`` itself, or ``path + suffix`` when only that exists (``model.save("x")`` writes
    ``x.zip``).

    :param path: the path as given
    :param suffix: the suffix a writer may have added
    :param what: what the file should hold, for the error message
    :raises FileNotFoundError: when neither exists
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        return path
    if suffix is not None and os.path.isfile(f"{path}{suffix}"):
        return f"{path}{suffix}"
    tried = path if suffix is None or path.endswith(suffix) else f"{path} or {path}{suffix}"
    raise FileNotFoundError(f"No {what} at {tried}")


def is_model_zip(path: str | os.PathLike) -> bool:
    """True for an SB3 model zip (it holds a JSON ``data`` member), False for anything else (e.g. ``policy.save``)."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            return "data" in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike) -> Iterator[str]:
    """
    Yield a temporary path in the same folder as ``path``; once the block finishes without error the temporary file
    replaces ``path`` in one ``os.replace``, so a save that fails half-way leaves the previous file as it was.

    :param path: the final path (with its suffix: the writer must not append one to the temporary path)
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = pathlib.Path(path).suffix
    handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=f".tmp{suffix}", dir=folder)
    os.close(handle)
    # mkstemp makes the file owner-only; a saved file gets the permissions a plain open() would give it.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def read_saved_numbers(path: str, names: tuple[str, ...]) -> dict[str, float]:
    """
    Plain numeric attributes of an SB3 model zip (e.g. its ``gamma``), read from its ``data`` member without unpickling
    anything; names that are missing or not plain numbers are left out.

    :param path: an existing model zip
    :param names: attribute names
    """
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data").decode())
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, UnicodeDecodeError, ValueError):
        return {}
    return {
        name: data[name] for name in names if isinstance(data.get(name), (int, float)) and not isinstance(data.get(name), bool)
    }


def read_model_identity(path: str, custom_objects: dict[str, Any] | None = None) -> dict[str, Any]:
    """
    Which algorithm wrote an SB3 model zip: its ``saved_by`` record (plain JSON) and its ``policy_class``, read from
    the zip's ``data`` member without unpickling anything else (SB3's ``load`` unpickles the rest, honouring
    ``custom_objects``).

    Unpickling the policy class imports the module it names: only read files you trust, as with SB3's own ``load``.

    :param path: an existing file
    :param custom_objects: objects that replace saved ones (a ``policy_class`` given here is not unpickled)
    :return: the keys found among ``saved_by`` and ``policy_class`` (a policy class that cannot be read is left out)
    :raises ValueError: naming the file, when it is not a readable SB3 model zip (truncated, corrupt, foreign)
    """
    try:
        with zipfile.ZipFile(path) as archive:
            if "data" not in archive.namelist():
                raise ValueError(f"{path} is a zip archive but not an SB3 model zip (it has no 'data' member)")
            data = json.loads(archive.read("data").decode())
    except ValueError:
        raise
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a readable SB3 model zip (truncated or corrupt?): {error}") from error
    identity: dict[str, Any] = {}
    if isinstance(data.get(SAVED_BY_KEY), str):
        identity[SAVED_BY_KEY] = data[SAVED_BY_KEY]
    if custom_objects and "policy_class" in custom_objects:
        identity["policy_class"] = custom_objects["policy_class"]
    elif "policy_class" in data:
        # An unreadable class is left out: SB3's load reports it (or custom_objects replaces it).
        with contextlib.suppress(Exception):
            identity.update(json_to_data(json.dumps({"policy_class": data["policy_class"]})))
    return identity


def _algorithm_mismatch(cls: type, data: dict[str, Any]) -> str | None:
    """Why a file's data was not written by ``cls`` (None when it fits)."""
    saved_by = data.get(SAVED_BY_KEY)
    if saved_by is not None:
        if saved_by in {klass.__name__ for klass in cls.__mro__}:
            return None
        return f"a {saved_by} model, not a {cls.__name__} model: load it with {saved_by}.load"
    policy_class = data.get("policy_class")
    expected = tuple(getattr(cls, "policy_aliases", {}).values())
    if expected and not (isinstance(policy_class, type) and issubclass(policy_class, expected)):
        name = getattr(policy_class, "__name__", policy_class)
        return f"a model whose policy is {name}, not a {cls.__name__} model (its policies: {[k.__name__ for k in expected]})"
    return None


# Attribute under which a model zip records its policy's test-time knobs (``policy.test_time_knobs()``) at save time.
TEST_TIME_KNOBS_KEY = "policy_test_time_knobs"


class ModelFileMixin:
    """
    Model files for SB3 algorithms, as users expect them. Put it first among the bases:
    ``class Algo(ModelFileMixin, OffPolicyAlgorithm)``.

    - ``save`` replaces the previous file only once the new one is complete (SB3's own ``save`` opens the final path
      for writing first, so an exception while pickling leaves a truncated file), and records which algorithm wrote it;
    - ``load`` finds ``path.zip`` for ``path`` as ``save`` does, accepts an env id as SB3's constructors do, and turns a
      missing, truncated, corrupt or foreign file (another algorithm's model) into an error naming the file and what it
      holds, before anything is built from it.
    """

    def save(
        self,
        path: str | os.PathLike | io.BufferedIOBase,
        exclude: Iterable[str] | None = None,
        include: Iterable[str] | None = None,
    ) -> None:
        """
        Save all the attributes of the object and the model parameters in a zip-file (see SB3's ``save``).

        :param path: path to the file (``.zip`` is appended when it has no suffix, as SB3 does), or a file object
        :param exclude: names of parameters that should be excluded in addition to the default ones
        :param include: names of parameters that might be excluded but should be included anyway
        """
        setattr(self, SAVED_BY_KEY, type(self).__name__)
        # The policy is rebuilt from policy_kwargs on load: the test-time knobs it holds now (a guidance weight changed
        # since it was built, best-of-N's N) are recorded beside them and set again by ``load``, so that the loaded
        # model acts as the saved one (policy_kwargs stay what the user passed: SB3's load compares them).
        policy_test_time_knobs = getattr(getattr(self, "policy", None), "test_time_knobs", None)
        setattr(self, TEST_TIME_KNOBS_KEY, policy_test_time_knobs() if policy_test_time_knobs is not None else {})
        if isinstance(path, io.IOBase):
            super().save(path, exclude=exclude, include=include)  # type: ignore[misc]
            return
        with atomic_target(with_suffix_if_missing(path, ".zip")) as temporary:
            super().save(temporary, exclude=exclude, include=include)  # type: ignore[misc]

    @classmethod
    def load(
        cls: type[SelfModelFile],
        path: str | os.PathLike | io.BufferedIOBase,
        env: Any = None,
        device: Any = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        **kwargs: Any,
    ) -> SelfModelFile:
        """
        Load a model saved with ``save`` (see SB3's ``load``).

        :param path: the file (``.zip`` may be left out), or a file object
        :param env: the environment to run the loaded model on, or its id (None: prediction only)
        :param device: device to load on
        :param custom_objects: objects that replace saved ones instead of being unpickled
        :param print_system_info: print the saving and the current system's versions
        :param force_reset: reset the environment before the next ``learn``
        :param kwargs: attributes to change on load
        :raises FileNotFoundError: when there is no such file
        :raises ValueError: when the file is not a readable model of this algorithm
        """
        if not isinstance(path, io.IOBase):
            path = existing_file(path, ".zip", what=f"saved {cls.__name__} model")
            mismatch = _algorithm_mismatch(cls, read_model_identity(path, custom_objects))
            if mismatch is not None:
                raise ValueError(f"{path} holds {mismatch}")
        if isinstance(env, str):
            env = gym.make(env)
        model = super().load(  # type: ignore[misc]
            path,
            env=env,
            device=device,
            custom_objects=custom_objects,
            print_system_info=print_system_info,
            force_reset=force_reset,
            **kwargs,
        )
        for name, value in (getattr(model, TEST_TIME_KNOBS_KEY, None) or {}).items():
            setattr(model.policy, name, value)
        return model
