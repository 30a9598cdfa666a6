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


# Counts that add up over rounds instead of taking the median.
SUMMED = {"lost", "duplicates", "connect_failures"}


def median(values):
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def merge(rounds):
    """One row for a scenario run several times on one server (bench/run.sh's rounds): each
    number the median of the rounds (losses and duplicates summed), `rounds` their count."""
    if len(rounds) == 1:
        return rounds[0]

    def combine(values, key):
        first = values[0]
        if isinstance(first, dict):
            keys = set().union(*(v.keys() for v in values if isinstance(v, dict)))
            return {k: combine([v.get(k) for v in values], k) for k in keys}
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(numbers) != len(values) or not numbers:
            return first
        return sum(numbers) if key in SUMMED else median(numbers)

    row = combine(rounds, None)
    row["rounds"] = len(rounds)
    return row


def load(path):
    """(rows, rows by (server, name)); a scenario run in several rounds is merged (`merge`)."""
    rows = [json.loads(line) for line in open(path) if line.strip()]
    grouped = {}
    for r in rows:
        grouped.setdefault((r["server"], r["name"]), []).append(r)
    return rows, {k: merge(v) for k, v in grouped.items()}


def get(r, path):
    for k in path.split("."):
        if r is None:
            return None
        r = r.get(k)
    return r


def fmt(v):
    return "" if v is None else (f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}")
