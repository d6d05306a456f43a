# sluice's runner for user code: runs `handler(request, context)` of a
# deployment version, each run in its own process. The worker writes
# request.json and context.json into the run's working directory and reads
# stdout/stderr line by line as the run's log.
#
# Two ways to start (docs/user-code.md):
# - a fresh interpreter per run (`python3 runner.py` in the run's folder):
#   imports the handler's module, runs it, exits;
# - a fork server per code version (SLUICE_FORK_SERVER names the descriptor
#   of a SOCK_SEQPACKET socket to the worker): imports the module once, then
#   forks one child per run the worker asks for, from this clean parent, so
#   nothing a run does (module globals, environment, memory) reaches the
#   next one.
import atexit
import gc
import importlib
import json
import os
import resource
import selectors
import signal
import socket
import sys
import traceback


class Context(dict):
    """The run's metadata, readable as context["run_id"] or context.run_id."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e


class Content(dict):
    """One input file of the run (from `input_data`'s "$datalake:1"):
    content["content_type"], content["metadata"], content["path"], and
    content.read() / .text() / .json() for its bytes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e

    def read(self):
        with open(self["path"], "rb") as f:
            return f.read()

    def text(self, encoding="utf-8"):
        return self.read().decode(encoding)

    def json(self):
        return json.loads(self.read())


def write_result(result):
    """Bytes as they are, a string as UTF-8 text, anything else as JSON."""
    if result is None:
        return
    if isinstance(result, (bytes, bytearray, memoryview)):
        name, data = "result.bin", bytes(result)
    elif isinstance(result, str):
        name, data = "result.txt", result.encode("utf-8")
    else:
        name, data = "result.json", json.dumps(result, default=str).encode("utf-8")
    with open(name + ".tmp", "wb") as f:
        f.write(data)
    os.replace(name + ".tmp", name)


def load_handler():
    """Imports the version's module (the code folder first on sys.path)."""
    module_name, function_name = os.environ["SLUICE_HANDLER"].split(":", 1)
    sys.path.insert(0, os.environ["SLUICE_CODE_DIR"])
    return getattr(importlib.import_module(module_name), function_name)


def describe(e):
    return "".join(traceback.format_exception_only(type(e), e)).strip()


def fail(e):
    """Logs the traceback and leaves the error for the worker; answers 1."""
    traceback.print_exc()
    sys.stderr.flush()
    with open("error.txt", "w") as f:
        f.write(describe(e))
    return 1


def run(handler, given=None):
    """Runs the request `given` (request, context), or the one in the
    current folder's request.json and context.json; answers the exit
    status."""
    try:
        if given is None:
            with open("request.json") as f:
                request = json.load(f)
            with open("context.json") as f:
                context = json.load(f)
        else:
            request, context = given
        request["contents"] = [Content(c) for c in request.get("contents") or []]
        context = Context(context)
        write_result(handler(request, context))
    except BaseException as e:  # noqa: BLE001 - every failure is the run's
        return fail(e)
    return 0


def main():
    """A fresh interpreter for one run."""
    try:
        handler = load_handler()
    except BaseException as e:  # noqa: BLE001
        sys.exit(fail(e))
    sys.exit(run(handler))


def send(sock, message):
    sock.send(json.dumps(message).encode())


def serve(fd):
    """The fork server: imports once, then forks a child per request.

    Requests: {"id", "work", "env", "restrict", "cpu_seconds"} and, unless
    they are in the run's folder as files, {"request", "context"}, with the
    run's stdout and stderr (and, when the kernel has Landlock, the run's
    own ruleset) as descriptors. Answers: {"ready": true} or {"ready": false, "error"} once;
    then {"id", "pid"} when a child started and {"id", "status"} (the raw
    wait status) when it ended. The server ends when the worker closes the
    socket (or dies: it is the parent's death signal's business).
    """
    sock = socket.socket(fileno=fd)
    try:
        handler = load_handler()
    except BaseException as e:  # noqa: BLE001 - the import error is every run's
        traceback.print_exc()
        sys.stderr.flush()
        send(sock, {"ready": False, "error": describe(e)})
        return 1
    sys.stdout.flush()
    sys.stderr.flush()
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    # Each child calls these: called once here, what ctypes builds for a
    # call is the server's, shared, and not made (and copied) again in
    # every child.
    libc.prctl(1, 0, 0, 0, 0)  # PR_SET_PDEATHSIG 0, as the server has
    libc.syscall  # looked up (and kept) once
    # The children's environments differ from the server's in a few
    # variables: each child compares with this copy (reading os.environ
    # would make new objects, and so copy pages, for every variable).
    SERVER_ENV.update(os.environ)
    # Everything imported so far stays out of the collector's way: a
    # collection in a child would otherwise touch (and so copy) every page
    # of the server's objects.
    gc.collect()
    gc.freeze()
    # What the import printed has been read by the worker as the first run's
    # log; from here the server's own output goes nowhere.
    devnull = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(devnull, target)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    send(sock, {"ready": True})
    children = {}
    server = os.getpid()
    while True:
        for key, _ in selector.select():
            if key.fileobj is sock:
                message, fds, _, _ = socket.recv_fds(sock, 1 << 20, 3)
                if not message:
                    return 0
                request = json.loads(message)
                pid = os.fork()
                if pid == 0:
                    selector.close()
                    for own in (wake_r, wake_w, devnull):
                        os.close(own)
                    sock.close()
                    child(handler, libc, server, request, fds)
                for own in fds:
                    os.close(own)
                children[pid] = request["id"]
                send(sock, {"id": request["id"], "pid": pid})
            else:
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
                while children:
                    try:
                        pid, status = os.waitpid(-1, os.WNOHANG)
                    except ChildProcessError:
                        break
                    if pid == 0:
                        break
                    if pid in children:
                        send(sock, {"id": children.pop(pid), "status": status})


# The server's environment when it started forking (see `serve`).
SERVER_ENV = {}


def child(handler, libc, server, request, fds):
    """One run, in a child forked from the clean server. Never returns."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.setsid()  # its own process group: the worker stops the run's whole tree
    if libc.prctl(1, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != server:  # PR_SET_PDEATHSIG
        os._exit(1)
    out, err = fds[0], fds[1]
    os.dup2(out, 1)
    os.dup2(err, 2)
    for own in fds[:2]:
        if own > 2:
            os.close(own)
    if len(fds) > 2:
        # The run's own Landlock layer: its folder, not its siblings'.
        if libc.syscall(request["restrict"], fds[2], 0) != 0:
            os.write(2, b"[sluice] could not enter the run's sandbox\n")
            os._exit(1)
        os.close(fds[2])
    if request.get("cpu_seconds"):
        # The server has none: its own CPU time (all those forks) is not a run's.
        limit = int(request["cpu_seconds"])
        resource.setrlimit(resource.RLIMIT_CPU, (limit, limit))
    os.chdir(request["work"])
    # The run's environment is the server's but for a few variables: only
    # those change (every write copies pages the child shares with the
    # server).
    env = request["env"]
    for name in SERVER_ENV:
        if name not in env:
            del os.environ[name]
    for name, value in env.items():
        if SERVER_ENV.get(name) != value:
            os.environ[name] = value
    if "tempfile" in sys.modules:
        sys.modules["tempfile"].tempdir = None
    given = (request["request"], request["context"]) if "request" in request else None
    status = run(handler, given)
    # The exit handlers a run registered (logging's flush among them) run;
    # the interpreter's teardown does not: it tears down every module the
    # server imported (pandas: tens of ms), and the process ends anyway.
    # (Every module the child uses is imported by the server: an import
    # statement run in the child copies pages, even of a module imported.)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed stream has nothing to flush
            pass
    os._exit(status)


if __name__ == "__main__":
    if "SLUICE_FORK_SERVER" in os.environ:
        sys.exit(serve(int(os.environ.pop("SLUICE_FORK_SERVER"))))
    main()
