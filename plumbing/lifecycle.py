"""A run's life in its head process: progress lines, waiting for tasks, the run's own
directory, and run_workflow(), which turns Ctrl-C,
SIGTERM and every error into a clean-up, one line on stderr and an exit status (the full
traceback in a file next to the results file)."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import tempfile
import time
import traceback
from typing import Sequence

from plumbing.records import filesystem_of


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stdout, flush=True)


# where results go by default (cli's --results_file), and a failed run's traceback file
# where no results file was named yet
RESULTS_DIR = "results"


class TaskFailed(RuntimeError):
    """A simulation or trainer task raised; the message names it and says why. Its cause (a
    Parsl task's exception), or `details` (a Dragon process's traceback, as text), holds the
    task's own traceback, which run_workflow saves to a file."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details


class Progress:
    """While a phase runs, a line such as `simulations 12/32 done` at most every `every` s."""

    def __init__(self, what: str, total: int, every: float = 5.0):
        self.what, self.total, self.every = what, total, every
        self._last = time.monotonic()

    def update(self, done: int) -> None:
        if done < self.total and time.monotonic() - self._last >= self.every:
            log(f"{self.what} {done}/{self.total} done")
            self._last = time.monotonic()


_run_directories: list[str] = []     # see run_directory(): results_of() watches them


def check_reachable(path: str) -> None:
    """Raise OSError, saying on which file system, when `path` cannot be reached any more
    (a network file system whose server went away: "Transport endpoint is not connected")."""
    try:
        os.stat(path)
    except OSError as error:
        fs = filesystem_of(os.path.dirname(path))
        raise OSError(error.errno, f"the run's directory {path} cannot be reached any more "
                      f"({error.strerror}; it is on {fs['type']} {fs['source']})") from None


def results_of(futures: Sequence, kind: str) -> list:
    """Wait for futures, saying how many are done as they go; on the first that fails,
    stop waiting and say which task it was. Every second, and before a task's failure is
    reported, the run's directory is checked: where its storage went away, that is the error
    (tasks blocked on it may fail only when Parsl's heartbeats time out, minutes later)."""
    from concurrent.futures import FIRST_EXCEPTION, wait
    progress = Progress(f"{kind}s", len(futures))
    pending = set(futures)
    while pending:
        done, pending = wait(pending, timeout=1.0, return_when=FIRST_EXCEPTION)
        for path in _run_directories:       # the cause, where a task failed of it
            check_reachable(path)
        if any(future.exception() is not None for future in done):
            break
        progress.update(len(futures) - len(pending))
    for number, future in enumerate(futures):
        if future.done() and future.exception() is not None:
            error = future.exception()      # with the worker's traceback: Parsl carries it
            raise TaskFailed(f"{kind} {number} failed: {type(error).__name__}: {error}") from error
    return [future.result() for future in futures]


@contextlib.contextmanager
def run_directory(base: str, transport: str, keep: bool = False):
    """A fresh directory that belongs to this run alone, removed on the way out (after an
    error or Ctrl-C too) unless `keep`. Nothing outside it is ever deleted."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = tempfile.mkdtemp(prefix=f"pc-{transport}-{stamp}-", dir=base)
    # torch makes a cache folder in /tmp at the first training step; the workers, on every
    # node, inherit this, so it lives and goes with the run, also where a worker was killed
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(path, "torch")
    _run_directories.append(path)
    try:
        yield path
    finally:
        _run_directories.remove(path)
        if not keep:
            remove_tree(path)


def remove_tree(path: str, patience_s: float = 10.0) -> None:
    """Remove a directory tree, trying again for a while: on a network file system a file
    deleted while a process still has it open stays, hidden (.nfs*, .fuse_hidden*), until
    that process closes it, and keeps its directory from going (the workers' logs, in the
    last seconds of the workers' shut-down)."""
    deadline = time.monotonic() + patience_s
    while True:
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            return
        if time.monotonic() > deadline:
            log(f"warning: could not remove {path} within {patience_s:.0f} s")
            return
        time.sleep(0.2)


def signal_when_parent_dies(signum: int):
    """A preexec_fn for subprocess.Popen: the child gets `signum` when the process that
    started it dies, even by SIGKILL (Linux's PR_SET_PDEATHSIG), so that a server or a
    launcher in a process group of its own never outlives its owner."""
    parent = os.getpid()

    def arrange():
        import ctypes
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signum)     # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent:                  # it died before prctl took effect
            os.kill(os.getpid(), signum)
    return arrange


