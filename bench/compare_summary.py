"""The markdown table of a bench/compare.sh results file: each metric per run, the noise between
two runs of the same binary, and the change between the binaries."""
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
    ("fanout-1000x10-2000hz", "latency.p99_ms", "p99 latency (ms)", False),
    ("fanout-1000x10-2000hz", "deliveries_per_server_cpu_second", "deliveries / server CPU s", True),
    ("idle-10000", "server_bytes_per_connection", "server bytes / idle connection", False),
]


def fmt(v):
    return "" if v is None else (f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}")


def spread(a, b):
    return abs(a - b) / ((a + b) / 2) * 100 if a is not None and b is not None and a + b else None


print("| scenario | metric | before 1 | before 2 | after 1 | after 2 | noise (same binary) | after ÷ before (better ×) |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for name, path, label, higher in METRICS:
    v = {s: get(by.get((s, name)), path) for s in ["before-1", "before-2", "after-1", "after-2"]}
    nb, na = spread(v["before-1"], v["before-2"]), spread(v["after-1"], v["after-2"])
    noise = max(x for x in [nb, na, 0] if x is not None)
    if None in v.values():
        ratio = ""
    else:
        b, a = (v["before-1"] + v["before-2"]) / 2, (v["after-1"] + v["after-2"]) / 2
        ratio = f"{(a / b if higher else b / a):.2f}×" if a and b else ""
    cells = " | ".join(fmt(v[s]) for s in ["before-1", "before-2", "after-1", "after-2"])
    print(f"| {name} | {label} | {cells} | ±{noise:.0f} % | {ratio} |")
