"""Run a command inside a node of the local cluster as if it were started there directly.

    python3 -I -S node_exec.py PID DIR CMD [ARG...]

`local_cluster.sh run` calls this. It joins the namespaces of process PID (the node's sshd:
mount, UTS, IPC, network, PID), changes to DIR and runs CMD as its child, with this process's
environment exactly as it was given. Then it behaves like the command:

- it waits for it, and exits with its exit status, or dies of the signal that killed it;
- a signal sent to this process (kill PID, a test harness, a batch system) is passed on;
- a signal from the terminal (Ctrl-C, Ctrl-\\, hang-up) is not: the terminal sends it to
  its whole foreground process group, in which the command is too, so it has it already.

Why not `nsenter`: joining a PID namespace only places the children of the process that
joins it there, so some process must stay outside and wait; nsenter's does, but it dies at
the first Ctrl-C (the command then runs on without a caller) and passes no signal on.
"""
import ctypes
import os
import signal
import sys

NAMESPACES = ("ipc", "uts", "net", "pid", "mnt")   # mnt last: it changes what /proc shows
PASSED_ON = {signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP,
             signal.SIGUSR1, signal.SIGUSR2}
SI_KERNEL = 0x80        # si_code of a signal the kernel sent (the terminal's, for one)


def given_environment() -> dict:
    """This process's environment as it was started: os.environ may differ, as Python adds
    LC_CTYPE=C.UTF-8 when the locale is C (and /proc/self is the machine's only until we
    join the node)."""
    with open("/proc/self/environ", "rb") as f:
        entries = f.read().split(b"\0")
    return dict(entry.split(b"=", 1) for entry in entries if b"=" in entry)


def join(pid: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    files = [os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY) for name in NAMESPACES]
    for name, fd in zip(NAMESPACES, files):
        if libc.setns(fd, 0) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"cannot join the node's {name} namespace: {os.strerror(error)}")
        os.close(fd)


def main(pid: str, directory: str, argv: list[str]) -> int:
    env = given_environment()
    try:
        join(pid)
        os.chdir(directory)
    except OSError as e:                # 125: as `env` and `timeout` say that they failed
        print(f"local_cluster run: {e}", file=sys.stderr)
        return 125
    watched = PASSED_ON | {signal.SIGCHLD}
    # blocked from before the fork on, so none is lost: sigwaitinfo below collects them
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    child = os.fork()                   # the child is the first to be in the node's PID namespace
    if child == 0:
        # what exec keeps: the signal mask, and Python's SIG_IGN for SIGPIPE and SIGXFSZ
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        try:
            os.execvpe(argv[0], argv, env)
        except OSError as e:
            print(f"{argv[0]}: {e.strerror}", file=sys.stderr)
            os._exit(127 if isinstance(e, FileNotFoundError) else 126)
    while True:
        info = signal.sigwaitinfo(watched)
        if info.si_signo != signal.SIGCHLD:
            if info.si_code != SI_KERNEL:
                os.kill(child, info.si_signo)
            continue
        done, status = os.waitpid(child, os.WNOHANG)
        if done:
            break
    if os.WIFSIGNALED(status):          # die the same death, as a shell would show it
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
        os.kill(os.getpid(), sig)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit("usage: node_exec.py PID DIR CMD [ARG...]")
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
