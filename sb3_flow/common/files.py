"""Files: resolving a saved path the way SB3 writes it, and saving atomically so that a failed save keeps the old file."""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import tempfile
import zipfile
from collections.abc import Iterable, Iterator


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
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


class AtomicSaveMixin:
    """
    ``save`` for SB3 algorithms that replaces the previous file only once the new one is complete (SB3's own
    ``save`` opens the final path for writing first, so an exception while pickling leaves a truncated file).
    Put it first among the bases: ``class Algo(AtomicSaveMixin, OffPolicyAlgorithm)``.
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
        if isinstance(path, io.IOBase):
            super().save(path, exclude=exclude, include=include)  # type: ignore[misc]
            return
        with atomic_target(with_suffix_if_missing(path, ".zip")) as temporary:
            super().save(temporary, exclude=exclude, include=include)  # type: ignore[misc]
