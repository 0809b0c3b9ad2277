"""One run at a time in an output folder.

Two runs writing into one ``OUTPUT_DIR`` overwrite each other's checkpoints, ``config.yaml``,
``log.txt`` and metrics, and the result is a folder whose files come from different runs. The
main process of a run (global rank 0) therefore takes ``OUTPUT_DIR/.protoseg_run.lock`` before it
writes anything there and removes it when it ends (also on an exception). The file names its
holder (host, pid, start time, command), so a second run is refused with a message that says who
holds the folder. A lock whose process is gone (same host, pid not running: a run killed with
``kill -9`` or a crashed machine's restart) is taken over with a warning; one of another host
cannot be checked from here and is reported, with how to remove it.

Creating the file is atomic (``O_EXCL``); the check-and-take-over of a stale lock runs under an
``flock`` of the folder, so two runs starting together on one host never both take it.
"""
import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import shlex
import sys
from typing import Optional

from detectron2.utils import comm

from ..processes import dead_on_this_host, this_host

__all__ = ["LOCK_NAME", "OutputDirInUseError", "RunLock", "output_dir_lock"]

logger = logging.getLogger("protoseg")

LOCK_NAME = ".protoseg_run.lock"


class OutputDirInUseError(RuntimeError):
    """Another run holds the output folder."""


class RunLock:
    """The lock file of ``output_dir`` (:data:`LOCK_NAME`), held by this process between
    :meth:`acquire` and :meth:`release` (or as a context manager)."""

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, LOCK_NAME)
        self.holder = {
            "host": this_host(),
            "pid": os.getpid(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": shlex.join([sys.executable, *sys.argv]),
            "token": os.urandom(8).hex(),
        }
        self.held = False

    def acquire(self) -> None:
        """Take the lock, or take over a stale one (with a warning).

        Raises:
            OutputDirInUseError: another live run (or a run of another host) holds it.
        """
        with _folder_guard(os.path.dirname(self.path)):
            try:
                self._create()
            except FileExistsError:
                other = self._read()
                if other is None or not _is_stale(other):
                    raise OutputDirInUseError(self._refusal(other)) from None
                logger.warning(
                    "%s was left by a run that no longer runs (%s); this run takes the folder over",
                    self.path, _describe(other),
                )
                self._replace()
        self.held = True

    def release(self) -> None:
        """Remove the lock file, if it is still this run's."""
        if not self.held:
            return
        self.held = False
        with _folder_guard(os.path.dirname(self.path)):
            current = self._read()
            if current is not None and current.get("token") == self.holder["token"]:
                os.remove(self.path)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        return False

    def _create(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w") as f:
            json.dump(self.holder, f)

    def _replace(self) -> None:
        """Write this run's lock over a stale one (a rename: the file never disappears, so a run
        of another host that creates it meanwhile still finds it taken)."""
        tmp = f"{self.path}.{self.holder['host']}-{self.holder['pid']}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.holder, f)
        os.replace(tmp, self.path)

    def _read(self) -> Optional[dict]:
        """The holder the lock file names, or None if it cannot be read as one."""
        try:
            with open(self.path) as f:
                holder = json.load(f)
        except (OSError, ValueError):  # gone, unreadable or not JSON
            return None
        return holder if isinstance(holder, dict) else None

    def _refusal(self, other: Optional[dict]) -> str:
        folder = os.path.dirname(self.path)
        who = _describe(other) if other is not None else "a holder that cannot be read"
        text = (
            f"OUTPUT_DIR {folder} is in use by another run ({who}; lock file {self.path}). Two runs in one "
            f"folder overwrite each other's checkpoints, config.yaml, log and metrics: give this run another "
            f"OUTPUT_DIR (... OUTPUT_DIR path/to/other_dir)"
        )
        if other is not None and other.get("host") != this_host():
            text += (
                f". The holder runs on another host ({other.get('host')}), which cannot be checked from here: if it "
                f"has ended, delete {self.path}"
            )
        elif other is None:
            text += f". If no run uses the folder, delete {self.path}"
        else:  # a live pid of this host, which may have been reused by another program since
            text += f". If pid {other.get('pid')} is not that run any more, delete {self.path}"
        return text


def _describe(holder: dict) -> str:
    return (
        f"host {holder.get('host')}, pid {holder.get('pid')}, started {holder.get('started')}, "
        f"command: {holder.get('command')}"
    )


def _is_stale(holder: dict) -> bool:
    """Whether the holder's process is gone: of this host, its pid not running."""
    pid = holder.get("pid")
    return isinstance(pid, int) and dead_on_this_host(holder.get("host"), pid)


@contextlib.contextmanager
def _folder_guard(folder: str):
    """An exclusive ``flock`` of ``folder`` (where the file system supports it) for the duration."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:  # e.g. a network file system without flock: O_EXCL alone
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF):
                raise
        yield
    finally:
        os.close(fd)  # (closing releases the flock)


@contextlib.contextmanager
def output_dir_lock(output_dir: str):
    """Hold :class:`RunLock` of ``output_dir`` for the duration, in the global main process; the
    folder is created first. The other processes of a multi-process run lock nothing, and learn
    from the main process whether it got the lock (each then raises the same error rather than
    waiting for a main process that has stopped). Nothing is locked without ``output_dir``.

    Raises:
        OutputDirInUseError: another run holds the folder.
    """
    lock, refusal = None, None
    if output_dir and comm.is_main_process():
        os.makedirs(output_dir, exist_ok=True)
        lock = RunLock(output_dir)
        try:
            lock.acquire()
        except OutputDirInUseError as e:
            refusal = str(e)
    if comm.get_world_size() > 1:
        refusal = comm.all_gather(refusal)[0]  # the global main process's answer
    if refusal is not None:
        raise OutputDirInUseError(refusal)
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()
