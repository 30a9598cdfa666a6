#!/usr/bin/env python3
"""Summarize `heaptrack_print --print-peaks` output (bench/idle-heap.sh): each allocation site's
peak bytes per connection, named by the innermost frames that are Herald's or a few key crates'.
   python3 bench/heap_sites.py target/idle-heap/peaks.txt 2000"""
import re
import sys

path, n = sys.argv[1], int(sys.argv[2])
UNIT = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}
site = None
rows = []
for line in open(path, errors="replace"):
    m = re.match(r"^([0-9.]+)([KMG]?)B? (?:consumed|leaked) over (\d+) calls from:", line)
    if m:
        if site:
            rows.append(site)
        site = [float(m.group(1)) * UNIT[m.group(2)], int(m.group(3)), []]
        continue
    if site is not None and re.match(r"^\S", line):
        rows.append(site)
        site = None
        continue
    if site is not None:
        f = line.strip()
        if f.startswith("at ") or f.startswith("in ") or not f:
            continue
        name = re.sub(r"::h[0-9a-f]{16}$", "", f)
        name = name.replace("$LT$", "<").replace("$GT$", ">").replace("$C$", ",").replace("$u20$", " ")
        name = re.sub(r"\$u7b\$\$u7b\$closure\$u7d\$\$u7d\$", "{closure}", name)
        if re.search(r"herald|tokio::|hyper|fastwebsockets|rustls", name) and len(site[2]) < 6:
            site[2].append(name[:110])
if site:
    rows.append(site)
rows.sort(key=lambda r: -r[0])
total = 0
for b, calls, frames in rows:
    total += b
    if b / n < 8:
        continue
    print("%7.0f B/conn  %7d calls  %s" % (b / n, calls, frames[0] if frames else "?"))
    for f in frames[1:4]:
        print("%34s%s" % ("", f))
print("sites total: %.0f B/conn" % (total / n))
