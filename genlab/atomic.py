"""Writing files and folders so that a crash, a kill -9 or a full disk never leaves half of one.

A file is written beside its target and renamed into place (``os.replace`` is atomic on one
filesystem); a folder is written as ``NAME.tmp`` and renamed to ``NAME`` once its last file (its
*marker*) is written. Readers therefore never see a ``.tmp`` folder as a result, and
``complete_dirs`` lists only folders whose marker is present. A folder one process is writing (a run
being trained, an eval's report folder) is locked against a second one (``FolderLock``).
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

TMP_SUFFIX = ".tmp"
OLD_SUFFIX = ".old"


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def recover_dir(final: Path) -> None:
    """Undo what a crash in the middle of ``atomic_dir`` left: a half-written ``NAME.tmp`` is
    removed, and ``NAME.old`` (the previous version, moved aside just before the new one was
    renamed in) is put back if ``NAME`` is missing."""
    old = final.with_name(final.name + OLD_SUFFIX)
    if old.is_dir() and not final.exists():
        old.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(final.with_name(final.name + TMP_SUFFIX), ignore_errors=True)


@contextmanager
def atomic_dir(final: Path):
    """Yield a temporary folder; when the block ends without an error it replaces ``final``.

    The previous ``final`` is moved aside before the new one is renamed in and deleted after, so at
    every instant either the old or the new folder is whole on disk (``recover_dir`` restores the
    old one if the process dies between the two renames).
    """
    final = Path(final)
    recover_dir(final)
    tmp = final.with_name(final.name + TMP_SUFFIX)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(final.name + OLD_SUFFIX)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def complete_dirs(parent: Path, pattern: str, marker: str) -> list[Path]:
    """Folders in ``parent`` matching ``pattern`` that hold ``marker`` (the file written last),
    sorted by name; ``.tmp`` and ``.old`` leftovers of an interrupted write are never listed."""
    if not parent.is_dir():
        return []
    return sorted(
        p for p in parent.glob(pattern)
        if p.is_dir() and not p.name.endswith((TMP_SUFFIX, OLD_SUFFIX)) and (p / marker).is_file()
    )


def remove_leftovers(parent: Path) -> list[Path]:
    """Delete the ``.tmp`` folders of interrupted writes in ``parent`` (restoring any ``.old``);
    call only while holding the run's lock. Returns what was removed."""
    if not parent.is_dir():
        return []
    removed = []
    for p in sorted(parent.iterdir()):
        if p.name.endswith(OLD_SUFFIX):
            recover_dir(p.with_name(p.name[: -len(OLD_SUFFIX)]))
            removed.append(p)
        elif p.name.endswith(TMP_SUFFIX) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


@contextmanager
def signals_deferred(message: str = "saving; it stops as soon as the save is complete"):
    """Hold Ctrl-C and SIGTERM while the block runs (a save that must not be cut in half).

    A signal that arrives meanwhile is noted with one line on stderr and recorded in the list the
    block receives: the caller stops after the save if it was asked to (or ignores it if it is
    stopping anyway). Outside the main thread Python cannot install signal handlers, and the block
    runs unprotected.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def note(signum, frame):
        if not received:
            os.write(2, f"\n{signal.Signals(signum).name} received while {message}\n".encode())
        received.append(signum)

    # a signal the process ignores (SIGINT of a background job) stays ignored
    previous = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class FolderLock:
    """An exclusive lock on a folder while one process writes it: the lock file holds that process's
    PID under an OS lock (flock), which the kernel releases when the process dies, however it dies, so
    a lock file left by a killed process (a dead PID) is simply taken over. ``busy(pid)`` is the
    one-sentence error for a folder another live process holds. Where the filesystem has no locks,
    the work goes on unlocked. A context manager, or ``acquire()`` and ``release()``."""

    def __init__(self, path: Path, busy):
        self.path, self.busy = Path(path), busy
        self.fd = None

    def acquire(self) -> None:
        from .errors import GenlabError

        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise GenlabError(f"cannot write {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise GenlabError(self.busy(holder)) from None
        except OSError:  # no locks on this filesystem (some network mounts)
            pass
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock; the file stays (removing it would race a newcomer)
            self.fd = None

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def check_writable_dir(folder: Path, option: str) -> Path:
    """Make sure ``folder`` can be created or replaced before long work is done for it (``os.access``
    says yes to root on a read-only mount; trying is the only sure test)."""
    import tempfile

    from .errors import GenlabError

    folder = Path(folder).expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise GenlabError(f"cannot write {folder}: it is a file; choose another {option}")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    except OSError as exc:
        raise GenlabError(f"cannot write {folder}: {exc.strerror or exc}; choose another {option}") from None
    return folder
