"""Which process of which machine wrote a file: the names that the run lock and the temporary
files of a checkpoint save carry, and whether the process that wrote one is still running."""
import os
import re
import socket

__all__ = ["this_host", "process_alive", "dead_on_this_host", "writer_tag", "writer_of_tag", "written_by_dead_process"]

# a host name as it can stand in a file name (host names are letters, digits, "-" and ".")
_UNSAFE = re.compile(r"[^A-Za-z0-9.-]")
_TAG = re.compile(r"(?P<host>[A-Za-z0-9.-]+)-(?P<pid>\d+)-(?P<token>[0-9a-f]{8})$")


def this_host() -> str:
    """This machine's host name, reduced to the characters a file name may hold."""
    return _UNSAFE.sub("_", socket.gethostname()) or "localhost"


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (signal 0: nothing is sent). A process of
    another user counts as running."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dead_on_this_host(host: str, pid: int) -> bool:
    """Whether process ``pid`` of ``host`` is provably gone: ``host`` is this machine and the pid
    does not run. Another machine's process cannot be checked from here: False."""
    return host == this_host() and not process_alive(pid)


def writer_tag() -> str:
    """``<host>-<pid>-<8 hex digits>``: unique to this process and call, so that processes writing
    into one folder never share a file name."""
    return f"{this_host()}-{os.getpid()}-{os.urandom(4).hex()}"


def writer_of_tag(tag: str):
    """(host, pid) of a :func:`writer_tag`, or None for a string that is not one."""
    match = _TAG.match(tag)
    return (match["host"], int(match["pid"])) if match else None


def written_by_dead_process(tag: str) -> bool:
    """Whether ``tag`` (:func:`writer_tag`) names a process of this machine that no longer runs.
    False for another machine's process or a string that is not a tag: neither can be proven dead."""
    writer = writer_of_tag(tag)
    return writer is not None and dead_on_this_host(*writer)
