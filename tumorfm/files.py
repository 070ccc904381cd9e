"""Writing outputs so that nothing is ever half-written: a reader (or a rerun after a kill) sees
the old version or the new one, never a mix."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tumorfm.errors import TumorFMError


def make_public(path: str | os.PathLike, directory: bool = False) -> None:
    """The mode a plain open() would give (mkstemp/mkdtemp make files private to their owner)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if directory else 0o666) & ~mask)


@contextmanager
def atomic_file(path: Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside `path`; on success it replaces `path`, on an error it is removed."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        make_public(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Write text atomically: a reader sees the old file or the new one, never half of one."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (temporary file in the same folder, then a rename)."""
    write_text(path, json.dumps(data, indent=2))


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object whose keys are unique: json keeps the last of two silently."""
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"key '{key}' appears twice")
        seen[key] = value
    return seen


def read_json(path: Path) -> object:
    """The JSON in `path`, or one line saying why not (unreadable, not UTF-8, not JSON, a key
    given twice in one object)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_unique_keys)
    except OSError as error:
        raise TumorFMError(f"{path}: cannot read ({error.strerror})") from None
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
        raise TumorFMError(f"{path}: not valid JSON ({error})") from None


def read_json_object(path: Path, needed_for: str) -> dict:
    """A JSON object from `path`, or one line saying why not (`needed_for` explains the file)."""
    if not path.is_file():
        raise TumorFMError(f"{path}: missing; {needed_for}")
    data = read_json(path)
    if not isinstance(data, dict):
        raise TumorFMError(f"{path}: expected a JSON object at the top level")
    return data


def ensure_writable(folder: Path) -> Path:
    """Create `folder` or fail with one line naming it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-")
        probe.close()
    except OSError as error:
        raise TumorFMError(f"{folder}: cannot write output here ({error.strerror})") from None
    return folder


def previous(final: Path) -> Path:
    """Where `atomic_folder` keeps the old version during the swap (see has_state)."""
    return final.parent / f".{final.name}.old"


@contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """Fill a temporary folder beside `final`; on success it replaces `final`.

    The swap is two renames (final -> .final.old, temporary -> final), so a kill at any moment
    leaves either `final` or `.final.old` complete; on an error the temporary folder is removed
    and `final` is untouched.
    """
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    except OSError as error:
        raise TumorFMError(f"{final}: cannot write here ({error.strerror})") from None
    try:
        yield tmp
        make_public(tmp, directory=True)
        old = previous(final)
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
