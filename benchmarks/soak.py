"""Soak: start scripts 7 and 8 many times in a row at tiny sizes and tally how each start ends.

Every start is a fresh Dragon runtime (`python 7_dragon_ddict.py`, then `python
8_dragon_producer_consumer.py` at 4 x 16^2 with 2 trainers, alternately), on this node or,
inside a local cluster's environment (`eval "$(bash cluster/local_cluster.sh up 2)"`), from
node 1 over every node of the cluster. Each start is one of:

    ok                 exit status 0 (8: its record written)
    launcher_crash     Dragon's launcher died of a signal (the signal is kept)
    ddict_deadline     the DDict's creation missed its deadline (its orchestrator never answered)
    runtime_start      Dragon's runtime failed to start (the head never ran or never reported)
    hung               still running after --timeout s (then killed)
    other              any other failure (its last lines are kept)

and, where the script retried a start that failed before any work began, what the first
attempt was (`retried`). Per start: the load average before it, the seconds to the head's
first sign of life (7: its first line; 8: its own start-up figure, runtime included), the
whole wall time, what it left behind (processes, /dev/shm files: removed after the count) and,
where a process dumped core in the start's folder, gdb's backtrace of it (core dumps need
`ulimit -c unlimited` in the shell that starts the soak; the soak changes no system setting).

    python benchmarks/soak.py --starts 200 --label one-node
    eval "$(bash cluster/local_cluster.sh up 2)"; python benchmarks/soak.py --starts 50 --label two-nodes
    python benchmarks/soak.py --starts 20 --load 2 --label loaded      # 2 busy processes beside it
    python benchmarks/soak.py --table docs/dev/data/soak-*.json      # the docs' markdown table

JSON (all starts, rewritten after each one) in docs/dev/data/soak-<label>.json (--append goes
on with an interrupted run); each failed start's output in results/soak/<label>/ (not
committed). What a start leaves is counted; only its own Dragon pools are removed.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "docs", "dev", "data")
LOGS = os.path.join(ROOT, "results", "soak")
CLUSTER = os.path.join(ROOT, "cluster", "local_cluster.sh")
TAG = "PC_SOAK_START"       # in every process of a start: what it leaves is found by it
SHM = "/dev/shm"
KINDS = ("ok", "launcher_crash", "ddict_deadline", "runtime_start", "hung", "other")
SCRIPTS = {
    "7": ["7_dragon_ddict.py"],
    "8": ["8_dragon_producer_consumer.py", "--num_sims", "4", "--num_trainers", "2",
          "--grid_size", "16", "--compute_time", "0"],
}
RETRY = re.compile(r"starting Dragon's runtime again.*?\((?P<why>.*)\)\s*$")


def classify(status: int | None, out: str, err: str) -> tuple[str, str | None]:
    """(kind, signal name or None) of a start, from its exit status and its output."""
    text = out + "\n" + err
    crash = re.search(r"Dragon's launcher died of (SIG\w+)", text)
    if status is None:
        return "hung", None
    if status == 0:
        return "ok", None
    if crash:
        return "launcher_crash", crash.group(1)
    if status > 128 and status - 128 in signal.valid_signals():
        return "launcher_crash", signal.Signals(status - 128).name
    if re.search(r"orchestrator never answered|DDict.*(creat|orchestrator).*(deadline|time)",
                 text, re.I):
        return "ddict_deadline", None
    if re.search(r"never reported how it ended|without a Dragon runtime|Expected TAUp|"
                 r"runtime failed to start|LauncherError|launcher.*(abnormal|exiting)", text):
        return "runtime_start", None
    return "other", None


def first_attempt(out: str, err: str) -> str | None:
    """The kind of a start's first attempt, where the script says it started Dragon again."""
    for line in (out + "\n" + err).splitlines():
        match = RETRY.search(line)
        if match:
            return classify(1, match.group("why"), "")[0]
    return None


def startup_s(script: str, launched: float, lines: list[tuple[float, str]]) -> float | None:
    """Seconds to the head's first sign of life: 8's own start-up figure (processes ready,
    plus the runtime's start), 7's first line."""
    for at, line in lines:
        if script.startswith("8"):
            match = re.search(r"ready after ([\d.]+) s(?: \(\+ ([\d.]+) s to start the runtime)?",
                              line)
            if match:
                return float(match.group(1)) + float(match.group(2) or 0)
        elif "Dragon runtime on" in line:
            return at - launched
    return None


def tagged_pids(tag: str) -> list[int]:
    needle = f"{TAG}={tag}".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle + b"\0" in f.read() + b"\0":
                    found.append(int(pid))
    return found


