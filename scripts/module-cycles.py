#!/usr/bin/env python3
"""No module import cycles in any crate of the workspace.

A module is a top-level file or directory of a crate's `src/`; an edge A -> B is a `crate::B`
path (or `crate::{.., B, ..}`) anywhere in A's files, test modules aside. Prints each crate's
cycles (strongly connected components) and exits non-zero on any cycle not in ALLOWED.
"""
import os
import re
import sys

# None: every crate is acyclic.
ALLOWED: set = set()
def modules(src):
    mods={}
    for root,_,files in os.walk(src):
        for f in files:
            if not f.endswith('.rs'): continue
            p=os.path.join(root,f); rel=os.path.relpath(p,src)[:-3]
            parts=rel.split(os.sep)
            if parts[-1] in ('mod','lib','main'): parts=parts[:-1]
            if parts and parts[-1]=='tests': continue
            top=parts[0] if parts else 'crate'
            mods.setdefault(top,[]).append(p)
    return mods
def deps(mods):
    g={m:set() for m in mods}
    for m,files in mods.items():
        for p in files:
            txt=open(p).read()
            txt=re.sub(r'#\[cfg\(test\)\]\s*mod tests\s*\{.*','',txt,flags=re.S)
            for t in re.findall(r'crate::([a-z_0-9]+)',txt):
                if t in g and t!=m: g[m].add(t)
            # use crate::{a, b}
            for grp in re.findall(r'crate::\{([^}]*)\}',txt):
                for t in re.findall(r'([a-z_0-9]+)(?:::|\s*[,}]|$)',grp):
                    if t in g and t!=m: g[m].add(t)
    return g
def cycles(g):
    out=[]
    idx={};low={};st=[];on=set();i=[0]
    sys.setrecursionlimit(10000)
    def sc(v):
        idx[v]=low[v]=i[0];i[0]+=1;st.append(v);on.add(v)
        for w in g[v]:
            if w not in idx: sc(w);low[v]=min(low[v],low[w])
            elif w in on: low[v]=min(low[v],idx[w])
        if low[v]==idx[v]:
            comp=[]
            while True:
                w=st.pop();on.discard(w);comp.append(w)
                if w==v:break
            if len(comp)>1: out.append(sorted(comp))
    for v in g:
        if v not in idx: sc(v)
    return out
bad = []
for c in sorted(os.listdir('crates')):
    src = f'crates/{c}/src'
    if not os.path.isdir(src):
        continue
    g = deps(modules(src))
    for comp in cycles(g):
        allowed = (c, tuple(comp)) in ALLOWED
        print(f"{c}: cycle {' <-> '.join(comp)}{' (known)' if allowed else ''}")
        for a in comp:
            print('   ', a, '->', sorted(x for x in g[a] if x in comp))
        if not allowed:
            bad.append((c, comp))
if bad:
    print(f"{len(bad)} module cycle(s) not allowed")
    sys.exit(1)
print("no module cycles")
