#!/usr/bin/env python3
"""Checks two structural invariants of ARCHITECTURE.md that the compiler does not:
- no import circle between the modules of node/, vrrp/, raft-store/ and policy/ (a module
  uses a module that uses it back, directly or through others; test modules excluded);
- fulcrum-policy's dependency tree holds no tokio, hyper, mio or socket crate.
Exits 1, naming each circle or crate, when one does not hold."""
import os
import re
import subprocess
import sys

CRATES = ["node/src", "vrrp/src", "raft-store/src", "policy/src"]
IO_CRATES = {"tokio", "hyper", "hyper-util", "mio", "socket2", "nix", "pnet_datalink"}


def modules(src):
    """Module path (a tuple) -> file, for a crate's library (binaries are leaves)."""
    found = {}
    for root, _, files in os.walk(src):
        for name in files:
            path = os.path.join(root, name)
            parts = os.path.relpath(path, src)[:-3].split(os.sep)
            if not name.endswith(".rs") or "bin" in parts:
                continue
            if parts[-1] in ("mod", "lib", "main"):
                parts = parts[:-1]
            found[tuple(parts)] = path
    return found


def references(text, module):
    """The module paths a file names through `crate::`, `super::` or a relative `use`."""
    text = text.split("#[cfg(test)]")[0]
    named = set()
    for match in re.finditer(r"\b((?:crate|super)(?:::\w+)+)", text):
        parts, base = match.group(1).split("::"), list(module)
        while parts and parts[0] == "super":
            base, parts = base[:-1], parts[1:]
        if parts and parts[0] == "crate":
            base, parts = [], parts[1:]
        named.add(tuple(base + parts))
    for match in re.finditer(r"use\s+(crate|super)::\{([^}]*)\}", text):
        base = [] if match.group(1) == "crate" else list(module[:-1])
        for item in match.group(2).split(","):
            item = item.strip().split("::")[0]
            if item:
                named.add(tuple(base + [item]))
    for match in re.finditer(r"^\s*use\s+([a-z_]\w*)::", text, re.M):
        named.add(tuple(list(module) + [match.group(1)]))
    return named


def circles(src):
    mods = modules(src)
    edges = {}
    for module, path in mods.items():
        with open(path, encoding="utf-8") as file:
            text = file.read()
        targets = set()
        for named in references(text, module):
            for length in range(len(named), -1, -1):
                if named[:length] in mods:
                    if named[:length] != module:
                        targets.add(named[:length])
                    break
        edges[module] = targets
    # Tarjan's strongly connected components: each of more than one module is a circle.
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted("::".join(m) or "lib" for m in component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def main():
    os.chdir(os.path.join(os.path.dirname(__file__), ".."))
    failed = False
    for src in CRATES:
        for circle in circles(src):
            print(f"{src}: import circle: {', '.join(circle)}")
            failed = True
    tree = subprocess.run(
        ["cargo", "tree", "-p", "fulcrum-policy", "-e", "normal", "--prefix", "none", "--locked"],
        capture_output=True, text=True, check=True).stdout
    crates = {line.split()[0] for line in tree.splitlines() if line.strip()}
    for crate in sorted(crates & IO_CRATES):
        print(f"fulcrum-policy depends on {crate}: the policy crate does no IO")
        failed = True
    if not failed:
        print(f"structure: no import circle in {', '.join(CRATES)}; fulcrum-policy does no IO")
    return 1 if failed else 0


sys.exit(main())