def mapped_shm() -> set:
    mapped = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    path = line.rstrip("\n").split(maxsplit=5)[5:]
                    if path and path[0].startswith(SHM + "/"):
                        mapped.add(os.path.basename(path[0].split(" (deleted)")[0]))
    return mapped


def launcher_pids(tag: str) -> set:
    """Pids of the Dragon launchers (`python -m dragon`) among a start's processes."""
    found = set()
    for pid in tagged_pids(tag):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().split(b"\0")[1:3] == [b"-m", b"dragon"]:
                    found.add(pid)
    return found


def node_shm(cluster_nodes: int) -> list[str]:
    """Dragon's pool files in every cluster node's /dev/shm (the nodes' own: this soak's alone)."""
    names = []
    for k in range(1, cluster_nodes + 1):
        proc = subprocess.run(["bash", CLUSTER, "run", str(k), "ls", "-1", SHM],
                              capture_output=True, text=True, timeout=60)
        names += [f"node{k}:{n}" for n in proc.stdout.split() if n.startswith("DD")]
    return names


def leftovers(tag: str, launchers: set, shm_before: set, cluster_nodes: int,
              patience_s: float = 20.0) -> dict:
    """What a start left once it ended: its processes (killed after `patience_s`) and, in
    this machine's /dev/shm, Dragon's pool files of its own launchers (Dragon names a
    runtime's pools after its launcher's pid: its last three digits) that no process maps
    (removed; other runs' files are never touched). On a cluster, the nodes' pool files
    are counted only."""
    deadline = time.monotonic() + patience_s
    while tagged_pids(tag) and time.monotonic() < deadline:
        time.sleep(0.5)
    procs = tagged_pids(tag)
    for pid in procs:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    tails = {str(pid)[-3:] for pid in launchers}
    new = sorted(name for name in set(os.listdir(SHM)) - shm_before - mapped_shm()
                 if name.startswith("DD") and any(tail in name for tail in tails))
    for name in new:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(SHM, name))
    return {"processes": len(procs), "shm_files": new,
            "node_shm_files": node_shm(cluster_nodes) if cluster_nodes else []}


def core_backtraces(folder: str) -> list[dict]:
    """gdb's backtrace of every core file a start's processes dumped in `folder` (and below);
    the core files are removed after reading."""
    found = []
    for base, _, files in os.walk(folder):
        for name in files:
            if not re.fullmatch(r"core(\.\d+)?", name):
                continue
            core = os.path.join(base, name)
            info = subprocess.run(["gdb", "-batch", "-c", core], capture_output=True,
                                  text=True, timeout=120).stdout
            match = re.search(r"Core was generated by `(\S+)", info)
            exe = match.group(1) if match and os.path.isabs(match.group(1)) else sys.executable
            bt = subprocess.run(["gdb", "-batch", "-ex", "thread apply all bt 30", exe, core],
                                capture_output=True, text=True, timeout=300).stdout
            found.append({"core": os.path.relpath(core, folder), "generated_by": info.strip()
                          .splitlines()[-3:], "backtrace": bt})
            os.unlink(core)
    return found


def run_captured(argv, folder: str, env: dict, timeout: float, launchers: set):
    """Run argv in `folder`; (exit status or None if killed after `timeout` s, stdout lines
    with the time each arrived, stderr). `launchers` collects the pids of its Dragon
    launchers while it runs."""
    import threading
    done = threading.Event()

    def watch():
        while not done.wait(0.5):
            launchers.update(launcher_pids(env[TAG]))
    threading.Thread(target=watch, daemon=True).start()
    proc = subprocess.Popen(argv, cwd=folder, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines, err_lines = [], []
    reader = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)
    reader.start()
    timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
    timer.start()
    for line in proc.stdout:
        lines.append((time.monotonic(), line))
    status = proc.wait()
    done.set()
    hung = not timer.is_alive()
    timer.cancel()
    reader.join(timeout=30)
    return None if hung else status, lines, "".join(err_lines)


