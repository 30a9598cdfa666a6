"""Print the markdown table of docs/benchmarks.md from a bench/run.sh results file."""
import sys

from resultfile import METRICS, fmt, get, load

rows, by = load(sys.argv[1])
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
