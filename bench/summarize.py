"""Print the markdown table of docs/benchmarks.md from a bench/run.sh results file: Herald, each
baseline, and Herald relative to each (above 1× = Herald better)."""
import sys

from resultfile import METRICS, fmt, get, load

rows, by = load(sys.argv[1])
for r in rows:
    if r.get("server_cpu_seconds") is not None and r.get("scenario") == "connect" and r.get("connections"):
        r["server_cpu_us_per_connection"] = r["server_cpu_seconds"] * 1e6 / r["connections"]

PEERS = [("node", "Node ws"), ("uws", "uWS.js"), ("bare", "bare tokio")]


def ratio(h, p, higher):
    """Herald relative to a peer, > 1 when Herald is better."""
    if h is None or p is None or not h or not p:
        return ""
    return f"{(h / p if higher else p / h):.2f}×"


print("| scenario | metric | Herald | " + " | ".join(label for _, label in PEERS)
      + " | Herald vs " + " | Herald vs ".join(label for _, label in PEERS) + " |")
print("| --- | --- | ---: |" + " ---: |" * (2 * len(PEERS)))
for name, path, label, higher in METRICS:
    h = get(by.get(("herald", name)), path)
    peers = [get(by.get((s, name)), path) for s, _ in PEERS]
    cells = [fmt(h)] + [fmt(p) for p in peers] + [ratio(h, p, higher) for p in peers]
    print(f"| {name} | {label} | " + " | ".join(cells) + " |")

SSE = [(n, path, label, higher) for n, path, label, higher in METRICS if ("herald", "sse-" + n) in by]
if SSE:
    print("\n| scenario | metric | Herald, WebSocket subscribers | Herald, SSE feed subscribers | SSE vs WebSocket |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, path, label, higher in SSE:
        w = get(by.get(("herald", name)), path)
        e = get(by.get(("herald", "sse-" + name)), path)
        print(f"| {name} | {label} | {fmt(w)} | {fmt(e)} | {ratio(e, w, higher)} |")

ROUNDS = [(n, path, label) for n, path, label, _ in METRICS
          if "server" in path and any(by[k].get("rounds", 1) > 1 for k in by if k[1] == n)]
if ROUNDS:
    print("\nEach round (the table shows each server's median):\n")
    print("| scenario | metric | server | rounds |")
    print("| --- | --- | --- | --- |")
    for name, path, label in ROUNDS:
        for server in ["herald"] + [s for s, _ in PEERS]:
            values = [get(r, path) for r in rows if r["server"] == server and r["name"] == name]
            if values:
                print(f"| {name} | {label} | {server} | " + " / ".join(fmt(v) for v in values) + " |")

for (server, name), r in sorted(by.items()):
    lost, dup = r.get("lost"), r.get("duplicates")
    if lost is not None:
        print(f"\n{server} {name}: lost {lost}, duplicates {dup}", end="")
print()
churn = by.get(("herald", "churn-200"))
if churn:
    print(f"\nchurn: {churn['connections_cut']} cuts, {churn['deliveries']} deliveries, "
          f"lost {churn['lost']}, duplicates {churn['duplicates']}, gap events {churn['gap_events']}")