def one_start(number: int, script_key: str, args, workdir: str) -> dict:
    """Start one script, wait for it (at most args.timeout s), classify and clean up."""
    tag = f"{os.getpid()}-{number}"
    folder = os.path.join(workdir, f"start-{number}")
    os.makedirs(os.path.join(folder, "data"))
    argv = [sys.executable, os.path.join(ROOT, SCRIPTS[script_key][0]), *SCRIPTS[script_key][1:]]
    if script_key == "8":
        argv += ["--data_dir", "data", "--results_file", "r.jsonl"]
    if args.cluster_nodes:
        argv = ["bash", CLUSTER, "run", "1", *argv]
    env = dict(os.environ, **{TAG: tag, "PYTHONUNBUFFERED": "1"})
    if args.faulthandler:
        env["PYTHONFAULTHANDLER"] = "1"
    shm_before = set(os.listdir(SHM))
    load = os.getloadavg()
    launched = time.monotonic()
    launchers = set()
    status, lines, err = run_captured(argv, folder, env, args.timeout, launchers)
    wall = time.monotonic() - launched
    out = "".join(line for _, line in lines)
    kind, signame = classify(status, out, err)
    first = first_attempt(out, err)
    result = {"start": number, "script": SCRIPTS[script_key][0], "kind": kind,
              "signal": signame, "status": status, "retried": first is not None,
              "first_attempt": first or kind, "loadavg": load, "loadavg_after": os.getloadavg(),
              "startup_s": startup_s(script_key, launched, lines), "wall_s": wall,
              "left": leftovers(tag, launchers, shm_before, args.cluster_nodes),
              "cores": core_backtraces(folder),
              "time": datetime.datetime.now().isoformat(timespec="seconds")}
    if kind != "ok" or first is not None:
        os.makedirs(os.path.join(LOGS, args.label), exist_ok=True)
        log = os.path.join(LOGS, args.label, f"start-{number}.txt")
        with open(log, "w") as f:
            f.write(f"$ {' '.join(argv)}\nexit status {status}\n--- stdout\n{out}\n--- stderr\n{err}")
        result["log"] = os.path.relpath(log, ROOT)
        result["tail"] = (out.strip().splitlines()[-3:] + err.strip().splitlines()[-8:])
    shutil.rmtree(folder, ignore_errors=True)
    return result


@contextlib.contextmanager
def cpu_load(count: int):
    """`count` processes that keep a core busy each, for the block."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
               for _ in range(count)]
    try:
        yield
    finally:
        for p in burners:
            p.kill()
            p.wait()


def tally(starts: list[dict]) -> dict:
    """Counts per kind, after the retry and before it, and start-up / wall / load figures."""
    after = {k: sum(s["kind"] == k for s in starts) for k in KINDS}
    before = {k: sum(s["first_attempt"] == k for s in starts) for k in KINDS}
    ok = [s for s in starts if s["kind"] == "ok"]

    def spread(values):
        values = [v for v in values if v is not None]
        if not values:
            return None
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return {"starts": len(starts), "after_retry": after, "before_retry": before,
            "retried": sum(s["retried"] for s in starts),
            "signals": sorted({s["signal"] for s in starts if s["signal"]}),
            "startup_s": spread(s["startup_s"] for s in ok),
            "wall_s": spread(s["wall_s"] for s in ok),
            "loadavg_1min": spread(s["loadavg"][0] for s in starts),
            "left_processes": sum(s["left"]["processes"] for s in starts),
            "left_shm_files": sum(len(s["left"]["shm_files"]) + len(s["left"]["node_shm_files"])
                                  for s in starts),
            "cores": sum(len(s["cores"]) for s in starts)}


def describe(summary: dict) -> str:
    after, before = summary["after_retry"], summary["before_retry"]
    failed = {k: v for k, v in after.items() if k != "ok" and v}
    failed_before = {k: v for k, v in before.items() if k != "ok" and v}
    up = summary["startup_s"]
    return (f"{summary['starts']} starts: {after['ok']} ok; failures after the retry "
            f"{sum(failed.values())} {failed or ''}, before it {sum(failed_before.values())} "
            f"{failed_before or ''}; start-up median "
            + (f"{up['median']:.1f} s ({up['min']:.1f}-{up['max']:.1f})" if up else "-")
            + f"; load {summary['loadavg_1min']['median']:.2f} median")


def table(paths: list[str]) -> str:
    """The markdown table of soak results for the docs, one row per JSON file."""
    rows = ["| run | commit | nodes | CPU load added | starts | ok | failures before retry "
            "(by kind) | failures after retry | start-up s, median (min-max) | load avg "
            "1 min, median (max) | left behind |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in paths:
        with open(path) as f:
            run = json.load(f)
        s = tally(run["starts"])
        by_kind = ", ".join(f"{k} {v}" for k, v in s["before_retry"].items() if k != "ok" and v)
        failed_after = sum(v for k, v in s["after_retry"].items() if k != "ok")
        failed_before = sum(v for k, v in s["before_retry"].items() if k != "ok")
        up, load = s["startup_s"], s["loadavg_1min"]
        rows.append(
            f"| {run['label']} ({run['started'][:10]}) | {run['commit']} | {run['nodes']} | "
            f"{run['load']} | {s['starts']} | {s['after_retry']['ok']} | {failed_before}"
            f"{' (' + by_kind + ')' if by_kind else ''} | {failed_after} | "
            + (f"{up['median']:.1f} ({up['min']:.1f}-{up['max']:.1f})" if up else "-")
            + f" | {load['median']:.2f} ({load['max']:.2f}) | "
            f"{s['left_processes']} processes, {s['left_shm_files']} /dev/shm files |")
    return "\n".join(rows)


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=20, help="starts in all (7 and 8 alternate)")
    parser.add_argument("--scripts", default="7,8", help="which scripts, in turn: 7, 8 or 7,8")
    parser.add_argument("--label", default="soak", help="names the JSON file and the log folder")
    parser.add_argument("--load", type=int, default=0, help="busy processes beside the starts")
    parser.add_argument("--timeout", type=float, default=400, help="seconds before a start is hung")
    parser.add_argument("--no-faulthandler", dest="faulthandler", action="store_false",
                        help="do not set PYTHONFAULTHANDLER=1 for the starts")
    parser.add_argument("--json", help=f"where the JSON goes (default {DATA}/soak-LABEL.json)")
    parser.add_argument("--append", action="store_true",
                        help="go on with the starts of an earlier run in the same JSON file")
    parser.add_argument("--commit", help="the commit measured, where this is no git checkout")
    parser.add_argument("--table", nargs="+", metavar="JSON",
                        help="print the markdown table of these results and exit")
    return parser.parse_args(argv)


def new_run(args) -> dict:
    """The run's facts; with --append, the earlier run in the JSON file, to go on with."""
    if args.append and os.path.exists(args.json):
        with open(args.json) as f:
            run = json.load(f)
        run.setdefault("resumed", []).append(datetime.datetime.now().isoformat(timespec="seconds"))
        return run
    import resource
    commit = args.commit or subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                                           capture_output=True, text=True).stdout.strip()
    with open("/proc/sys/kernel/core_pattern") as f:
        core_pattern = f.read().strip()
    return {"label": args.label, "commit": commit, "nodes": args.cluster_nodes or 1,
            "nodes_share_machine": bool(args.cluster_nodes), "cores": os.cpu_count(),
            "load": args.load, "faulthandler": args.faulthandler, "timeout_s": args.timeout,
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "core_limit": resource.getrlimit(resource.RLIMIT_CORE),
            "core_pattern": core_pattern, "starts": []}


