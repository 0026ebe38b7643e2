"""Output folders: deconv writes only into its own runs, never loses a user's file or an earlier run.

A folder is a deconv run folder when it holds ``deconv-run.json``, the manifest that names the
deconv version, the commands run into it and, per file deconv wrote there, the command that wrote
it. A command's outputs are built in ``.deconv-partial/`` inside the folder and moved into place
only when the command succeeds, so a failed run leaves the earlier one as it was. Only files the
manifest lists are ever replaced or deleted. One run at a time holds the folder's lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator, Sequence

from .. import __version__
from ..errors import OutputError
from ..figures.report import write_report
from ..io import write_json

__all__ = ["MANIFEST", "LOCK", "PARTIAL", "RunFolder", "open_run"]

MANIFEST = "deconv-run.json"
LOCK = ".deconv-lock"
PARTIAL = ".deconv-partial"
RESERVED = (MANIFEST, LOCK, PARTIAL)
STATE = "state"  # resumable scan states: kept in PARTIAL when a run is interrupted
ROOM = 255  # bytes of path a run's own files may add below the output folder (PARTIAL, sheets/, projections/)


def _files(root: Path) -> list[str]:
    """Relative POSIX paths of the files under ``root``."""
    if not root.is_dir():
        return []
    return sorted((Path(d) / f).relative_to(root).as_posix() for d, _, files in os.walk(root) for f in files)


class RunFolder:
    """The output folder ``path`` of one run of ``command``; the run writes into :attr:`partial`.

    ``markers`` are outputs whose presence means an earlier run of the same thing (refused unless
    ``overwrite`` or ``resume``); ``outputs`` are further files the run will write, checked up
    front. With ``replace_all`` a committed run replaces all files the command wrote before (its
    older sheets); otherwise it replaces only the files of the same names.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        command: str,
        *,
        markers: Sequence[str] = (),
        outputs: Sequence[str] = (),
        overwrite: bool = False,
        resume: bool = False,
        replace_all: bool = False,
    ) -> None:
        self.path = Path(path)
        self.partial = self.path / PARTIAL
        self.command = command
        self.markers, self.outputs = tuple(markers), tuple(outputs)
        self.overwrite, self.resume, self.replace_all = overwrite, resume, replace_all
        self.files: dict[str, str] = {}  # file -> the command that wrote it ("report": index.html, thumbs/)
        self.commands: list[str] = []  # the commands run into the folder, first run first
        self.report: Path | None = None

    def check(self) -> None:
        """Refuses, in one line, a folder that deconv may not write into; reads the manifest."""
        out = self.path
        if not out.exists():
            return
        try:
            entries = sorted(set(os.listdir(out)) - set(RESERVED))
        except OSError as error:
            raise OutputError(f"{out}: cannot read the output folder ({error.strerror or error})") from None
        self.commands, self.files = self._read_manifest()
        if entries and not (out / MANIFEST).is_file():
            raise OutputError(
                f"{out} holds files deconv did not write (such as {entries[0]!r}) and no {MANIFEST}; "
                "choose a new or empty folder for --out"
            )
        for name in (*self.markers, *self.outputs, "index.html"):
            if (out / name).exists() and not self._listed(name):
                raise OutputError(f"{out / name} was not written by deconv and would be replaced; choose another --out")
        marker = next((m for m in self.markers if self._listed(m) or (self.partial / m).exists()), None)
        if marker is not None and not (self.overwrite or self.resume):
            again = ", --resume to continue it" if STATE in self.markers else ""
            raise OutputError(
                f"{out} holds another {self.command} run ({marker}); "
                f"pass --overwrite to replace it{again} or choose another --out"
            )

    def _listed(self, name: str) -> bool:
        """Whether the manifest lists the file ``name`` or files in the folder ``name``."""
        return name in self.files or any(f.startswith(f"{name}/") for f in self.files)

    def _read_manifest(self) -> tuple[list[str], dict[str, str]]:
        path = self.path / MANIFEST
        if not path.is_file():
            return [], {}
        try:
            manifest = json.loads(path.read_bytes())
            commands, files = manifest["commands"], manifest["files"]
            assert all(isinstance(c, str) for c in commands)
            assert all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())
        except (OSError, ValueError, KeyError, TypeError, AttributeError, AssertionError):
            raise OutputError(
                f"{path}: damaged manifest; move the folder's files elsewhere or choose another --out"
            ) from None
        return list(commands), dict(files)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Holds the folder's advisory lock (released by the OS if the process dies); a second run is refused."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            raise OutputError(f"{self.path}: cannot write into the output folder ({error.strerror or error})") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                raise OutputError(
                    f"{self.path} is in use by another deconv run (process {holder}); "
                    "wait for it or choose another --out"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)

    def prepare(self) -> None:
        """Empties :attr:`partial` (keeping a resumable state when resuming, else seeding it from the
        finished run's) and checks that it is writable."""
        try:
            self.clear()
            self.partial.mkdir(parents=True, exist_ok=True)
            if self.resume and not (self.partial / STATE).exists() and (self.path / STATE).is_dir():
                shutil.copytree(self.path / STATE, self.partial / STATE)
            probe = self.partial / ".probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise OutputError(f"{self.path}: cannot write into the output folder ({error.strerror or error})") from None

    def clear(self) -> None:
        """Empties :attr:`partial` (removing it when empty), but keeps the state of a scan being resumed."""
        for entry in self.partial.iterdir() if self.partial.is_dir() else ():
            if not (self.resume and entry.name == STATE):
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        with contextlib.suppress(OSError):
            self.partial.rmdir()

    def commit(self) -> Path:
        """Moves the run's files into place, removes what they replace, writes the report and the
        manifest; returns the report's path. A crash part-way leaves every file of deconv listed."""
        out, new = self.path, _files(self.partial)
        clash = next((f for f in new if (out / f).exists() and f not in self.files), None)
        if clash is not None:
            raise OutputError(f"{out / clash} was not written by deconv and would be replaced; choose another --out")
        stale = {
            f
            for f, c in self.files.items()
            if self.replace_all and (c == self.command or (c == "report" and f.startswith("thumbs/")))
        }
        self.files.update({f: self.command for f in new})
        self._write_manifest()  # lists the old and the new files while both may be present
        for f in new:
            (out / f).parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.partial / f, out / f)
        for f in sorted(stale - set(new)):
            (out / f).unlink(missing_ok=True)
            del self.files[f]
            _remove_empty_parents(out / f, out)
        shutil.rmtree(self.partial, ignore_errors=True)
        thumbs = lambda: {f"thumbs/{f}" for f in _files(out / "thumbs")}  # noqa: E731
        users = {f for f in thumbs() if f not in self.files}
        self.report = write_report(out)
        self.files.update({f: "report" for f in ["index.html", *sorted(thumbs() - users)]})
        self._write_manifest()
        return self.report

    def _write_manifest(self) -> None:
        commands = list(dict.fromkeys([*self.commands, self.command]))
        write_json(
            self.path / MANIFEST,
            {"deconv": __version__, "commands": commands, "files": dict(sorted(self.files.items()))},
        )


