"""DragonHPC 0.15.0: a transport agent that takes more than 10 s to start fails the whole runtime.

On every node, Local Services waits for its transport agent's first message (TAPingLS) for
dragon.infrastructure.facts.TA_PING_TIMEOUT = 10 s (localservices/local_svc.py), then sends
AbnormalTermination, and the launcher ends with

    RuntimeError: Expected TAUp during startup but received AbnormalTermination

On a busy node (here: 2 cores, load average 15-20) an agent can take that long to start; every
other start-up wait of the launcher is 60 s (LOCAL_LAUNCH_TIMEOUT) or 420 s. This script
makes the data transport agent start DELAY_S late on every node, as a busy node does, by a
sitecustomize it writes into a temporary folder on PYTHONPATH (the TCP agent is a Python
process of its own: `-t tcp`), and starts a runtime that only prints its nodes. Run it on any
two nodes, with the launcher options that reach them, e.g.

    python ta_ping_timeout.py -t tcp --wlm ssh --hostfile nodes.txt

DELAY_S = 15: the runtime fails to start. DELAY_S = 5: it starts.
"""
import os
import subprocess
import sys
import tempfile

DELAY_S = 15
SLOW_AGENT = f"""
import sys, time
if "dragon-tcp" in sys.argv and "--infrastructure" not in sys.argv:   # the data agent
    time.sleep({DELAY_S})
"""
HELLO = """
from dragon.native.machine import System
print("runtime up on", len(System().nodes), "nodes", flush=True)
"""

if __name__ == "__main__":
    with tempfile.TemporaryDirectory(dir=os.getcwd()) as folder:   # seen by every node
        with open(os.path.join(folder, "sitecustomize.py"), "w") as f:
            f.write(SLOW_AGENT)
        with open(os.path.join(folder, "hello.py"), "w") as f:
            f.write(HELLO)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [folder, *filter(None, [os.environ.get("PYTHONPATH")])]))
        proc = subprocess.run([sys.executable, "-m", "dragon", *sys.argv[1:],
                               os.path.join(folder, "hello.py")], env=env)
    print(f"dragon exited with {proc.returncode}")