def main(argv=None) -> int:
    args = parse(argv)
    if args.table:
        print(table(args.table))
        return 0
    args.cluster_nodes = int(os.environ.get("PC_CLUSTER_NODES") or 0)
    args.json = args.json or os.path.join(DATA, f"soak-{args.label}.json")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    workdir = os.path.join(ROOT, "results", "soak", f"{args.label}-work")  # shared by the nodes
    os.makedirs(workdir, exist_ok=True)
    scripts = args.scripts.split(",")
    run = new_run(args)
    print(f"soak {args.label}: {args.starts} starts of {', '.join(SCRIPTS[k][0] for k in scripts)}"
          f" on {run['nodes']} node(s), {args.load} busy process(es) beside; JSON in {args.json}",
          flush=True)
    with cpu_load(args.load):
        for number in range(len(run["starts"]), args.starts):
            start = one_start(number, scripts[number % len(scripts)], args, workdir)
            run["starts"].append(start)
            with open(args.json + ".tmp", "w") as f:
                json.dump(run, f, indent=1)
            os.replace(args.json + ".tmp", args.json)
            print(f"  {number + 1:4d} {start['script'][:1]} {start['kind']:15s}"
                  f"{' (retried: ' + start['first_attempt'] + ')' if start['retried'] else ''}"
                  f" start-up {start['startup_s'] or float('nan'):6.2f} s, wall "
                  f"{start['wall_s']:6.1f} s, load {start['loadavg'][0]:.2f}"
                  + (f", {start['signal']}" if start["signal"] else "")
                  + (f"  [{start['log']}]" if "log" in start else ""), flush=True)
    with contextlib.suppress(OSError):
        os.rmdir(workdir)
    run["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    run["summary"] = tally(run["starts"])
    with open(args.json, "w") as f:
        json.dump(run, f, indent=1)
    print(f"soak {args.label}: {describe(run['summary'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
