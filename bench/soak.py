#!/usr/bin/env python3
"""Helpers of bench/soak.sh (Python 3 standard library only).

  soak.py abuse  --port P --seconds N --out FILE.json
      Abuse patterns on raw sockets for N seconds, each in a loop, and a tally of how the server
      ended every connection (JSON): ping floods and pong floods (expected close 1008), fragment
      floods (1008), unknown-command floods (4004), slow readers (stop reading; the server must
      close them), half-open handshakes (a partial HTTP request head held open; closed after
      server.header_read_timeout), abrupt closes (TCP dropped without a close frame, half of them
      resumed on a new connection), and presence clients (subscribe to a presence namespace,
      query presence, leave cleanly or abruptly).
  soak.py sample --pid PID --port P --csv FILE --phase-file FILE [--interval 5]
      Append one CSV row every interval until the server process is gone or SIGTERM: time,
      phase, RSS, fds, threads, CPU seconds, and the /metrics gauges.
  soak.py snapshot --pid PID --port P
      One sample as JSON.
  soak.py presence-count --port P --channels C1,C2
      Clients the server reports in presence for those channels (must be 0 once idle).
  soak.py summarize --dir RUN --seconds N --alive 0|1 [--fd-tolerance 4] [--rss-tolerance-pct 25]
      The checks and figures of a soak run (summary.md, summary.json); exit 1 when a check fails.
"""

import argparse
import asyncio
import base64
import csv
import json
import os
import random
import signal
import socket
import struct
import sys
import time
import urllib.request
from collections import Counter, defaultdict

HOST = "127.0.0.1"

# ---------------------------------------------------------------------------------------------
# Server observation


def proc_sample(pid):
    status = open(f"/proc/{pid}/status").read()
    fields = dict(l.split(":", 1) for l in status.splitlines() if ":" in l)
    rss_kb = int(fields["VmRSS"].split()[0])
    threads = int(fields["Threads"].split()[0])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return {"rss_kb": rss_kb, "fds": fds, "threads": threads, "cpu_s": round(cpu, 2)}


