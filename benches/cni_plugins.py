#!/usr/bin/env python3
"""Times CNI ADD and DEL of a network (a conflist), with its plugins invoked directly, the way
libcni runs them: ADD through the chain in order (each plugin gets the previous result as
prevResult), DEL in reverse order with the final result. One fresh network namespace per
iteration, made and deleted outside the timed part. Used by benches/cni.sh.

    cni_plugins.py time --conflist FILE --bin-dir DIR [-n 100] [--label NAME] [--port 8080]
    cni_plugins.py stats --label NAME < LOG       # summary of a benches/cni.sh wrapper log
    cni_plugins.py walls --label NAME < TIMES     # summary of wall times in seconds
    cni_plugins.py table < JSON-LINES             # the above as markdown tables

time and stats print one JSON object: {"label", "n", "add": {"median", "p99", "mean", "min",
"max"}, "del": {...}} in milliseconds; walls {"label", "n", "wall": {...}}. p99 is the nearest-rank 99th percentile (over 100 samples, the
second largest).
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time


def summary(samples):
    s = sorted(samples)
    rank = max(1, math.ceil(0.99 * len(s)))
    return {
        "median": round(statistics.median(s) * 1000, 2),
        "p99": round(s[rank - 1] * 1000, 2),
        "mean": round(statistics.fmean(s) * 1000, 2),
        "min": round(s[0] * 1000, 2),
        "max": round(s[-1] * 1000, 2),
    }


def invoke(bin_dir, plugin_conf, verb, cid, netns):
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": verb,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": netns,
        "CNI_IFNAME": "eth0",
        "CNI_PATH": bin_dir,
        "CNI_ARGS": "IgnoreUnknown=1",
    }
    plugin = os.path.join(bin_dir, plugin_conf["type"])
    started = time.perf_counter()
    p = subprocess.run(
        [plugin], input=json.dumps(plugin_conf).encode(), env=env, capture_output=True
    )
    took = time.perf_counter() - started
    if p.returncode != 0:
        sys.exit(f"{verb} of {plugin} failed: {p.stdout.decode()} {p.stderr.decode()}")
    out = p.stdout.decode().strip()
    return took, (json.loads(out) if out else None)


def derive(conflist, plugin, runtime, prev):
    """The request configuration of one plugin of the list (SPEC section 3)."""
    conf = {k: v for k, v in plugin.items() if k != "capabilities"}
    conf["name"] = conflist["name"]
    conf["cniVersion"] = conflist["cniVersion"]
    caps = plugin.get("capabilities", {})
    rc = {k: v for k, v in runtime.items() if caps.get(k)}
    if rc:
        conf["runtimeConfig"] = rc
    if prev is not None:
        conf["prevResult"] = prev
    return conf


def time_chain(args):
    with open(args.conflist) as f:
        conflist = json.load(f)
    runtime = {
        "portMappings": [
            {"hostPort": args.port, "containerPort": 80, "protocol": "tcp", "hostIP": ""}
        ]
    }
    adds, dels = [], []
    for i in range(args.n):
        ns = f"{args.prefix}{i}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        try:
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
            netns, cid = f"/run/netns/{ns}", f"bench{os.getpid()}x{i}"
            total, prev = 0.0, None
            for plugin in conflist["plugins"]:
                took, prev = invoke(
                    args.bin_dir, derive(conflist, plugin, runtime, prev), "ADD", cid, netns
                )
                total += took
            adds.append(total)
            total = 0.0
            for plugin in reversed(conflist["plugins"]):
                took, _ = invoke(
                    args.bin_dir, derive(conflist, plugin, runtime, prev), "DEL", cid, netns
                )
                total += took
            dels.append(total)
        finally:
            subprocess.run(["ip", "netns", "del", ns])
    print(json.dumps({"label": args.label, "n": args.n, "add": summary(adds), "del": summary(dels)}))


def stats(args):
    """Sums a wrapper log (`VERB PLUGIN CONTAINERID START END` lines) per container and verb:
    a container's ADD is the time of every plugin of its chain."""
    per = {}
    for line in sys.stdin:
        parts = line.split()
        if len(parts) != 5 or parts[0] not in ("ADD", "DEL"):
            continue
        verb, _, cid, start, end = parts
        key = (verb, cid)
        per[key] = per.get(key, 0.0) + float(end) - float(start)
    adds = [v for (verb, _), v in per.items() if verb == "ADD"]
    dels = [v for (verb, _), v in per.items() if verb == "DEL"]
    if not adds or not dels:
        sys.exit("no ADD or DEL in the log")
    print(
        json.dumps(
            {"label": args.label, "n": len(adds), "add": summary(adds), "del": summary(dels)}
        )
    )


def walls(args):
    """Summary of wall times (seconds, one per line) as {"label", "n", "wall": {...}}."""
    samples = [float(l) for l in sys.stdin if l.strip()]
    print(json.dumps({"label": args.label, "n": len(samples), "wall": summary(samples)}))


def table(_args):
    """The JSON lines of the other commands as two markdown tables."""
    rows = [json.loads(line) for line in sys.stdin if line.strip()]
    print("| what | n | ADD median | ADD p99 | DEL median | DEL p99 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in (r for r in rows if "add" in r):
        a, d = r["add"], r["del"]
        print(f"| {r['label']} | {r['n']} | {a['median']} | {a['p99']} | {d['median']} | {d['p99']} |")
    walls = [r for r in rows if "wall" in r]
    if walls:
        print()
        print("| podman command | n | median | p99 | mean |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for r in walls:
            w = r["wall"]
            print(f"| {r['label']} | {r['n']} | {w['median']} | {w['p99']} | {w['mean']} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("time")
    t.add_argument("--conflist", required=True)
    t.add_argument("--bin-dir", required=True)
    t.add_argument("-n", type=int, default=100)
    t.add_argument("--label", default="network")
    t.add_argument("--port", type=int, default=8080)
    t.add_argument("--prefix", default=f"vswbc{os.getpid()}x")
    t.set_defaults(run=time_chain)
    s = sub.add_parser("stats")
    s.add_argument("--label", default="podman")
    s.set_defaults(run=stats)
    w = sub.add_parser("walls")
    w.add_argument("--label", default="podman")
    w.set_defaults(run=walls)
    tb = sub.add_parser("table")
    tb.set_defaults(run=table)
    args = ap.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
