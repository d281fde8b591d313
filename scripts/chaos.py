#!/usr/bin/env python3
"""The real-network chaos run (not in CI): five `clb node` processes, each in
its own network namespace on this machine (veth pairs on a bridge), real
WebSocket clients in the root namespace, and a nemesis that every 20 s picks
one of: partition, heal, 20% loss, 300 ms delay, SIGKILL and restart,
SIGSTOP (resumed 10 s later). It stops by itself, removes everything it
made, and checks:

  - 0 unsafe sheds: every shed a node logged was decided on a view of
    exactly the nodes that were running and reachable from it (once the
    topology had been stable for GRACE), and always on a strict majority;
  - 0 lost clients: at the end every client is connected again, and the
    nodes' counts add up to the clients;
  - after the last heal, every node within +-5% of the average within 10
    rounds.

Partitions are `prohibit` routes inside the namespaces (node to node only:
the clients still reach every node, as through a load balancer); loss and
delay are `tc netem` on the node's interface. Where the kernel has no netem
(some VM kernels), loss is an iptables `statistic` rule dropping 20% of what
the node sends, and delay is the node paused 300 ms out of every 600 (what
it receives waits in its socket buffers, what it sends leaves late). Needs
root and iproute2, and iptables without netem (installed with apt-get when
missing).

    sudo scripts/chaos.py [--minutes 5] [--clients 1000] [--seed 1]

Exit status: 0 when every check holds, 1 when one fails, 2 when it cannot
run here.
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime

NODES = 5
SUBNET = "10.77.0"
HOST_IP = f"{SUBNET}.254"
BRIDGE = "clbchaos0"
ROUND_S = 2.0
GRACE_S = 8.0
KEY = "chaos-run-cluster-key-of-32-bytes-or-more"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ns(i):
    return f"clbchaos{i}"


def ip(i):
    return f"{SUBNET}.{i + 1}"


def name(i):
    return f"n{i + 1}"


def die(message, code=2):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def run(*cmd, check=True):
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r.returncode == 0


def in_ns(i, *cmd, check=True):
    return run("ip", "netns", "exec", ns(i), *cmd, check=check)


def preflight():
    if os.geteuid() != 0:
        die("the chaos run needs root (network namespaces, routes, tc)")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            die(f"the chaos run needs `{tool}` (apt-get install -y iproute2)")
    probe = "clbchaosprobe"
    if not run("ip", "netns", "add", probe, check=False):
        die("cannot create network namespaces here (ip netns add failed)")
    try:
        netem = run("ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "lo", "root",
                    "netem", "delay", "1ms", check=False)
        if not netem and shutil.which("iptables") is None:
            print("== no tc netem in this kernel: installing iptables for loss", flush=True)
            run("apt-get", "install", "-y", "-qq", "iptables", check=False)
        if not netem and not run("ip", "netns", "exec", probe, "iptables", "-A", "OUTPUT", "-m",
                                 "statistic", "--mode", "random", "--probability", "0.2",
                                 "-j", "DROP", check=False):
            die("neither tc netem nor iptables' statistic match works here: no way to make loss")
    finally:
        run("ip", "netns", "del", probe, check=False)
    return netem


def cleanup():
    for i in range(NODES):
        run("ip", "netns", "del", ns(i), check=False)
        run("ip", "link", "del", f"vclb{i}", check=False)
    run("ip", "link", "del", BRIDGE, check=False)


def network():
    cleanup()
    run("ip", "link", "add", BRIDGE, "type", "bridge")
    run("ip", "addr", "add", f"{HOST_IP}/24", "dev", BRIDGE)
    run("ip", "link", "set", BRIDGE, "up")
    for i in range(NODES):
        run("ip", "netns", "add", ns(i))
        run("ip", "link", "add", f"vclb{i}", "type", "veth", "peer", "name", "eth0", "netns", ns(i))
        run("ip", "link", "set", f"vclb{i}", "master", BRIDGE)
        run("ip", "link", "set", f"vclb{i}", "up")
        in_ns(i, "ip", "addr", "add", f"{ip(i)}/24", "dev", "eth0")
        in_ns(i, "ip", "link", "set", "eth0", "up")
        in_ns(i, "ip", "link", "set", "lo", "up")


class Cluster:
    """The processes, the topology as the nemesis made it, and its history."""

    def __init__(self, clb, logs, clients, rng, netem):
        self.has_netem = netem
        self.stutter = {}  # node -> threading.Event that stops its stutter
        self.lock = threading.Lock()
        self.clb = clb
        self.logs = logs
        self.rng = rng
        self.procs = [None] * NODES
        self.lives = [0] * NODES
        self.blocked = set()  # (a, b): a cannot send to b
        self.netem = {}  # node -> description
        self.paused = set()
        self.dead = set()
        self.timers = []  # (when, action, node)
        self.history = []  # (time, reachable-from matrix as frozensets)
        self.events = []  # (time, text)
        self.clients = clients

    def start(self, i):
        self.lives[i] += 1
        seeds = ",".join(f"{ip(j)}:7946" for j in range(NODES) if j != i)
        log = open(os.path.join(self.logs, f"{name(i)}.{self.lives[i]}.log"), "w")
        env = dict(os.environ, RUST_LOG="warn,clb=info,clb_cli=info", CLB_CLUSTER_KEY=KEY)
        self.procs[i] = subprocess.Popen(
            ["ip", "netns", "exec", ns(i), self.clb, "node",
             "--id", name(i),
             "--ws-listen", f"{ip(i)}:8080",
             "--http-listen", f"{ip(i)}:9090",
             "--gossip-listen", f"{ip(i)}:7946",
             "--seeds", seeds,
             "--round-duration", f"{ROUND_S}s",
             "--advertise-url", f"ws://{ip(i)}:8080/ws"],
            stdout=subprocess.DEVNULL, stderr=log, env=env)
        self.dead.discard(i)
        self.changed(f"start {name(i)} (life {self.lives[i]})")

    def reachable(self):
        """For each node, the nodes whose reports reach it right now: its
        connected component (gossip relays state through a node that hears
        both sides, so reachability is transitive)."""
        up = {i for i in range(NODES) if i not in self.dead and i not in self.paused}

        def linked(a, b):
            return (a, b) not in self.blocked and (b, a) not in self.blocked

        out = []
        for a in range(NODES):
            if a not in up:
                out.append(frozenset())
                continue
            seen, todo = {a}, [a]
            while todo:
                x = todo.pop()
                for y in up - seen:
                    if linked(x, y):
                        seen.add(y)
                        todo.append(y)
            out.append(frozenset(name(b) for b in seen))
        return out

    def changed(self, what):
        now = time.time()
        self.events.append((now, what))
        self.history.append((now, self.reachable()))
        print(f"  {datetime.now().strftime('%H:%M:%S')} {what}", flush=True)

    def block(self, a, b):
        self.blocked.add((a, b))
        in_ns(a, "ip", "route", "add", "prohibit", f"{ip(b)}/32", check=False)

    def partition(self):
        minority = self.rng.sample(range(NODES), self.rng.choice([1, 2]))
        for a in minority:
            for b in range(NODES):
                if b not in minority:
                    self.block(a, b)
                    self.block(b, a)
        self.changed(f"partition {[name(m) for m in minority]} | rest")

    def set_netem(self, i, spec, what):
        in_ns(i, "tc", "qdisc", "del", "dev", "eth0", "root", check=False)
        in_ns(i, "tc", "qdisc", "add", "dev", "eth0", "root", "netem", *spec.split())
        self.netem[i] = spec
        self.changed(f"{what} on {name(i)}")

    def loss(self, i):
        if self.has_netem:
            self.set_netem(i, "loss 20%", "20% loss")
            return
        in_ns(i, "iptables", "-A", "OUTPUT", "-m", "statistic", "--mode", "random",
              "--probability", "0.2", "-j", "DROP")
        self.netem[i] = "iptables"
        self.changed(f"20% loss on {name(i)} (iptables)")

    def delay(self, i):
        if self.has_netem:
            self.set_netem(i, "delay 300ms", "300 ms delay")
            return
        if i in self.stutter or i in self.dead:
            return
        stop = threading.Event()
        self.stutter[i] = stop

        def stutter():
            while not stop.wait(0.3):
                with self.lock:
                    if i in self.paused or i in self.dead or stop.is_set():
                        continue
                    self.procs[i].send_signal(signal.SIGSTOP)
                time.sleep(0.3)
                with self.lock:
                    if i not in self.paused and i not in self.dead:
                        self.procs[i].send_signal(signal.SIGCONT)

        threading.Thread(target=stutter, daemon=True).start()
        self.changed(f"300 ms delay on {name(i)} (paused 300 ms of every 600)")

    def unstutter(self):
        for i, stop in list(self.stutter.items()):
            stop.set()
            with self.lock:
                if i not in self.paused and i not in self.dead:
                    self.procs[i].send_signal(signal.SIGCONT)
        self.stutter.clear()

    def kill(self):
        alive = [i for i in range(NODES) if i not in self.dead]
        if not alive:
            return
        i = self.rng.choice(alive)
        with self.lock:
            self.procs[i].send_signal(signal.SIGKILL)
            self.procs[i].wait()
            self.paused.discard(i)
            self.dead.add(i)
        if i in self.stutter:
            self.stutter.pop(i).set()
        self.timers.append((time.time() + 3, "restart", i))
        self.changed(f"SIGKILL {name(i)} (restart in 3 s)")

    def pause(self):
        alive = [i for i in range(NODES) if i not in self.dead and i not in self.paused]
        if not alive:
            return
        i = self.rng.choice(alive)
        with self.lock:
            self.procs[i].send_signal(signal.SIGSTOP)
            self.paused.add(i)
        self.timers.append((time.time() + 10, "resume", i))
        self.changed(f"SIGSTOP {name(i)} (SIGCONT in 10 s)")

    def resume(self, i):
        if i in self.paused:
            with self.lock:
                self.procs[i].send_signal(signal.SIGCONT)
                self.paused.discard(i)
            self.changed(f"SIGCONT {name(i)}")

    def heal(self):
        for a, b in self.blocked:
            in_ns(a, "ip", "route", "del", "prohibit", f"{ip(b)}/32", check=False)
        self.blocked.clear()
        for i in list(self.netem):
            in_ns(i, "tc", "qdisc", "del", "dev", "eth0", "root", check=False)
            in_ns(i, "iptables", "-F", "OUTPUT", check=False)
        self.netem.clear()
        self.unstutter()
        with self.lock:
            for i in list(self.paused):
                self.procs[i].send_signal(signal.SIGCONT)
            self.paused.clear()
        self.timers = [t for t in self.timers if t[1] != "resume"]
        for i in list(self.dead):
            self.start(i)
        self.timers = [t for t in self.timers if t[1] != "restart"]
        self.changed("heal")

    def due(self):
        now = time.time()
        for t in [t for t in self.timers if t[0] <= now]:
            self.timers.remove(t)
            if t[1] == "restart":
                self.start(t[2])
            else:
                self.resume(t[2])

    def nemesis(self):
        action = self.rng.choice(["partition", "heal", "loss", "delay", "kill", "pause"])
        i = self.rng.randrange(NODES)
        if action == "partition":
            self.partition()
        elif action == "heal":
            self.heal()
        elif action == "loss":
            self.loss(i)
        elif action == "delay":
            self.delay(i)
        elif action == "kill":
            self.kill()
        else:
            self.pause()

    def stop(self):
        self.unstutter()
        for i in list(self.paused):
            self.procs[i].send_signal(signal.SIGCONT)
        for p in self.procs:
            if p and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            if p:
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()


def build():
    """Builds `clb` and the client swarm in release mode; their paths."""
    print("== building clb and the client swarm (release)", flush=True)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "clb-cli",
                    "--bin", "clb", "--example", "swarm"], cwd=ROOT, check=True)
    return (os.path.join(ROOT, "target", "release", "clb"),
            os.path.join(ROOT, "target", "release", "examples", "swarm"))


def fetch(url, timeout=0.5):
    """The body at `url`, or None when the node does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read().decode()
    except Exception:
        return None


