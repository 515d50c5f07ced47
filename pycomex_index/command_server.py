"""A warm process that runs read commands for ``pycomex-index``, so a command does not pay Python's start-up.

Starting ``pycomex-index`` costs ~70 ms before any work: the interpreter,
click and the project's modules. With a daemon running, that is a third of
``list --select`` at 100,000 runs and most of ``tail``. The daemon's watcher
therefore starts a *command server*: a single-threaded process with those
modules imported, listening on a Unix socket in a folder only its user can
enter. The ``pycomex-index`` entry point (:mod:`pycomex_index.launch`) hands
a read command to it: its arguments, working folder, environment, umask and
its own stdin, stdout and stderr (the descriptors themselves, passed over the
socket). The server forks a worker that becomes that command: it takes the
descriptors, the folder and the environment, runs the command and exits with
its code, which the client exits with. Signals the client gets (Ctrl-C) are
passed on to the worker. The worker writes straight to the client's
terminal, pipe or file, so output, ``isatty`` and exit codes are what the
command would have had in its own process.

Anything out of the ordinary runs the command in the client's own process
instead: no server, a server of other code (each compares the code it runs,
see :func:`code_fingerprint`), a command that is not a plain read, a closed
standard stream, ``PYCOMEX_INDEX_NO_SERVER`` set.
"""

from __future__ import annotations

import errno
import marshal
import os
import select
import signal
import socket
import stat
import struct
import sys

#: The client's imports are its start-up, and typing costs ~3 ms: its names are for the type checker alone
#: (which takes any ``TYPE_CHECKING`` for true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

#: Set (to anything but "" or "0") to run every command in its own process.
NO_SERVER_VARIABLE = "PYCOMEX_INDEX_NO_SERVER"
#: The folder of the servers' sockets; by default ``$XDG_RUNTIME_DIR/pycomex-index`` or ``/tmp/pycomex-index-UID``.
SERVER_FOLDER_VARIABLE = "PYCOMEX_INDEX_SERVER_DIR"
#: Where a client appends its worker's resource use, a JSON line per command (for the benchmark).
USAGE_FILE_VARIABLE = "PYCOMEX_INDEX_SERVED_USAGE_FILE"
SOCKET_SUFFIX = ".sock"
#: How long a client waits for a server to accept and answer before it runs the command itself.
ANSWER_TIMEOUT_SECONDS = 2.0
#: The most a request may weigh (arguments and environment): far above any real one.
MAX_REQUEST_BYTES = 1 << 22
_LENGTH = struct.Struct("!I")
_STREAMS = ("stdin", "stdout", "stderr")
#: Signals a client passes on to its worker, as a terminal or a job scheduler sends them.
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def servers_turned_off() -> bool:
    """``PYCOMEX_INDEX_NO_SERVER`` is set (to anything but "" or "0"): no server is started, none is asked."""
    return os.environ.get(NO_SERVER_VARIABLE, "") not in ("", "0")


def server_folder() -> str:
    """Where servers put their sockets: the user's runtime folder, else a folder of the user's own in /tmp."""
    configured = os.environ.get(SERVER_FOLDER_VARIABLE)
    if configured:
        return configured
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(runtime, "pycomex-index") if runtime else f"/tmp/pycomex-index-{os.getuid()}"


def is_private_folder(folder: str) -> bool:
    """The folder is this user's and nobody else may enter it: only then is a socket in it trusted."""
    try:
        found = os.lstat(folder)
    except OSError:
        return False
    # lstat: a symbolic link (whoever made it) is no private folder.
    return stat.S_ISDIR(found.st_mode) and found.st_uid == os.getuid() and (found.st_mode & 0o077) == 0


def code_fingerprint() -> str:
    """What code a process runs: the environment, Python and every source file of the package (the CLI included).

    A server answers only clients with the same fingerprint, so an upgrade or an
    edit while a daemon runs never has new commands served by old code. A stat
    of each file (~90, under a millisecond), not a hash of their text.
    """
    import importlib.util

    folders = [os.path.dirname(__file__)]
    cli_spec = importlib.util.find_spec("pycomex_index.cli")  # found, not imported: that would import click
    if cli_spec is not None and cli_spec.submodule_search_locations:
        folders.extend(cli_spec.submodule_search_locations)
    stamps = [sys.prefix, sys.version]
    for top in folders:
        for folder, subfolders, files in os.walk(top):
            subfolders.sort()
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    found = os.stat(path)
                    stamps.append(f"{path}:{found.st_mtime_ns}:{found.st_size}")
    return "\n".join(stamps)


