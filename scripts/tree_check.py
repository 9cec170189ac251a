#!/usr/bin/env python3
"""Checks the shape the code is kept to: files under ~600 lines, functions
under ~100, and no import cycle between a crate's top-level modules.

    python3 scripts/tree_check.py            # src/ and loadtest/src/
    python3 scripts/tree_check.py --list     # also print the module graph

Exits 1 when something is over a limit or a cycle exists. A heuristic, not a
parser: functions are found by their `fn` line and matched braces (string and
char literals and line comments are blanked first); module edges are the
`crate::NAME` paths outside test code (`#[cfg(test)] mod tests { .. }`,
`tests.rs`, `tests/`).
"""

import collections
import pathlib
import re
import sys

MAX_FILE_LINES = 600
MAX_FN_LINES = 100
CRATES = ["src", "loadtest/src"]

FN = re.compile(
    r'^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?(extern\s+"C"\s+)?fn\s+(\w+)'
)


def blank_literals(line):
    line = re.sub(r'"(\\.|[^"\\])*"', '""', line)
    line = re.sub(r"'(\\.|[^'\\])'", "''", line)
    return line.split("//")[0]


def long_functions(path, lines):
    found = []
    for start, line in enumerate(lines):
        match = FN.match(line)
        if not match:
            continue
        depth, opened = 0, False
        for end in range(start, len(lines)):
            text = blank_literals(lines[end])
            if not opened and ";" in text and "{" not in text:
                break  # a declaration without a body
            for char in text:
                if char == "{":
                    depth, opened = depth + 1, True
                elif char == "}":
                    depth -= 1
            if opened and depth == 0:
                length = end - start + 1
                if length > MAX_FN_LINES:
                    found.append((length, f"{path}:{start + 1}", match.group(7)))
                break
    return found


def module_graph(root):
    tops = {p.stem for p in root.glob("*.rs")} | {p.name for p in root.iterdir() if p.is_dir()}
    tops -= {"lib", "main", "bin"}
    edges = collections.defaultdict(set)
    for path in root.rglob("*.rs"):
        parts = path.relative_to(root).parts
        top = parts[0].removesuffix(".rs")
        if top not in tops or path.name == "tests.rs" or "tests" in parts[:-1]:
            continue
        text = "\n".join(blank_literals(line) for line in path.read_text().split("\n"))
        cut = re.search(r"#\[cfg\(test\)\]\s*mod tests\s*\{", text)
        if cut:
            text = text[: cut.start()]
        names = re.findall(r"crate::(\w+)", text)
        for group in re.findall(r"use\s+crate::\{([^;]*)\}", text):
            names += re.findall(r"(?:^|[,{\s])(\w+)", group)
        edges[top] |= {name for name in names if name in tops and name != top}
    return tops, edges


def cycles(tops, edges):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in edges[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(tops):
        if node not in index:
            visit(node)
    return found


def main():
    list_graph = "--list" in sys.argv
    failed = False
    for crate in CRATES:
        root = pathlib.Path(crate)
        if not root.is_dir():
            continue
        functions = []
        for path in sorted(root.rglob("*.rs")):
            lines = path.read_text().split("\n")
            if len(lines) - 1 > MAX_FILE_LINES:
                print(f"file over {MAX_FILE_LINES} lines: {path} ({len(lines) - 1})")
                failed = True
            functions += long_functions(path, lines)
        for length, where, name in sorted(functions, reverse=True):
            print(f"function over {MAX_FN_LINES} lines: {where} {name} ({length})")
            failed = True
        tops, edges = module_graph(root)
        if list_graph:
            for top in sorted(edges):
                print(f"{crate}: {top} -> {', '.join(sorted(edges[top]))}")
        for component in cycles(tops, edges):
            print(f"import cycle in {crate}: {' <-> '.join(component)}")
            failed = True
    print("tree check:", "FAILED" if failed else "ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
