#!/usr/bin/env python3
"""The bounded soak (not in CI): six `clb node` processes on loopback and
10,000 real WebSocket clients for 10 minutes; every 30 s a random node is
SIGKILLed and restarted, every 3 minutes every node is restarted in turn
(SIGTERM, the way a rolling deploy does it). It stops by itself and prints:

  - lost clients: every client must be connected again at the end (a
    client of a killed node reconnects; that is not a loss), and the nodes'
    counts must add up to the clients;
  - peak and final RSS per node, and the cluster's RSS per open connection
    minute by minute (a leak shows as a rising figure);
  - CPU per node, rounds by outcome, rejected gossip datagrams, sheds that
    saw no majority (must be 0).

    scripts/soak.py [--minutes 10] [--clients 10000] [--seed 1]

Exit status 0 when no client was lost and no unsafe shed was seen.
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
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chaos import build, fetch, sheds, stop, swarm_stats  # noqa: E402

NODES = 6
ROUND_S = 2.0
KEY = "soak-run-cluster-key-of-32-bytes-or-more!"
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def name(i):
    return f"n{i + 1}"


def http(i):
    return f"http://127.0.0.1:{19190 + i}"


class Node:
    def __init__(self, i, clb, logs):
        self.i, self.clb, self.logs = i, clb, logs
        self.proc = None
        self.lives = 0
        self.cpu_s = 0.0  # of finished lives
        self.peak_rss = 0
        self.rounds = {}  # summed over finished lives
        self.rejected = 0

    def start(self):
        self.lives += 1
        seeds = ",".join(f"127.0.0.1:{17946 + j}" for j in range(NODES) if j != self.i)
        log = open(os.path.join(self.logs, f"{name(self.i)}.{self.lives}.log"), "w")
        env = dict(os.environ, RUST_LOG="warn,clb=info,clb_cli=info", CLB_CLUSTER_KEY=KEY)
        self.proc = subprocess.Popen(
            [self.clb, "node", "--id", name(self.i),
             "--ws-listen", f"127.0.0.1:{18180 + self.i}",
             "--http-listen", f"127.0.0.1:{19190 + self.i}",
             "--gossip-listen", f"127.0.0.1:{17946 + self.i}",
             "--seeds", seeds, "--round-duration", f"{ROUND_S}s"],
            stdout=subprocess.DEVNULL, stderr=log, env=env)

    def sample(self):
        """RSS now (bytes); updates the peak."""
        try:
            with open(f"/proc/{self.proc.pid}/statm") as f:
                rss = int(f.read().split()[1]) * PAGE
        except (OSError, ValueError, AttributeError):
            return 0
        self.peak_rss = max(self.peak_rss, rss)
        return rss

    def cpu_now(self):
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / TICKS
        except (OSError, ValueError, IndexError, AttributeError):
            return 0.0

    def status(self):
        body = fetch(f"{http(self.i)}/status")
        return json.loads(body) if body else None

    def harvest(self):
        """Adds this life's CPU, rounds and rejections before it ends."""
        self.cpu_s += self.cpu_now()
        self.sample()
        st = self.status() or {}
        for outcome, n in (st.get("rounds") or {}).items():
            self.rounds[outcome] = self.rounds.get(outcome, 0) + n
        body = fetch(f"{http(self.i)}/metrics") or ""
        for line in body.splitlines():
            m = re.match(r"clb_rejected_messages_total\{[^}]*\} (\d+)", line)
            if m:
                self.rejected += int(m.group(1))

    def kill(self):
        self.harvest()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def restart_gracefully(self):
        self.harvest()
        stop(self.proc, 20)
        self.start()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    clb, swarm_bin = build()
    logs = tempfile.mkdtemp(prefix="clb-soak-")
    rng = random.Random(args.seed)
    nodes = [Node(i, clb, logs) for i in range(NODES)]
    swarm = None
    per_conn = []
    try:
        for n in nodes:
            n.start()
        deadline = time.time() + 30
        while any(n.status() is None for n in nodes):
            if time.time() > deadline:
                raise RuntimeError("the nodes did not come up")
            time.sleep(0.2)
        stats = os.path.join(logs, "swarm.json")
        urls = ",".join(f"ws://127.0.0.1:{18180 + i}/ws" for i in range(NODES))
        swarm = subprocess.Popen([swarm_bin, "--nodes", urls, "--clients", str(args.clients),
                                  "--seed", str(args.seed), "--stats", stats],
                                 stdout=subprocess.DEVNULL,
                                 stderr=open(os.path.join(logs, "swarm.err"), "w"))
        print(f"== {NODES} nodes, {args.clients} clients, {args.minutes} min: "
              f"a SIGKILL every 30 s, a rolling restart every 3 min", flush=True)
        start = time.time()
        end = start + args.minutes * 60
        next_kill = start + 30
        next_roll = start + 180
        next_minute = start + 60
        pending_restart = []
        kills = rolls = 0
        while time.time() < end:
            now = time.time()
            for t, n in list(pending_restart):
                if t <= now:
                    n.start()
                    pending_restart.remove((t, n))
            if now >= next_roll:
                next_roll += 180
                rolls += 1
                print(f"  {now - start:5.0f}s rolling restart", flush=True)
                for n in nodes:
                    if n.proc.poll() is None:
                        n.restart_gracefully()
                        time.sleep(5)
            elif now >= next_kill:
                next_kill += 30
                alive = [n for n in nodes if n.proc.poll() is None]
                victim = rng.choice(alive)
                victim.kill()
                kills += 1
                pending_restart.append((now + 2, victim))
                print(f"  {now - start:5.0f}s SIGKILL {name(victim.i)}", flush=True)
            if now >= next_minute:
                next_minute += 60
                rss = sum(n.sample() for n in nodes if n.proc.poll() is None)
                counts = [((n.status() or {}).get("count") or 0) for n in nodes]
                open_conns = max(sum(counts), 1)
                per_conn.append((round((now - start) / 60), rss / open_conns))
                print(f"  {now - start:5.0f}s counts {counts}, RSS {rss / 2**20:.0f} MiB, "
                      f"{rss / open_conns / 1024:.1f} KiB per connection", flush=True)
            else:
                for n in nodes:
                    if n.proc.poll() is None:
                        n.sample()
            time.sleep(0.5)
        for t, n in pending_restart:
            n.start()
        print("== end of faults; waiting for every client to be back", flush=True)
        lost = None
        settle = time.time() + 90
        while time.time() < settle:
            counts = [(n.status() or {}).get("count") for n in nodes]
            s = swarm_stats(stats) or {}
            if None not in counts and sum(counts) == args.clients and s.get("connected") == args.clients:
                lost = 0
                break
            time.sleep(1)
        final_swarm = swarm_stats(stats) or {}
        if lost is None:
            lost = args.clients - (final_swarm.get("connected") or 0)
        final = []
        for n in nodes:
            st = n.status() or {}
            final.append({"node": name(n.i), "count": st.get("count"), "rss": n.sample()})
            n.harvest()
    finally:
        stop(swarm, 30)
        # All at once, then wait: six graceful drains in parallel.
        for n in nodes:
            if n.proc and n.proc.poll() is None:
                n.proc.send_signal(signal.SIGTERM)
        for n in nodes:
            if n.proc:
                try:
                    n.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    n.proc.kill()

    decided = sheds(logs)
    no_majority = [s for s in decided if len(s[3]) * 2 <= NODES]
    elapsed = args.minutes * 60
    print(f"\n{'node':5} {'lives':>5} {'peak RSS':>9} {'final RSS':>9} {'final count':>11} "
          f"{'CPU s':>7} {'CPU %':>6} {'balanced':>8} {'shed':>5} {'held':>5} {'discarded':>9} {'rejected':>8}")
    for n, f in zip(nodes, final):
        r = n.rounds
        print(f"{name(n.i):5} {n.lives:5} {n.peak_rss / 2**20:7.1f}Mi {f['rss'] / 2**20:7.1f}Mi "
              f"{f['count'] or 0:11} {n.cpu_s:7.1f} {100 * n.cpu_s / elapsed:5.1f}% "
              f"{r.get('balanced', 0):8} {r.get('shed', 0):5} {r.get('held', 0):5} "
              f"{r.get('discarded', 0):9} {n.rejected:8}")
    result = {
        "minutes": args.minutes,
        "clients": args.clients,
        "kills": kills,
        "rolling_restarts": rolls,
        "lost_clients": lost,
        "swarm": final_swarm,
        "sheds_decided": len(decided),
        "sheds_without_majority": len(no_majority),
        "kib_per_connection_by_minute": [(m, round(b / 1024, 1)) for m, b in per_conn],
        "nodes": [{"node": name(n.i), "lives": n.lives, "peak_rss_mib": round(n.peak_rss / 2**20, 1),
                   "final_rss_mib": round(f["rss"] / 2**20, 1), "final_count": f["count"],
                   "cpu_s": round(n.cpu_s, 1), "rounds": n.rounds, "rejected": n.rejected}
                  for n, f in zip(nodes, final)],
    }
    print(json.dumps({k: v for k, v in result.items() if k != "nodes"}, indent=2))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "target", "soak-result.json"), "w") as f:
        json.dump(result, f, indent=2)
    shutil.rmtree(logs, ignore_errors=True)
    ok = lost == 0 and not no_majority
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
