#!/usr/bin/env python3
"""A flood of abandoned long-polling sessions (docs/benchmarks.md, HTTP transports): open N
sessions (`POST /http/poll`, each subscribed to a channel), never poll again, and report the
server's RSS before, right after, and once their `http.session_timeout` and
`session.resume_grace` have passed.

    bench/poll-flood.py PORT PID [N] [WAIT_SECONDS]
"""
import json
import socket
import sys
import time


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def open_session(port, i):
    body = json.dumps([{"type": "subscribe", "id": "1", "payload": {"channel": f"flood:{i % 100}"}}])
    req = (
        f"POST /http/poll HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}"
    ).encode()
    src = f"127.0.0.{1 + i % 8}"
    with socket.create_connection(("127.0.0.1", port), source_address=(src, 0)) as s:
        s.sendall(req)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.startswith(b"HTTP/1.1 200")


def main():
    port, pid = int(sys.argv[1]), int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 5000
    wait = float(sys.argv[4]) if len(sys.argv) > 4 else 15
    before = rss(pid)
    t0 = time.time()
    ok = sum(open_session(port, i) for i in range(n))
    opened = time.time() - t0
    after = rss(pid)
    time.sleep(wait)
    reclaimed = rss(pid)
    print(json.dumps({
        "sessions": n, "opened": ok, "open_seconds": round(opened, 2),
        "rss_before": before, "rss_after_flood": after, "rss_after_wait": reclaimed,
        "bytes_per_session": round((after - before) / max(ok, 1)),
        "returned_percent": round(100 * (after - reclaimed) / max(after - before, 1), 1),
        "wait_seconds": wait,
    }))


if __name__ == "__main__":
    main()
