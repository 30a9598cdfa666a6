"""A bench results file (one JSON object per line, from bench/run.sh or bench/compare.sh): the
rows by (server, scenario name), a dotted-path reader, and the metrics the tables show."""
import json

# (scenario name, metric path, label, higher is better)
METRICS = [
    ("fanout-1x1000-100hz", "latency.p50_ms", "p50 latency (ms)", False),
    ("fanout-1x1000-100hz", "latency.p99_ms", "p99 latency (ms)", False),
    ("fanout-1x1000-100hz", "deliveries_per_server_cpu_second", "deliveries / server CPU s", True),
    ("fanout-1x1000-100hz", "server_user_cpu_us_per_delivery", "server user CPU µs / delivery", False),
    ("fanout-1x5000-max", "deliveries_per_second", "deliveries / s (wall)", True),
    ("fanout-1x5000-max", "deliveries_per_server_cpu_second", "deliveries / server CPU s", True),
    ("fanout-1000x10-2000hz", "deliveries_per_second", "deliveries / s (wall)", True),
    ("fanout-1000x10-2000hz", "latency.p99_ms", "p99 latency (ms)", False),
    ("fanout-1000x10-2000hz", "deliveries_per_server_cpu_second", "deliveries / server CPU s", True),
    ("fanout-1000x10-2000hz", "server_user_cpu_us_per_delivery", "server user CPU µs / delivery", False),
    ("idle-10000", "server_bytes_per_connection", "server bytes / idle connection", False),
    ("connect-5000", "connections_per_second", "connections / s (connect+subscribe)", True),
    ("connect-5000", "server_cpu_us_per_connection", "server CPU µs / connection", False),
]


def load(path):
    """(rows, rows by (server, name))."""
    rows = [json.loads(line) for line in open(path) if line.strip()]
    return rows, {(r["server"], r["name"]): r for r in rows}


def get(r, path):
    for k in path.split("."):
        if r is None:
            return None
        r = r.get(k)
    return r


def fmt(v):
    return "" if v is None else (f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}")