_signals: list[str] = []     # SIGINT/SIGTERM received by run_workflow's handler, in order
_deferred = False           # see defer_interrupts()
_control = {}               # see control_files() and save_errors_in()


def defer_interrupts() -> None:
    """From now on a first Ctrl-C or SIGTERM is only noted, and raised as KeyboardInterrupt
    by raise_if_interrupted(), where the caller knows it is safe.

    For a head process that talks to a runtime in request/reply exchanges (Dragon's): an
    exception in the middle of one leaves the reply to be read by the next request, and the
    clean-up then fails.
    """
    global _deferred
    _deferred = True


def control_files(interrupt: str, status: str) -> None:
    """For a head process that may run on another node than the command the user started:
    the file `interrupt` appearing counts as a Ctrl-C (a signal cannot reach another node;
    a file on a shared file system can), and run_workflow writes the exit status to
    `status` (for a launcher that does not pass it on)."""
    _control.update(interrupt=interrupt, status=status)


def save_errors_in(folder: str) -> None:
    """Where run_workflow writes the traceback of an error (check_args: next to the results)."""
    _control["error_dir"] = folder


def process_state(pid: int) -> str | None:
    """The state letter of process `pid` in /proc (R, S, T stopped, Z ended but not reaped...);
    None where there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def raise_if_interrupted() -> None:
    if not _signals and os.path.exists(_control.get("interrupt", "")):
        _signals.append("SIGINT")           # from where the run was started
    if _signals:
        raise KeyboardInterrupt(_signals[0])


def _save_traceback(prog: str, error: BaseException) -> str | None:
    """`error`'s traceback (a failed task's own, where it ran) in a file next to the results
    file (see check_args); its path, or None where none could be written."""
    folder = _control.get("error_dir") or RESULTS_DIR
    path = os.path.join(folder, f"error-{os.path.splitext(prog)[0]}-{time.strftime('%Y%m%d-%H%M%S')}"
                                f"-{os.getpid()}.txt")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(path, "w") as f:
            if getattr(error, "details", ""):
                f.write(f"{error.details}\nreported to the head process on "
                        f"{socket.gethostname()}:\n")
            traceback.print_exception(error, file=f)
    except OSError:
        return None
    return os.path.abspath(path)


def run_workflow(main) -> None:
    """Run a script's main(): SIGTERM behaves like Ctrl-C, so both reach main's cleanup;
    a failed task or a failed check ends the run with one line on stderr.

    A second signal while the clean-up runs is ignored (it would leave files, workers or
    a DDict behind); a third one abandons the clean-up.
    """
    import signal
    prog = os.path.basename(sys.argv[0])
    signals = _signals

    def interrupt(signum, frame):
        signals.append(signal.Signals(signum).name)
        if len(signals) == 1 and _deferred:
            return                                  # raise_if_interrupted() raises it
        if len(signals) == 2:
            print(f"{prog}: cleaning up, please wait ({signals[-1]} once more to abandon it)",
                  file=sys.stderr, flush=True)
            return
        raise KeyboardInterrupt(signals[-1])

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    try:
        status = main()
    except SystemExit as leaving:          # argparse's one-line refusal, sys.exit(): as given
        code = leaving.code
        if code is not None and not isinstance(code, int):
            print(code, file=sys.stderr, flush=True)
        status = code if isinstance(code, int) else int(code is not None)
    except KeyboardInterrupt as why:
        reason = why.args[0] if why.args else "SIGINT"
        done = "cleaned up" if len(signals) < 3 else "clean-up abandoned"
        print(f"{prog}: interrupted ({reason}); {done}", file=sys.stderr, flush=True)
        status = 130
    except Exception as error:              # one line; the traceback (a failed task's own,
        where = _save_traceback(prog, error)    # from its node) in a file
        what = "" if isinstance(error, TaskFailed) else f"{type(error).__name__}: "
        # after a signal the run ends as interrupted (130), whatever failed on the way out
        before = f"interrupted ({signals[0]}), then " if signals else ""
        print(f"{prog}: {before}error: {what}{' '.join(str(error).split())}"
              + (f" (traceback in {where})" if where else ""), file=sys.stderr, flush=True)
        status = 130 if signals else 1
    if "status" in _control:
        with contextlib.suppress(OSError), open(_control["status"], "w") as f:
            f.write(str(status))
    if signals:                 # all cleaned up: a late signal must not kill the exit itself
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(status)
