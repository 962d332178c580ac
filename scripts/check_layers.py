#!/usr/bin/python3
"""Checks the module layering on the sources (the build enforces the same direction with private include roots):

  - every `#include "prefix/..."` of another module goes down the dependency graph below (the link lines of
    CMakeLists.txt), never up or sideways;
  - there is no include cycle between module folders;
  - another module includes only a module's public header.

Exit 0 when clean; otherwise each violation is printed as FILE:LINE: message and the exit code is 1.
    scripts/check_layers.py [SOURCE_ROOT] [--fix]
--fix rewrites includes of another module's private headers to that module's public header (once per file).
"""
import os
import re
import sys

# module -> (folder, public headers, modules it links directly). Keep in step with CMakeLists.txt.
MODULES = {
    "core": ("framework/core", ["core.h"], []),
    "models": ("framework/models", ["models.h"], ["core"]),
    "diffusion": ("framework/diffusion", ["diffusion.h"], ["models"]),
    "collage": ("framework/collage", ["collage.h"], ["models"]),
    "shapesworld": ("datasets/shapesworld", ["shapesworld.h"], ["core"]),
    "nets": ("framework/nets", ["nets.h"], ["models"]),
    "metrics": ("metrics", ["metrics.h"], ["core", "nets", "shapesworld", "collage"]),
    "methods": ("framework/methods", ["methods.h"], ["diffusion", "collage"]),
    "datasets": ("datasets", ["collage_datasets.h"], ["collage", "shapesworld"]),
    "training": ("framework/training", ["training.h"], ["diffusion", "shapesworld", "nets"]),
    "parity": ("framework/parity", ["parity.h"], ["diffusion", "nets"]),
    "runner": ("framework/runner", ["runner.h"], ["methods", "metrics", "datasets"]),
    "cli": ("framework/cli", ["common.h"], ["runner", "parity", "methods", "metrics", "training", "datasets", "shapesworld"]),
    # Method plugins compile into the methods module (COLLAGE_PLUGIN_DIRS).
    "plugins": ("experiments/plugins", [], ["methods"]),
}
# First components of the include prefixes ("core", "models", ..., "metrics", "datasets").
PREFIXES = {(f[len("framework/"):] if f.startswith("framework/") else f).split("/")[0] for f, _, _ in MODULES.values()}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def closure(module):
    seen, todo = set(), list(MODULES[module][2])
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(MODULES[m][2])
    return seen


def module_of_path(rel):
    """The module a source file or included path belongs to: the longest matching folder, files directly in it."""
    best = None
    for name, (folder, _, _) in MODULES.items():
        if os.path.dirname(rel) == folder and (best is None or len(folder) > len(MODULES[best][0])):
            best = name
    return best


def include_target(path):
    """Module of an include path as written ("models/attention.h", "datasets/shapesworld/shapesworld.h")."""
    for prefix in sorted({f for f, _, _ in MODULES.values()}, key=len, reverse=True):
        short = prefix[len("framework/"):] if prefix.startswith("framework/") else prefix
        if os.path.dirname(path) == short:
            return module_of_path(os.path.join(prefix, os.path.basename(path)))
    return None


def fix_private_includes(path, name):
    """Rewrites includes of other modules' private headers to their public header, dropping repeats."""
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    out, seen, changed = [], set(), False
    for line in lines:
        m = INCLUDE.match(line)
        target = include_target(m.group(1)) if m else None
        if m and target not in (None, name) and os.path.basename(m.group(1)) not in MODULES[target][1]:
            public = os.path.join(os.path.dirname(m.group(1)), MODULES[target][1][0])
            line = f'#include "{public}"\n'
            changed = True
        key = INCLUDE.match(line).group(1) if INCLUDE.match(line) else None
        if key is not None and key in seen:
            changed = True
            continue
        if key is not None:
            seen.add(key)
        out.append(line)
    if changed:
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(out)


def main():
    args = [a for a in sys.argv[1:] if a != "--fix"]
    fix = "--fix" in sys.argv[1:]
    root = os.path.abspath(args[0] if args else os.path.join(os.path.dirname(__file__), ".."))
    problems, edges = [], {}
    for name, (folder, _, _) in MODULES.items():
        base = os.path.join(root, folder)
        if not os.path.isdir(base):
            continue
        allowed = closure(name)
        for file in sorted(os.listdir(base)):
            if not file.endswith((".h", ".cpp", ".inc")):
                continue
            rel = os.path.join(folder, file)
            if fix:
                fix_private_includes(os.path.join(base, file), name)
            with open(os.path.join(base, file), encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    m = INCLUDE.match(line)
                    if not m:
                        continue
                    target = include_target(m.group(1))
                    first = m.group(1).split("/")[0]
                    if target is None and first in PREFIXES and "/" in m.group(1):
                        problems.append(f"{rel}:{lineno}: {m.group(1)} is in no module folder (moved or removed?)")
                        continue
                    if target is None or target == name:
                        continue
                    edges.setdefault(name, set()).add(target)
                    where = f"{rel}:{lineno}"
                    if target not in allowed:
                        problems.append(f"{where}: {name} includes {m.group(1)} of {target}, which it does not link "
                                        f"(it may use: {', '.join(sorted(allowed)) or 'nothing'})")
                    elif os.path.basename(m.group(1)) not in MODULES[target][1]:
                        problems.append(f"{where}: {m.group(1)} is private to {target}; include its public header "
                                        f"{', '.join(MODULES[target][1])}")
    # Cycles between folders, from the includes actually written.
    state = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt]
                problems.append("include cycle: " + " -> ".join(cycle))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    for p in problems:
        print(p)
    print(f"check_layers: {len(MODULES)} modules, {sum(len(v) for v in edges.values())} module edges, "
          f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