def metrics(port):
    req = urllib.request.Request(f"http://{HOST}:{port}/metrics")
    with urllib.request.urlopen(req, timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        k, _, v = line.rpartition(" ")
        try:
            out[k] = float(v)
        except ValueError:
            pass
    return out


GAUGES = [
    ("connections", "herald_connections"),
    ("sessions_waiting", "herald_sessions_waiting"),
    ("channels", "herald_channels"),
]


def snapshot(pid, port):
    s = proc_sample(pid)
    try:
        m = metrics(port)
        for name, key in GAUGES:
            s[name] = m.get(key, 0.0)
        s["slow_consumer_disconnects_total"] = m.get("herald_slow_consumer_disconnects_total", 0.0)
        s["connections_total"] = m.get("herald_connections_total", 0.0)
        s["close_codes"] = {k.split('"')[1]: v for k, v in m.items()
                            if k.startswith("herald_close_codes_total{") and '"' in k}
    except Exception as e:  # the server may be busy or gone
        s["metrics_error"] = str(e)
    return s


def cmd_sample(a):
    fields = ["time", "elapsed_s", "phase", "rss_kb", "fds", "threads", "cpu_s", "connections",
              "sessions_waiting", "channels", "slow_consumer_disconnects_total",
              "connections_total", "metrics_error"]
    new = not os.path.exists(a.csv)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    t0 = time.time()
    with open(a.csv, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            w.writeheader()
        while not stop:
            try:
                s = snapshot(a.pid, a.port)
            except FileNotFoundError:
                w.writerow({"time": time.strftime("%H:%M:%S"), "phase": "SERVER GONE"})
                f.flush()
                return 1
            try:
                phase = open(a.phase_file).read().strip()
            except OSError:
                phase = ""
            s.update(time=time.strftime("%H:%M:%S"), elapsed_s=round(time.time() - t0), phase=phase)
            w.writerow(s)
            f.flush()
            end = time.time() + a.interval
            while not stop and time.time() < end:
                time.sleep(0.2)
    return 0


# ---------------------------------------------------------------------------------------------
# A minimal WebSocket client on a raw non-blocking socket (no hidden read buffering).


def frame(opcode, payload=b"", fin=True):
    head = bytearray([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head.append(0x80 | n)
    elif n < 65536:
        head.append(0x80 | 126)
        head += struct.pack(">H", n)
    else:
        head.append(0x80 | 127)
        head += struct.pack(">Q", n)
    mask = os.urandom(4)
    head += mask
    return bytes(head) + bytes(b ^ mask[i & 3] for i, b in enumerate(payload))


def text(obj):
    return frame(1, json.dumps(obj, separators=(",", ":")).encode())


class Closed(Exception):
    def __init__(self, how):
        super().__init__(how)
        self.how = how


class WS:
    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def connect(cls, port, rcvbuf=None, src=None, handshake=True):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if src:
            s.bind((src, 0))
        s.setblocking(False)
        ws = cls(s)
        try:
            await asyncio.wait_for(ws.loop.sock_connect(s, (HOST, port)), 10)
            if handshake:
                await ws.handshake(port)
        except BaseException:
            s.close()
            raise
        return ws

    async def handshake(self, port):
        key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET /ws HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
               "Sec-WebSocket-Protocol: herald.v1.json\r\n\r\n")
        await self.send(req.encode())
        while b"\r\n\r\n" not in self.buf:
            await self._fill(10)
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        self.buf = bytearray(rest)
        if not head.startswith(b"HTTP/1.1 101"):
            raise Closed("refused:" + head.split(b"\r\n")[0].decode(errors="replace"))

    async def send(self, data):
        await asyncio.wait_for(self.loop.sock_sendall(self.sock, data), 15)

    async def _fill(self, timeout):
        try:
            chunk = await asyncio.wait_for(self.loop.sock_recv(self.sock, 65536), timeout)
        except asyncio.TimeoutError:
            raise Closed("timeout")
        except (ConnectionResetError, BrokenPipeError):
            raise Closed("reset")
        if not chunk:
            raise Closed("eof")
        self.buf += chunk

    async def recv(self, timeout=10):
        """Next frame as (opcode, payload). Raises Closed on EOF, reset or timeout."""
        while True:
            b = self.buf
            if len(b) >= 2:
                n = b[1] & 0x7F
                at = 2
                if n == 126 and len(b) >= 4:
                    n, at = struct.unpack(">H", b[2:4])[0], 4
                elif n == 127 and len(b) >= 10:
                    n, at = struct.unpack(">Q", b[2:10])[0], 10
                elif n >= 126:
                    n = None
                if n is not None and len(b) >= at + n:
                    op, payload = b[0] & 0x0F, bytes(b[at:at + n])
                    del b[:at + n]
                    return op, payload
            await self._fill(timeout)

    async def message(self, timeout=10):
        """Next data message as a dict; answers pings; raises Closed('close:CODE') on a close."""
        while True:
            op, p = await self.recv(timeout)
            if op == 9:
                await self.send(frame(0xA, p))
            elif op == 8:
                code = struct.unpack(">H", p[:2])[0] if len(p) >= 2 else "none"
                raise Closed(f"close:{code}")
            elif op in (1, 2):
                return json.loads(p)

    async def until_closed(self, timeout=15):
        """Read everything until the server ends the connection: 'close:CODE', 'eof', 'reset',
        or 'timeout'."""
        try:
            while True:
                await self.message(timeout)
        except Closed as c:
            return c.how
        except json.JSONDecodeError:
            return "bad-json"

    async def close_clean(self):
        try:
            await self.send(frame(8, struct.pack(">H", 1000)))
            await self.until_closed(5)
        except Exception:
            pass
        self.sock.close()

    def close_abrupt(self, reset=False):
        if reset:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


async def connected(port, **kw):
    ws = await WS.connect(port, **kw)
    m = await ws.message()
    if m.get("type") != "connected":
        raise Closed("unexpected first message")
    return ws, m["payload"]


async def request(ws, obj, timeout=10):
    """Send a command with an id and wait for its reply or error (other messages skipped)."""
    await ws.send(text(obj))
    while True:
        m = await ws.message(timeout)
        if m.get("id") == obj["id"] and m.get("type") in ("reply", "error"):
            return m


# ---------------------------------------------------------------------------------------------
# Abuse patterns. Each returns an outcome string; the tally counts them per pattern.

EXPECTED = {
    "ping_flood": {"close:1008"},
    "pong_flood": {"close:1008"},
    "fragment_flood": {"close:1008"},
    "unknown_command_flood": {"close:4004"},
    "half_open_handshake": {"closed_by_server"},
    "slow_reader": {"closed_by_server"},
    "abrupt_close": {"dropped", "dropped+resumed"},
    "presence_client": {"ok"},
}


class Soak:
    def __init__(self, port, seconds, fan_channels, presence_channels):
        self.port = port
        self.deadline = time.monotonic() + seconds
        self.fan_channels = fan_channels
        self.presence_channels = presence_channels
        self.tally = defaultdict(Counter)
        self.timings = defaultdict(list)
        self.errors = defaultdict(Counter)

    def live(self):
        return time.monotonic() < self.deadline

    def src(self):
        return f"127.0.{random.randint(1, 3)}.{random.randint(1, 250)}"

    async def loop(self, name, every, fn, concurrency=1):
        async def worker():
            while self.live():
                t = time.monotonic()
                try:
                    out = await fn()
                except Closed as c:
                    out = f"unexpected:{c.how}"
                except (OSError, asyncio.TimeoutError) as e:
                    out = f"error:{type(e).__name__}"
                except Exception as e:  # keep soaking; report it
                    out = f"error:{type(e).__name__}"
                    self.errors[name][repr(e)[:200]] += 1
                self.tally[name][out] += 1
                rest = every - (time.monotonic() - t)
                if rest > 0 and self.live():
                    await asyncio.sleep(min(rest, max(0.0, self.deadline - time.monotonic())))
        await asyncio.gather(*(worker() for _ in range(concurrency)))

    async def flood(self, payload_frames):
        ws, _ = await connected(self.port, src=self.src())
        try:
            await ws.send(payload_frames)
        except (Closed, OSError, asyncio.TimeoutError):
            pass  # the server may close before everything is sent
        how = await ws.until_closed(15)
        ws.sock.close()
        return how

    async def ping_flood(self):
        return await self.flood(frame(9, b"x") * 3500)

    async def pong_flood(self):
        return await self.flood(frame(0xA) * 3500)

    async def fragment_flood(self):
        start = frame(1, b"{", fin=False)
        return await self.flood(start + frame(0, b" ", fin=False) * 200)

    async def unknown_command_flood(self):
        cmds = b"".join(text({"type": "no_such_command", "id": i}) for i in range(500))
        return await self.flood(cmds)

    async def half_open_handshake(self):
        ws = await WS.connect(self.port, src=self.src(), handshake=False)
        t = time.monotonic()
        await ws.send(f"GET /ws HTTP/1.1\r\nHost: {HOST}:{self.port}\r\nUpgrade: websocket\r\n".encode())
        try:
            while True:
                await ws._fill(40)
        except Closed as c:
            how = c.how
        ws.sock.close()
        self.timings["half_open_close_s"].append(round(time.monotonic() - t, 1))
        return "closed_by_server" if how in ("eof", "reset") else f"unexpected:{how}"

    async def slow_reader(self):
        ws, _ = await connected(self.port, rcvbuf=4096, src=self.src())
        for i, ch in enumerate(self.fan_channels):
            r = await request(ws, {"type": "subscribe", "id": i + 1, "payload": {"channel": ch}})
            if r["type"] != "reply":
                ws.sock.close()
                return f"unexpected:subscribe-{r['payload'].get('code')}"
        # Never read again. The server cannot tell us it closed the connection: its FIN waits
        # behind the data our zero window blocks. So hold, then read everything: a connection
        # the server closed ends (FIN after the data), one it kept stays silent.
        hold = time.monotonic() + 45
        while time.monotonic() < hold and self.live():
            await asyncio.sleep(1)
        if not self.live():
            ws.close_abrupt()
            return "soak_ended"
        how = await ws.until_closed(5)
        ws.sock.close()
        self.tally["slow_reader_end"][how] += 1
        return "closed_by_server" if how != "timeout" else "still_open"

    async def abrupt_close(self):
        ws, p = await connected(self.port, src=self.src())
        ch = random.choice(self.fan_channels)
        r = await request(ws, {"type": "subscribe", "id": 1, "payload": {"channel": ch}})
        if r["type"] != "reply":
            ws.sock.close()
            return f"unexpected:subscribe-{r['payload'].get('code')}"
        end = time.monotonic() + random.uniform(0.2, 2.0)
        last = r["payload"].get("offset", 0)
        epoch = r["payload"].get("epoch")
        while time.monotonic() < end:
            try:
                m = await ws.message(max(0.05, end - time.monotonic()))
                if m.get("type") == "message":
                    last = m["payload"]["offset"]
            except Closed as c:
                if c.how != "timeout":
                    raise
        ws.close_abrupt(reset=random.random() < 0.5)
        if random.random() < 0.5:
            return "dropped"
        await asyncio.sleep(random.uniform(0.1, 2.0))
        ws2, _ = await connected(self.port, src=self.src())
        pos = {ch: {"offset": last, "epoch": epoch}} if epoch else {}
        r = await request(ws2, {"type": "resume", "id": 1,
                                "payload": {"token": p["resume_token"], "positions": pos}})
        await ws2.close_clean()
        if r["type"] == "reply":
            return "dropped+resumed"
        return f"resume-error:{r['payload'].get('code')}"

    async def presence_client(self):
        ws, _ = await connected(self.port, src=self.src())
        ch = random.choice(self.presence_channels)
        r = await request(ws, {"type": "subscribe", "id": 1, "payload": {"channel": ch}})
        if r["type"] != "reply":
            ws.sock.close()
            return f"unexpected:subscribe-{r['payload'].get('code')}"
        end = time.monotonic() + random.uniform(3, 20)
        i = 1
        while time.monotonic() < end and self.live():
            i += 1
            r = await request(ws, {"type": "presence", "id": i, "payload": {"channel": ch}})
            if r["type"] != "reply":
                ws.sock.close()
                return f"unexpected:presence-{r['payload'].get('code')}"
            await asyncio.sleep(1)
        if random.random() < 0.2:
            ws.close_abrupt()
        else:
            await ws.close_clean()
        return "ok"

    async def run(self):
        await asyncio.gather(
            self.loop("ping_flood", 2, self.ping_flood),
            self.loop("pong_flood", 2, self.pong_flood),
            self.loop("fragment_flood", 3, self.fragment_flood),
            self.loop("unknown_command_flood", 2, self.unknown_command_flood),
            self.loop("half_open_handshake", 1, self.half_open_handshake, concurrency=20),
            self.loop("slow_reader", 1, self.slow_reader, concurrency=20),
            self.loop("abrupt_close", 0.25, self.abrupt_close, concurrency=2),
            self.loop("presence_client", 0.5, self.presence_client, concurrency=30),
        )

    def report(self):
        out = {"patterns": {}, "unexpected": {}}
        for name, c in self.tally.items():
            out["patterns"][name] = dict(c)
            exp = EXPECTED.get(name)
            if exp is not None:
                bad = {k: v for k, v in c.items() if k not in exp and k != "soak_ended"}
                if bad:
                    out["unexpected"][name] = bad
        for k, v in self.timings.items():
            v = sorted(v)
            if v:
                out[k] = {"n": len(v), "min": v[0], "median": v[len(v) // 2], "max": v[-1]}
        if self.errors:
            out["errors"] = {k: dict(v) for k, v in self.errors.items()}
        return out


def cmd_abuse(a):
    s = Soak(a.port, a.seconds, a.fan_channels.split(","), a.presence_channels.split(","))
    asyncio.run(s.run())
    rep = s.report()
    with open(a.out, "w") as f:
        json.dump(rep, f, indent=1, sort_keys=True)
    print(json.dumps(rep, sort_keys=True))
    return 0


async def presence_count(port, channels):
    ws, _ = await connected(port)
    total = 0
    for i, ch in enumerate(channels):
        r = await request(ws, {"type": "presence", "id": i + 1, "payload": {"channel": ch}})
        total += len(r["payload"].get("clients", [])) if r["type"] == "reply" else 0
    await ws.close_clean()
    return total


# ---------------------------------------------------------------------------------------------
# Summary


def read_jsonl(path):
    if not os.path.exists(path):
        return []
    out = []
    for line in open(path):
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                out.append({"failed": True, "output": line})
    return out


def slope_per_min(points):
    """Least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 3:
        return 0.0
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points) or 1
    return 60 * sum((x - mx) * (y - my) for x, y in points) / den


def cmd_summarize(a):
    d = a.dir
    rows = list(csv.DictReader(open(os.path.join(d, "samples.csv"))))

    def num(r, k):
        try:
            return float(r[k])
        except (KeyError, TypeError, ValueError):
            return None

    fresh = json.load(open(os.path.join(d, "fresh.json")))
    base = json.load(open(os.path.join(d, "idle-warmup.json")))
    final = json.load(open(os.path.join(d, "idle-soak.json")))
    soak_rows = [r for r in rows if r.get("phase") == "soak"]
    # The first half minute of the soak phase ramps up; the slope is over the rest.
    pts = [(num(r, "elapsed_s"), num(r, "rss_kb")) for r in soak_rows]
    pts = [(x, y) for x, y in pts if x is not None and y is not None]
    steady = [(x, y) for x, y in pts if pts and x >= pts[0][0] + 30]
    half = len(steady) // 2
    first_half_rss = max((y for _, y in steady[:half]), default=None)
    second_half_rss = max((y for _, y in steady[half:]), default=None)

    def peak(k):
        v = [num(r, k) for r in soak_rows]
        v = [x for x in v if x is not None]
        return max(v) if v else None

    churn = read_jsonl(os.path.join(d, "churn-soak.jsonl"))
    fan = read_jsonl(os.path.join(d, "fanout-soak.jsonl"))
    abuse = {}
    if os.path.exists(os.path.join(d, "abuse-soak.json")):
        abuse = json.load(open(os.path.join(d, "abuse-soak.json")))
    pres = open(os.path.join(d, "presence-after.txt")).read().strip()

    def tot(rs, k):
        return sum(r.get(k, 0) or 0 for r in rs if not r.get("failed"))

    load = {
        "churn_segments": len(churn),
        "churn_failed_segments": sum(1 for r in churn if r.get("failed")),
        "churn_connections_cut": tot(churn, "connections_cut"),
        "churn_deliveries": tot(churn, "deliveries"),
        "churn_lost": tot(churn, "lost"),
        "churn_duplicates": tot(churn, "duplicates"),
        "churn_gap_events": tot(churn, "gap_events"),
        "fanout_segments": len(fan),
        "fanout_failed_segments": sum(1 for r in fan if r.get("failed")),
        "fanout_deliveries": tot(fan, "deliveries"),
        "fanout_lost": tot(fan, "lost"),
        "fanout_duplicates": tot(fan, "duplicates"),
        "fanout_p99_ms_max": max((r["latency"]["p99_ms"] for r in fan if "latency" in r), default=None),
    }
    rss_limit = base["rss_kb"] * (1 + a.rss_tolerance_pct / 100)
    checks = [
        ("server alive (no crash)", a.alive == 1, f"alive={a.alive}"),
        ("connections back to 0", final.get("connections") == 0, f"{final.get('connections')}"),
        ("sessions waiting back to 0", final.get("sessions_waiting") == 0, f"{final.get('sessions_waiting')}"),
        (f"fds back to baseline ±{a.fd_tolerance}", abs(final["fds"] - base["fds"]) <= a.fd_tolerance,
         f"{final['fds']} (baseline {base['fds']}, fresh {fresh['fds']})"),
        ("presence empty", pres == "0", pres),
        ("churn: nothing lost or duplicated, no gap", load["churn_failed_segments"] == 0 and load["churn_lost"] == 0
         and load["churn_duplicates"] == 0 and load["churn_gap_events"] == 0,
         f"{load['churn_lost']} lost, {load['churn_duplicates']} dup, {load['churn_gap_events']} gaps, "
         f"{load['churn_failed_segments']} failed segments"),
        ("fanout: nothing lost or duplicated", load["fanout_failed_segments"] == 0 and load["fanout_lost"] == 0
         and load["fanout_duplicates"] == 0,
         f"{load['fanout_lost']} lost, {load['fanout_duplicates']} dup, {load['fanout_failed_segments']} failed segments"),
    ]
    rss_ok = final["rss_kb"] <= rss_limit
    rss_check = (f"RSS within {a.rss_tolerance_pct:g} % of the post-warm-up baseline", rss_ok,
                 f"{final['rss_kb'] / 1024:.1f} MiB (baseline {base['rss_kb'] / 1024:.1f}, fresh {fresh['rss_kb'] / 1024:.1f})")
    fh, sh = first_half_rss or 0, second_half_rss or 0
    growth_ok = sh <= fh * 1.05
    growth_check = ("RSS steady: peak of the soak's second half ≤ first half's + 5 %", growth_ok,
                    f"{fh / 1024:.1f} → {sh / 1024:.1f} MiB")
    if a.strict_rss:
        checks.append(rss_check)
        checks.append(growth_check)
    summary = {
        "soak_seconds": a.seconds,
        "fresh": fresh, "baseline_after_warmup": base, "final": final,
        "during_soak": {
            "samples": len(soak_rows),
            "connections_max": peak("connections"),
            "sessions_waiting_max": peak("sessions_waiting"),
            "fds_max": peak("fds"),
            "threads_max": peak("threads"),
            "rss_kb_max": peak("rss_kb"),
            "rss_kb_slope_per_min": round(slope_per_min(steady), 1),
            "rss_kb_max_first_half": first_half_rss,
            "rss_kb_max_second_half": second_half_rss,
            "cpu_s": (num(soak_rows[-1], "cpu_s") - num(soak_rows[0], "cpu_s")) if len(soak_rows) > 1 else None,
        },
        "load": load,
        "abuse": abuse,
        "checks": [{"check": c, "ok": ok, "value": v} for c, ok, v in checks],
        "rss_check": {"check": rss_check[0], "ok": rss_ok, "value": rss_check[2], "fatal": bool(a.strict_rss)},
        "rss_growth_check": {"check": growth_check[0], "ok": growth_ok, "value": growth_check[2],
                             "fatal": bool(a.strict_rss)},
    }
    md = []
    md.append(f"Soak {a.seconds} s, run directory {d}\n")
    md.append("| | fresh | after warm-up (baseline) | peak during soak | after soak + drain |")
    md.append("| --- | ---: | ---: | ---: | ---: |")
    ds = summary["during_soak"]
    md.append(f"| RSS (MiB) | {fresh['rss_kb'] / 1024:.1f} | {base['rss_kb'] / 1024:.1f} | {(ds['rss_kb_max'] or 0) / 1024:.1f} | {final['rss_kb'] / 1024:.1f} |")
    md.append(f"| open fds | {fresh['fds']} | {base['fds']} | {ds['fds_max']:.0f} | {final['fds']} |")
    md.append(f"| threads | {fresh['threads']} | {base['threads']} | {ds['threads_max']:.0f} | {final['threads']} |")
    md.append(f"| herald_connections | {fresh.get('connections')} | {base.get('connections')} | {ds['connections_max']:.0f} | {final.get('connections')} |")
    md.append(f"| herald_sessions_waiting | {fresh.get('sessions_waiting')} | {base.get('sessions_waiting')} | {ds['sessions_waiting_max']:.0f} | {final.get('sessions_waiting')} |")
    md.append(f"| herald_channels | {fresh.get('channels')} | {base.get('channels')} | {peak('channels') or 0:.0f} | {final.get('channels')} |")
    md.append(f"| connections accepted (total) | {fresh.get('connections_total')} | {base.get('connections_total')} | | {final.get('connections_total')} |")
    md.append("")
    cc0, cc1 = base.get("close_codes", {}), final.get("close_codes", {})
    codes = {k: cc1.get(k, 0) - cc0.get(k, 0) for k in sorted(set(cc0) | set(cc1))}
    summary["server_close_codes_during_soak"] = codes
    md.append("Server-initiated closes during the soak (herald_close_codes_total, after − before): "
              + (", ".join(f"{k}: {v:.0f}" for k, v in codes.items() if v) or "none") + "; "
              f"herald_slow_consumer_disconnects_total +{final.get('slow_consumer_disconnects_total', 0) - base.get('slow_consumer_disconnects_total', 0):.0f}.\n")
    if os.path.exists(os.path.join(d, "idle-swept.json")):
        sw = json.load(open(os.path.join(d, "idle-swept.json")))
        summary["after_sweep"] = sw
        md.append(f"After waiting for the memory engine's sweep of idle streams: RSS {sw['rss_kb'] / 1024:.1f} MiB, "
                  f"fds {sw['fds']}, threads {sw['threads']}, channels {sw.get('channels')}.\n")
    md.append(f"RSS slope over the soak (after its first 30 s): {ds['rss_kb_slope_per_min']:+.1f} KiB/min; "
              f"peak RSS first half {(ds['rss_kb_max_first_half'] or 0) / 1024:.1f} MiB, second half "
              f"{(ds['rss_kb_max_second_half'] or 0) / 1024:.1f} MiB; server CPU during the soak {ds['cpu_s']} s.\n")
    md.append(f"Load: churn {load['churn_segments']} segments, {load['churn_connections_cut']} connections cut, "
              f"{load['churn_deliveries']:,} deliveries, {load['churn_lost']} lost, {load['churn_duplicates']} dup, "
              f"{load['churn_gap_events']} gaps; fanout {load['fanout_segments']} segments, {load['fanout_deliveries']:,} "
              f"deliveries, {load['fanout_lost']} lost, {load['fanout_duplicates']} dup, worst segment p99 {load['fanout_p99_ms_max']} ms.\n")
    md.append("| abuse pattern | outcomes |")
    md.append("| --- | --- |")
    for name, c in sorted(abuse.get("patterns", {}).items()):
        md.append(f"| {name} | {', '.join(f'{k}: {v}' for k, v in sorted(c.items()))} |")
    for k in ("half_open_close_s",):
        if k in abuse:
            t = abuse[k]
            md.append(f"| {k} | n {t['n']}, min {t['min']}, median {t['median']}, max {t['max']} |")
    if abuse.get("unexpected"):
        md.append(f"\nUnexpected abuse outcomes: {json.dumps(abuse['unexpected'])}")
    md.append("\n| check | result | value |")
    md.append("| --- | --- | --- |")
    for c in summary["checks"]:
        md.append(f"| {c['check']} | {'ok' if c['ok'] else 'FAILED'} | {c['value']} |")
    for rc in (summary["rss_check"], summary["rss_growth_check"]):
        md.append(f"| {rc['check']}{'' if rc['fatal'] else ' (reported)'} | {'ok' if rc['ok'] else 'over'} | {rc['value']} |")
    text = "\n".join(md) + "\n"
    json.dump(summary, open(os.path.join(d, "summary.json"), "w"), indent=1)
    open(os.path.join(d, "summary.md"), "w").write(text)
    print(text)
    return 0 if all(c["ok"] for c in summary["checks"]) else 1


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    ab = sub.add_parser("abuse")
    ab.add_argument("--port", type=int, required=True)
    ab.add_argument("--seconds", type=float, required=True)
    ab.add_argument("--out", required=True)
    ab.add_argument("--fan-channels", default=",".join(f"soakfan:{k}" for k in range(10)))
    ab.add_argument("--presence-channels", default=",".join(f"pres:room{k}" for k in range(5)))
    sa = sub.add_parser("sample")
    sa.add_argument("--pid", type=int, required=True)
    sa.add_argument("--port", type=int, required=True)
    sa.add_argument("--csv", required=True)
    sa.add_argument("--phase-file", required=True)
    sa.add_argument("--interval", type=float, default=5)
    sn = sub.add_parser("snapshot")
    sn.add_argument("--pid", type=int, required=True)
    sn.add_argument("--port", type=int, required=True)
    pc = sub.add_parser("presence-count")
    pc.add_argument("--port", type=int, required=True)
    pc.add_argument("--channels", default=",".join(f"pres:room{k}" for k in range(5)))
    sm = sub.add_parser("summarize")
    sm.add_argument("--dir", required=True)
    sm.add_argument("--seconds", type=int, required=True)
    sm.add_argument("--alive", type=int, required=True)
    sm.add_argument("--fd-tolerance", type=int, default=4)
    sm.add_argument("--rss-tolerance-pct", type=float, default=25)
    sm.add_argument("--strict-rss", type=int, default=0)
    a = p.parse_args()
    if a.cmd == "abuse":
        return cmd_abuse(a)
    if a.cmd == "sample":
        return cmd_sample(a)
    if a.cmd == "snapshot":
        print(json.dumps(snapshot(a.pid, a.port)))
        return 0
    if a.cmd == "summarize":
        return cmd_summarize(a)
    if a.cmd == "presence-count":
        print(asyncio.run(presence_count(a.port, a.channels.split(","))))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