def status(i):
    body = fetch(f"http://{ip(i)}:9090/status")
    return json.loads(body) if body else None


def stop(proc, timeout):
    """SIGTERM, then SIGKILL if `proc` has not ended within `timeout` s."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def swarm_stats(path):
    try:
        with open(path) as f:
            return json.load(f)
    except Exception:
        return None


SHED = re.compile(r"^(\S+)\s+INFO .*round: shedding (\d+).*\bseen=(\S+)")


def sheds(logs):
    """Every shed any node decided, from the logs: (time, node, n, seen)."""
    out = []
    for file in sorted(os.listdir(logs)):
        node = file.split(".")[0]
        with open(os.path.join(logs, file), errors="replace") as f:
            for line in f:
                line = re.sub(r"\x1b\[[0-9;]*m", "", line)
                m = SHED.match(line)
                if m:
                    at = datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
                    out.append((at, node, int(m.group(2)), frozenset(m.group(3).split(","))))
    return out


def judge(shed, history):
    """Why a shed was unsafe, or None."""
    at, node, n, seen = shed
    i = int(node[1:]) - 1
    if len(seen) * 2 <= NODES:
        return f"{node} shed {n} seeing only {sorted(seen)}: no majority"
    # The topology in effect at `at`, and whether it had been for GRACE.
    current = None
    stable_since = None
    for t, reach in history:
        if t > at:
            break
        if current is None or reach[i] != current:
            stable_since = t
        current = reach[i]
    if current is None or at - stable_since < GRACE_S:
        return None
    if seen != current:
        return f"{node} shed {n} on {sorted(seen)}, but {sorted(current)} were reachable"
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the logs folder")
    args = parser.parse_args()
    netem = preflight()

    clb, swarm_bin = build()

    logs = tempfile.mkdtemp(prefix="clb-chaos-")
    rng = random.Random(args.seed)
    cluster = Cluster(clb, logs, args.clients, rng, netem)
    swarm = None
    stats_path = os.path.join(logs, "swarm.json")
    result = {}
    try:
        network()
        print(f"== 5 nodes in namespaces clbchaos0..4 ({SUBNET}.1-5), logs in {logs}", flush=True)
        for i in range(NODES):
            cluster.start(i)
        deadline = time.time() + 20
        while any(status(i) is None for i in range(NODES)):
            if time.time() > deadline:
                raise RuntimeError("the nodes did not come up")
            time.sleep(0.2)
        urls = ",".join(f"ws://{ip(i)}:8080/ws" for i in range(NODES))
        swarm = subprocess.Popen([swarm_bin, "--nodes", urls, "--clients", str(args.clients),
                                  "--seed", str(args.seed), "--first-node", "0",
                                  "--stats", stats_path],
                                 stdout=subprocess.DEVNULL, stderr=open(os.path.join(logs, "swarm.err"), "w"))
        print(f"== {args.clients} clients, all on n1 first; nemesis every 20 s for {args.minutes} min", flush=True)
        end = time.time() + args.minutes * 60
        next_fault = time.time() + 20
        counts_log = []
        while time.time() < end:
            cluster.due()
            if time.time() >= next_fault:
                cluster.nemesis()
                next_fault += 20
            counts_log.append((time.time(), [((status(i) or {}).get("count")) for i in range(NODES)]))
            time.sleep(0.5)

        # The last fault empties a node, so that the convergence after the
        # last heal is a real test, not a cluster that was never disturbed.
        cluster.kill()
        time.sleep(5)
        cluster.heal()
        healed = time.time()
        print("== last heal; watching for 10 rounds", flush=True)
        balanced_at = None
        lost = None
        while time.time() < healed + 10 * ROUND_S + 30:
            counts = [(status(i) or {}).get("count") for i in range(NODES)]
            s = swarm_stats(stats_path) or {}
            if None not in counts:
                avg = args.clients / NODES
                even = sum(counts) == args.clients and all(abs(c - avg) <= avg * 0.05 for c in counts)
                if even and balanced_at is None:
                    balanced_at = time.time()
                if s.get("connected") == args.clients and sum(counts) == args.clients:
                    lost = 0
                if balanced_at and lost == 0:
                    break
            time.sleep(0.5)
        final_counts = [(status(i) or {}).get("count") for i in range(NODES)]
        final_swarm = swarm_stats(stats_path) or {}
        if lost is None:
            lost = args.clients - (final_swarm.get("connected") or 0)
        metrics = {}
        for i in range(NODES):
            st = status(i) or {}
            metrics[name(i)] = st.get("rounds")
    finally:
        stop(swarm, 20)
        cluster.stop()
        cleanup()

    decided = sheds(logs)
    unsafe = [why for why in (judge(s, cluster.history) for s in decided) if why]
    rounds_to_even = None if balanced_at is None else (balanced_at - healed) / ROUND_S
    faults = [e for e in cluster.events if not e[1].startswith(("start", "SIGCONT"))]
    kinds = {}
    for e in faults:
        kind = e[1].split(" on ")[0].split(" (")[0].split(" [")[0]
        kind = re.sub(r" n\d$", "", kind)
        kinds[kind] = kinds.get(kind, 0) + 1
    result = {
        "minutes": args.minutes,
        "clients": args.clients,
        "seed": args.seed,
        "faults": len(faults),
        "faults_by_kind": kinds,
        "sheds_decided": len(decided),
        "clients_moved_by_sheds": sum(s[2] for s in decided),
        "unsafe_sheds": len(unsafe),
        "lost_clients": lost,
        "rounds_from_last_heal_to_within_5pct": rounds_to_even,
        "final_counts": final_counts,
        "swarm": final_swarm,
        "rounds_by_outcome_at_end": metrics,
    }
    print(json.dumps(result, indent=2))
    for why in unsafe[:20]:
        print(f"unsafe: {why}")
    ok = not unsafe and lost == 0 and rounds_to_even is not None and rounds_to_even <= 10
    with open(os.path.join(ROOT, "target", "chaos-result.json"), "w") as f:
        json.dump(result, f, indent=2)
    if not args.keep:
        shutil.rmtree(logs, ignore_errors=True)
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