def socket_of_server_started_by(parent: int) -> str | None:
    """The socket of the command server that process ``parent`` (a watcher) started, if one serves; None: none."""
    from pycomex_index.paths import parent_pid  # here: the launcher imports this module and nothing of the library

    folder = server_folder()
    if not is_private_folder(folder):
        return None
    for name in sorted(os.listdir(folder)):
        server = name.removesuffix(SOCKET_SUFFIX)
        # A server gone (its socket is removed by the next client), or no /proc, has no parent to match.
        if name.endswith(SOCKET_SUFFIX) and server.isdigit() and parent_pid(int(server)) == parent:
            return os.path.join(folder, name)
    return None


# ---------------------------------------------------------------------------------- the client


def run_in_server(argv: list[str], *, may_serve: Callable[[list[str]], bool]) -> int | None:
    """Run the command ``argv`` in a command server and return its exit code; None: run it here instead.

    ``may_serve`` is a cheap first look at the arguments (no server is asked
    about a command it would decline anyway).
    """
    if servers_turned_off() or not may_serve(argv):
        return None
    folder = server_folder()
    if not is_private_folder(folder):
        return None
    sockets = sorted(name for name in os.listdir(folder) if name.endswith(SOCKET_SUFFIX))
    if not sockets or not _standard_streams_open():
        return None
    try:
        request = _request(argv)
    except OSError:
        return None  # no working folder (it was deleted): the command's own process reports that
    for name in sockets:
        connection = _connect(os.path.join(folder, name))
        if connection is None:
            continue
        with connection:
            answer = _ask(connection, request)
            if answer is not None and "worker" in answer:
                return _follow(connection, int(answer["worker"]))
            if answer is not None and answer.get("declined") == "command":
                return None  # every server declines it: it is not served
    return None


def _standard_streams_open() -> bool:
    """Descriptors 0, 1 and 2 are open (a command started with ``<&-`` runs here: there is nothing to pass)."""
    try:
        for descriptor in (0, 1, 2):
            os.fstat(descriptor)
    except OSError:
        return False
    return all(getattr(sys, name) is not None for name in _STREAMS)


def _request(argv: list[str]) -> bytes:
    umask = os.umask(0)
    os.umask(umask)
    streams = [
        [stream.encoding, stream.errors, stream.line_buffering, getattr(stream, "write_through", False)]
        for stream in (sys.stdin, sys.stdout, sys.stderr)
    ]
    return _frame(
        {
            "fingerprint": code_fingerprint(),
            "argv": argv,
            "argv0": sys.argv[0] if sys.argv else "pycomex-index",
            "cwd": os.getcwd(),
            "environment": dict(os.environ),
            "umask": umask,
            "streams": streams,
        }
    )


def _frame(message: dict[str, Any]) -> bytes:
    """A message as it travels: its length, then its marshal form.

    marshal, not json: it is built in, while json imports re (~6 ms of every
    client's start-up), and it keeps the surrogates a path or a variable holds
    for bytes that are not UTF-8. Its format is Python's own, which both ends
    share (the fingerprint holds the version); only this user reaches the
    socket, and the server checks that of every client.
    """
    body = marshal.dumps(message)
    return _LENGTH.pack(len(body)) + body


def _connect(path: str) -> socket.socket | None:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.settimeout(ANSWER_TIMEOUT_SECONDS)
    try:
        connection.connect(path)
    except OSError as error:
        connection.close()
        if error.errno == errno.ECONNREFUSED:
            # Nobody listens: its server died without cleaning up. A live server names its socket only once it
            # listens (see serve), so this never removes one being set up.
            try:
                os.unlink(path)
            except OSError:
                pass
        return None
    if _peer_uid(connection) != os.getuid():
        connection.close()
        return None
    return connection


def _peer_uid(connection: socket.socket) -> int:
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", credentials)[1]


def _ask(connection: socket.socket, request: bytes) -> dict[str, Any] | None:
    """Send the request with our three standard descriptors; the server's first answer (None: none came)."""
    try:
        socket.send_fds(connection, [request], [0, 1, 2])
        return _read_message(connection)
    except (OSError, ValueError, EOFError, TypeError):
        return None


