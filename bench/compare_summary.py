"""The markdown table of a bench/compare.sh results file: each metric per run, the noise between
two runs of the same binary, and the change between the binaries."""
import sys

from resultfile import METRICS, fmt, get, load

rows, by = load(sys.argv[1])


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
