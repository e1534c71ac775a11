#!/usr/bin/env python3
"""The house's walls, checked: no import circle between the top-level rooms of src/, nothing
under src/config/ imports a role, and no file under src/engine/<child>/ reaches up to
`engine::Engine`/`engine::Shared` (children get narrower handles).

A "room" is a top-level module (src/<room>.rs or src/<room>/). An edge A -> B is any
`crate::B` path written in A (use lines and inline paths alike; doc comments and `//` comments
are ignored). Prints the graph and exits 1 on a circle or a forbidden edge."""
import os, re, sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
ROLES = {"edge", "dns", "engine", "webmail", "health", "ops", "cli", "node"}
# Rooms config may name: leaves that configure nothing.
CONFIG_MAY_USE = {"geo", "hash"}


def rooms():
    out = {}
    for name in os.listdir(ROOT):
        path = os.path.join(ROOT, name)
        if name.endswith(".rs") and name not in ("lib.rs", "main.rs"):
            out[name[:-3]] = [path]
        elif os.path.isdir(path):
            files = []
            for d, _, fs in os.walk(path):
                files += [os.path.join(d, f) for f in fs if f.endswith(".rs")]
            out[name] = files
    return out


def code(path):
    text = open(path, encoding="utf-8").read()
    return "\n".join(re.sub(r"//.*", "", l) for l in text.splitlines())


def main():
    rs = rooms()
    graph = {r: set() for r in rs}
    bad = []
    for room, files in rs.items():
        for f in files:
            src = code(f)
            for m in re.finditer(r"\bcrate::([a-z_]+)", src):
                dep = m.group(1)
                if dep != room and dep in rs:
                    graph[room].add(dep)
            # `use crate::{a, b}` groups
            for m in re.finditer(r"\bcrate::\{([^}]*)\}", src):
                for dep in re.findall(r"(?:^|,)\s*([a-z_]+)", m.group(1)):
                    if dep != room and dep in rs:
                        graph[room].add(dep)
            if room == "engine":
                rel = os.path.relpath(f, os.path.join(ROOT, "engine"))
                if os.sep in rel and re.search(r"\bengine::(Engine|Shared)\b|super::super::(Engine|Shared)\b", src):
                    bad.append(f"{f}: an engine child reaches up to the engine's shared state")
    for dep in graph.get("config", ()):
        if dep not in CONFIG_MAY_USE:
            bad.append(f"config imports {dep}: the schema is the floor")
    # circles: strongly connected components of size > 1
    index, low, stack, on, sccs, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    for comp in sccs:
        bad.append("import circle between rooms: " + " <-> ".join(comp))
    for r in sorted(graph):
        print(f"{r:10} -> {' '.join(sorted(graph[r])) or '-'}")
    for b in bad:
        print("FAIL:", b)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