def _read_message(connection: socket.socket, buffered: bytearray | None = None) -> dict[str, Any] | None:
    """One message from the connection (None at its end); ``buffered`` keeps what came after it."""
    pending = buffered if buffered is not None else bytearray()
    while len(pending) < _LENGTH.size or len(pending) < _LENGTH.size + _LENGTH.unpack_from(pending)[0]:
        chunk = connection.recv(4096)
        if not chunk:
            return None
        pending.extend(chunk)
    end = _LENGTH.size + _LENGTH.unpack_from(pending)[0]
    message = marshal.loads(bytes(pending[_LENGTH.size : end]))
    del pending[:end]
    return message


def _follow(connection: socket.socket, worker: int) -> int:
    """Wait for the worker's end, passing our signals on to it; its exit code, as the client's own."""
    connection.settimeout(None)

    def forward(signal_number: int, _frame: Any) -> None:
        try:
            os.kill(worker, signal_number)
        except OSError:
            pass  # it has just ended

    for forwarded in FORWARDED_SIGNALS:
        signal.signal(forwarded, forward)
    pending = bytearray()
    usage_file = os.environ.get(USAGE_FILE_VARIABLE)
    code: int | None = None
    while True:
        try:
            message = _read_message(connection, pending)
        except (ValueError, EOFError, TypeError):
            message = None
        if message is None:
            if code is not None:
                return code  # the server went away after the worker had ended
            print("Error: the command server stopped before the command ended", file=sys.stderr)
            return 1
        # The worker reports its code as it ends; the server reports how it ended, with its resource use.
        if "usage" in message and usage_file:
            import json

            with open(usage_file, "a") as file:
                file.write(json.dumps(message["usage"]) + "\n")
        if "signal" in message:
            _end_like(message["signal"])
        if "exit" in message:
            code = int(message["exit"])
            if not usage_file or "usage" in message:
                return code


def _end_like(signal_number: int) -> None:
    """End this process by the signal that ended the worker, as the shell would have seen it end."""
    signal.signal(signal_number, signal.SIG_DFL)
    os.kill(os.getpid(), signal_number)
    raise SystemExit(128 + signal_number)


# ---------------------------------------------------------------------------------- the server


def serve(
    *,
    serves: Callable[[list[str]], bool],
    run: Callable[[list[str]], int],
    while_parent: int,
) -> None:
    """Answer clients until the process ``while_parent`` (our parent, the watcher) ends or SIGTERM comes.

    ``serves`` tells whether a command line is one to run here; ``run`` runs
    one in a forked worker and returns its exit code.
    """
    folder = server_folder()
    os.makedirs(folder, mode=0o700, exist_ok=True)
    if not is_private_folder(folder):
        raise PermissionError(f"{folder} is not a folder of this user's alone: not serving commands from it")
    fingerprint = code_fingerprint()
    # What the server holds is never collected again: a worker's collections then leave those pages shared
    # instead of writing to (and so copying) every one of them.
    import gc

    gc.freeze()
    path = os.path.join(folder, f"{os.getpid()}{SOCKET_SUFFIX}")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Bound and listening under a temporary name, then renamed: a client that finds the socket can connect.
    setting_up = path + ".new"
    if os.path.lexists(setting_up):
        os.unlink(setting_up)  # left by a server that died setting up, under the pid this one now has
    listener.bind(setting_up)
    listener.listen(64)
    os.rename(setting_up, path)
    wake_reader, wake_writer = os.pipe()
    os.set_blocking(wake_writer, False)
    stopping = False

    def stop(_signal_number: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # A child's end wakes select() through the pipe (SIGCHLD has no handler of its own but must not be ignored).
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_writer)
    workers: dict[int, socket.socket] = {}
    waited_on: list[Any] = [listener, wake_reader]
    try:
        while not stopping and os.getppid() == while_parent:
            readable, _, _ = select.select(waited_on, [], [], 1.0)
            if wake_reader in readable:
                os.read(wake_reader, 512)
            _reap(workers)
            if listener in readable:
                _accept(listener, fingerprint, serves, run, workers, (wake_reader, wake_writer))
    finally:
        signal.set_wakeup_fd(-1)
        try:
            os.unlink(path)
        except OSError:
            pass
        listener.close()