def _size(root: Path) -> int:
    """The bytes of the files under ``root``."""
    return sum((root / f).stat().st_size for f in _files(root))


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


def _short(name: str) -> str:
    return repr(name if len(name) <= 40 else f"{name[:20]}...{name[-12:]}")


def check_length(path: Path) -> None:
    """``OutputError`` for an output folder whose name or path is longer than its file system holds
    (``NAME_MAX``; ``PATH_MAX`` less :data:`ROOM`, for the run's own files)."""
    absolute = Path(os.path.abspath(path))
    base = next(p for p in absolute.parents if os.path.isdir(p))
    name_max, path_max = os.pathconf(base, "PC_NAME_MAX"), os.pathconf(base, "PC_PATH_MAX")
    long = next((part for part in absolute.parts if len(os.fsencode(part)) > name_max), None)
    if long is not None:
        raise OutputError(
            f"--out: the name {_short(long)} is {len(os.fsencode(long))} bytes long; "
            f"the file system holds names of at most {name_max} bytes"
        )
    size = len(os.fsencode(absolute))
    if size > path_max - ROOM:
        raise OutputError(
            f"--out: the path {_short(str(path))} is {size} bytes long; with room for the run's files "
            f"it may be at most {path_max - ROOM} bytes (PATH_MAX {path_max})"
        )


def _remove_empty_parents(path: Path, root: Path) -> None:
    for parent in path.parents:
        if parent == root or not parent.is_relative_to(root):
            return
        try:
            parent.rmdir()
        except OSError:
            return


@contextlib.contextmanager
def open_run(run: RunFolder, main: bool = True, barrier: Callable[[], object] = lambda: None) -> Iterator[RunFolder]:
    """Locks, checks and prepares ``run``'s folder, yields, then commits: on an error or an interrupt
    the earlier run stays as it was and the partial outputs are removed, except a scan's state, kept
    for ``--resume``. Under torchrun only the ``main`` process locks and commits; all meet at ``barrier``
    once the partial folder is ready. A full disk is an ``OutputError`` saying how much space the run needs."""
    check_length(run.path)
    if run.path.exists() and not run.path.is_dir():
        raise OutputError(f"{run.path}: exists and is not a folder; choose a folder for --out")
    with run.lock() if main else contextlib.nullcontext():
        run.check()
        if main:
            run.prepare()
        barrier()
        try:
            yield run
        except KeyboardInterrupt:  # a scan's saved state stays for --resume; anything else goes
            if main and not (run.partial / STATE).exists():
                run.clear()
            raise
        except OSError as error:
            written = _size(run.partial) if main else 0
            if main:
                run.clear()
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            free = os.statvfs(run.path)
            raise OutputError(
                f"{run.path}: no space left on the device: the run needs more than the "
                f"{_mb(free.f_bavail * free.f_frsize)} free there (it had written {_mb(written)} when it filled); "
                "the folder is as it was; free some space or choose another --out"
            ) from None
        except BaseException:
            if main:
                run.clear()
            raise
        if main:
            run.commit()
