#!/usr/bin/env python3
"""No import circles between a crate's modules (the layer rule: core decides, the plugin is glue).

Reads every `crate::` path in core/src and plugin/src (use lines and inline paths), maps each file
to its top-level module (`enforce/chain.rs` -> `enforce`; submodules of one module are one node),
and fails if the module graph of a crate has a cycle. `super::` inside a module stays inside it.
Usage: scripts/check-import-cycles.py   (exit 1 and the cycle printed if there is one)
"""
import pathlib, re, sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CRATES = {"core": ROOT / "core" / "src", "plugin": ROOT / "plugin" / "src"}
PATH = re.compile(r"\bcrate::(\w+)")
GROUP = re.compile(r"\bcrate::\{([^}]*)\}")


def module_of(src: pathlib.Path, file: pathlib.Path) -> str:
    rel = file.relative_to(src).with_suffix("")
    return rel.parts[0]


def graph(src: pathlib.Path) -> dict:
    edges: dict = {}
    for file in sorted(src.rglob("*.rs")):
        m = module_of(src, file)
        if m in ("lib", "main"):
            continue
        # A `#[cfg(test)] mod tests;` in its own file (tests.rs) is test code too.
        if file.name == "tests.rs":
            continue
        text = file.read_text()
        # Tests may reach anywhere; only the shipped code's structure counts.
        text = re.split(r"#\[cfg\(test\)\]", text)[0]
        text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))
        targets = set(PATH.findall(text))
        for group in GROUP.findall(text):
            targets.update(re.findall(r"(?:^|,)\s*(\w+)", group))
        edges.setdefault(m, set()).update(t for t in targets if t != m)
    return edges


def circles(edges: dict) -> list:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict = {}
    low: dict = {}
    on: set = set()
    stack: list = []
    out: list = []
    counter = [0]

    def visit(n):
        index[n] = low[n] = counter[0]
        counter[0] += 1
        stack.append(n)
        on.add(n)
        for t in sorted(edges.get(n, ())):
            if t not in index:
                visit(t)
                low[n] = min(low[n], low[t])
            elif t in on:
                low[n] = min(low[n], index[t])
        if low[n] == index[n]:
            scc = []
            while True:
                t = stack.pop()
                on.discard(t)
                scc.append(t)
                if t == n:
                    break
            if len(scc) > 1:
                out.append(sorted(scc))

    for n in sorted(edges):
        if n not in index:
            visit(n)
    return out


def main() -> int:
    bad = 0
    for name, src in CRATES.items():
        edges = graph(src)
        found = circles(edges)
        for scc in found:
            print(f"{name}: import circle among: {', '.join(scc)}")
            bad = 1
        if not found:
            print(f"{name}: no import circle among {len(edges)} modules")
    return bad


if __name__ == "__main__":
    sys.exit(main())
