"""Print the markdown table of docs/benchmarks.md from a bench/run.sh results file."""
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
by = {(r["server"], r["name"]): r for r in rows}


def get(r, path):
    for k in path.split("."):
        if r is None:
            return None
        r = r.get(k)
    return r


METRICS = [
    ("fanout-1x1000-100hz", "latency.p50_ms", "p50 latency (ms)", False),
    ("fanout-1x1000-100hz", "latency.p99_ms", "p99 latency (ms)", False),
    ("fanout-1x1000-100hz", "deliveries_per_server_cpu_second", "deliveries / server CPU s", True),
    ("fanout-1x5000-max", "deliveries_per_second", "deliveries / s (wall)", True),
    ("fanout-1x5000-max", "deliveries_per_server_cpu_second", "deliveries / server CPU s", True),
    ("fanout-1000x10-2000hz", "deliveries_per_second", "deliveries / s (wall)", True),
    ("fanout-1000x10-2000hz", "latency.p99_ms", "p99 latency (ms)", False),
    ("fanout-1000x10-2000hz", "deliveries_per_server_cpu_second", "deliveries / server CPU s", True),
    ("idle-10000", "server_bytes_per_connection", "server bytes / idle connection", False),
    ("connect-5000", "connections_per_second", "connections / s (connect+subscribe)", True),
    ("connect-5000", "server_cpu_us_per_connection", "server CPU µs / connection", False),
]
for r in rows:
    if r.get("server_cpu_seconds") is not None and r.get("scenario") == "connect" and r.get("connections"):
        r["server_cpu_us_per_connection"] = r["server_cpu_seconds"] * 1e6 / r["connections"]

print("| scenario | metric | Herald | Node ws | Herald ÷ Node (better ×) |")
print("| --- | --- | ---: | ---: | ---: |")
for name, path, label, higher in METRICS:
    h, n = get(by.get(("herald", name)), path), get(by.get(("node", name)), path)
    if h is None or n is None:
        ratio = ""
    elif higher:
        ratio = f"{h / n:.1f}×" if n else ""
    else:
        ratio = f"{n / h:.1f}×" if h else ""
    fmt = lambda v: "" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:.2f}")
    print(f"| {name} | {label} | {fmt(h)} | {fmt(n)} | {ratio} |")

for (server, name), r in sorted(by.items()):
    lost, dup = r.get("lost"), r.get("duplicates")
    if lost is not None:
        print(f"\n{server} {name}: lost {lost}, duplicates {dup}", end="")
print()
churn = by.get(("herald", "churn-200"))
if churn:
    print(f"\nchurn: {churn['connections_cut']} cuts, {churn['deliveries']} deliveries, "
          f"lost {churn['lost']}, duplicates {churn['duplicates']}, gap events {churn['gap_events']}")