def _accept(
    listener: socket.socket,
    fingerprint: str,
    serves: Callable[[list[str]], bool],
    run: Callable[[list[str]], int],
    workers: dict[int, socket.socket],
    wake_pipe: tuple[int, int],
) -> None:
    connection, _ = listener.accept()
    descriptors: list[int] = []
    try:
        connection.settimeout(ANSWER_TIMEOUT_SECONDS)
        if _peer_uid(connection) != os.getuid():
            raise PermissionError("a client of another user")
        request, descriptors = _receive_request(connection)
        if request.get("fingerprint") != fingerprint or len(descriptors) != 3:
            _send(connection, {"declined": "code"})
        elif not serves(request["argv"]):
            _send(connection, {"declined": "command"})
        else:
            worker = os.fork()
            if worker == 0:
                signal.set_wakeup_fd(-1)  # before its pipe closes: a signal now must not write to a reused number
                listener.close()
                for descriptor in wake_pipe:
                    os.close(descriptor)
                for other in workers.values():
                    other.close()
                _become_the_command(connection, request, descriptors, run)  # never returns
            # The worker names itself to its client: sent from here, the name could come after the worker's end.
            workers[worker] = connection
            return
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        pass  # a client that went away or sent nonsense: nothing to answer
    finally:
        for descriptor in descriptors:
            os.close(descriptor)
    connection.close()


def _receive_request(connection: socket.socket) -> tuple[dict[str, Any], list[int]]:
    data, descriptors, _, _ = socket.recv_fds(connection, 65536, 3)
    body = bytearray(data)
    if len(body) < _LENGTH.size:
        raise ValueError("a short request")
    (length,) = _LENGTH.unpack_from(body)
    if length > MAX_REQUEST_BYTES:
        raise ValueError("a request too large")
    while len(body) < _LENGTH.size + length:
        chunk = connection.recv(65536)
        if not chunk:
            raise ValueError("a request cut short")
        body.extend(chunk)
    return marshal.loads(bytes(body[_LENGTH.size :])), list(descriptors)


def _send(connection: socket.socket, message: dict[str, Any]) -> None:
    connection.sendall(_frame(message))


def _reap(workers: dict[int, socket.socket]) -> None:
    """Tell each ended worker's client how it ended and what it used."""
    while workers:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        connection = workers.pop(pid, None)
        if connection is None:
            continue
        message: dict[str, Any] = {
            "usage": {
                "max_rss_kib": usage.ru_maxrss,
                "cpu_seconds": usage.ru_utime + usage.ru_stime,
            }
        }
        if os.WIFSIGNALED(status):
            message["signal"] = os.WTERMSIG(status)
        else:
            message["exit"] = os.waitstatus_to_exitcode(status)
        try:
            _send(connection, message)
        except OSError:
            pass  # the client went away
        connection.close()


def _become_the_command(
    connection: socket.socket, request: dict[str, Any], descriptors: list[int], run: Callable[[list[str]], int]
) -> None:
    """In the forked worker: take on the client's streams, folder and environment, run its command, exit."""
    code = 1
    try:
        for signal_number in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD):
            signal.signal(signal_number, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        # Named once its signals are a command's: the client passes Ctrl-C on from then.
        _send(connection, {"worker": os.getpid()})
        for target, descriptor in enumerate(descriptors):
            os.dup2(descriptor, target)
            os.close(descriptor)
        _take_on(request)
        code = run(list(request["argv"]))
    except SystemExit as exit_request:
        code = _exit_code(exit_request)
    except BaseException:  # noqa: BLE001 - reported as Python would, then the worker ends like a process
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        # The worker leaves by os._exit, never through the server's own frames (they would remove its socket):
        # what the interpreter would do at exit is flushing the streams; the read commands register no atexit.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        try:
            _send(connection, {"exit": code})
        except OSError:
            pass
        os._exit(code)


def _take_on(request: dict[str, Any]) -> None:
    """The client's folder, environment, umask, time zone, locale, argv and standard streams, as its own."""
    import io
    import locale
    import time

    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["environment"])
    os.umask(request["umask"])
    time.tzset()
    try:
        locale.setlocale(locale.LC_CTYPE, "")
    except locale.Error:
        pass
    sys.argv = [request["argv0"], *request["argv"]]
    for descriptor, name, (encoding, errors, line_buffering, write_through) in zip(
        (0, 1, 2), _STREAMS, request["streams"], strict=True
    ):
        raw = open(descriptor, "rb" if descriptor == 0 else "wb", closefd=False)  # noqa: SIM115 - lives as sys.*
        stream = io.TextIOWrapper(
            raw, encoding=encoding, errors=errors, line_buffering=line_buffering, write_through=write_through
        )
        # Both names: the interpreter's own (shutil.get_terminal_size asks sys.__stdout__) must not be the server's.
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _exit_code(exit_request: SystemExit) -> int:
    """The exit code the interpreter gives a SystemExit (a message is printed and means 1)."""
    code = exit_request.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1
