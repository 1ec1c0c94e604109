"""Checks of output paths (the run folder, ``--output`` files), made before any data set or model is built.

A run that fails after an hour of data loading because its folder cannot be written wastes the hour; so the
engine and the CLI ask here first: the path has no NUL byte, is not too long, does not go through a file
(``/dev/null/run``), and its nearest existing folder accepts a new entry (tried for real, with a temporary folder
that is removed at once: permission bits alone do not tell about read-only mounts or root). In an existing run
folder, the entries jepaflow writes must have the right kind (``metrics.jsonl`` a file, ``checkpoints`` a
folder).

Standard library only.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

from jepaflow.errors import OutputPathError, clip, short

#: run-folder entries jepaflow writes, and whether each is a folder
RUN_ENTRIES: dict[str, bool] = {
    "checkpoints": True,
    "checkpoints/last.pt": False,
    "metrics.jsonl": False,
    "recipe.yaml": False,
    "env.json": False,
    "summary.json": False,
    "curves.png": False,
    "probe.json": False,
}


def _fail(problem: str, fix: str) -> OutputPathError:
    return OutputPathError(problem, fix)


def _check_text(text: str, what: str) -> None:
    if not text or not text.strip():
        raise _fail(f"the {what} path is empty", f"name the {what} (an empty path would mean the current folder)")
    if "\0" in text:
        raise _fail(f"the {what} path contains a NUL byte ({short(text)})", "remove it from the path")
    raw = os.fsencode(text)
    path_max = 4096
    if len(os.fsencode(os.path.abspath(text))) >= path_max:
        raise _fail(f"the {what} path is {len(raw):,} bytes long, over the system's limit ({path_max:,})",
                    "choose a shorter path")
    for part in Path(text).parts:
        if len(os.fsencode(part)) > 255:
            raise _fail(f"the {what} path has a component of {len(os.fsencode(part))} bytes "
                        f"({short(part, 40)}), over the file system's limit (255)", "choose shorter names")


def _nearest_existing(path: Path, what: str) -> Path:
    """The deepest existing ancestor of ``path`` (``path`` itself if it exists); every existing step must be a
    folder."""
    probe = Path(os.path.abspath(path))
    chain = [probe, *probe.parents]
    for candidate in chain:
        try:
            st = os.stat(candidate)
        except FileNotFoundError:
            continue
        except NotADirectoryError:
            continue  # a parent is a file: found when the loop reaches it
        except OSError as exc:
            raise _fail(f"cannot look at {clip(str(candidate), 300)} for the {what}: {exc.strerror or exc}",
                        "choose another path") from None
        if not stat.S_ISDIR(st.st_mode):
            kind = "a file" if stat.S_ISREG(st.st_mode) else "not a folder (a device, pipe or socket)"
            if candidate == probe:
                raise _fail(f"the {what} {clip(str(path), 300)} is {kind}",
                            f"choose a folder for the {what}, or remove the file")
            raise _fail(f"the {what} {clip(str(path), 300)} goes through {clip(str(candidate), 300)}, which is {kind}",
                        "choose a path made of folders")
        return candidate
    return Path(probe.anchor)


def _check_writable(folder: Path, what: str, target: Path) -> None:
    """Create and remove a temporary folder in ``folder``: the only sure test of writability."""
    if not os.access(folder, os.W_OK | os.X_OK):
        raise _fail(f"cannot write the {what} {clip(str(target), 300)}: {clip(str(folder), 300)} is not writable "
                    "(permission denied)", "choose a folder you can write to, or fix its permissions")
    try:
        tmp = tempfile.mkdtemp(prefix=".jepaflow-write-test-", dir=folder)
    except OSError as exc:
        reason = {errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                  errno.EPERM: "permission denied", errno.ENOSPC: "no space left on the device",
                  errno.EDQUOT: "disk quota exceeded"}.get(exc.errno or -1, exc.strerror or str(exc))
        raise _fail(f"cannot write the {what} {clip(str(target), 300)} in {clip(str(folder), 300)}: {reason}",
                    "choose another folder") from None
    os.rmdir(tmp)


def check_output_dir(path: str | os.PathLike, what: str = "run folder") -> Path:
    """``path`` as a Path, once it is known that a folder can be created (or exists) and written there.
    In an existing folder, :data:`RUN_ENTRIES` present must have the kind jepaflow writes."""
    text = os.fspath(path)
    _check_text(text, what)
    folder = Path(text)
    existing = _nearest_existing(folder, what)
    _check_writable(existing, what, folder)
    if existing == Path(os.path.abspath(folder)):
        for name, is_dir in RUN_ENTRIES.items():
            entry = folder / name
            try:
                st = os.stat(entry)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode) != is_dir or (not is_dir and not stat.S_ISREG(st.st_mode)):
                want = "a folder" if is_dir else "a file"
                raise _fail(f"{clip(str(entry), 300)} in the {what} is not {want}, but jepaflow writes {want} there",
                            f"move it away, or choose another {what}")
            if not is_dir and not os.access(entry, os.W_OK):
                raise _fail(f"{clip(str(entry), 300)} in the {what} is not writable", "fix its permissions")
        if (folder / "checkpoints").is_dir():
            _check_writable(folder / "checkpoints", what, folder)
    return folder


def check_output_file(path: str | os.PathLike, suffixes: tuple[str, ...], what: str = "--output") -> Path:
    """``path`` as a Path, once it is known that the file can be written: its name ends with one of ``suffixes``
    (the format is chosen by it), it is not a folder or a device, and its folder exists or can be created and
    is writable."""
    text = os.fspath(path)
    _check_text(text, what)
    file = Path(text)
    if file.suffix.lower() not in suffixes:
        raise _fail(f"the {what} {clip(text, 300)} does not end with {' or '.join(suffixes)}",
                    f"name the file with that extension, e.g. {file.stem or 'out'}{suffixes[0]}")
    try:
        st = os.stat(file)
    except OSError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a device, pipe or socket)"
        raise _fail(f"the {what} {clip(text, 300)} is {kind}", "name a file to write")
    if st is not None and not os.access(file, os.W_OK):
        raise _fail(f"the {what} {clip(text, 300)} exists and is not writable", "choose another file name")
    parent = _nearest_existing(file.parent if str(file.parent) else Path("."), what)
    _check_writable(parent, what, file)
    return file


__all__ = ["RUN_ENTRIES", "check_output_dir", "check_output_file"]
