"""Lists every dotted name `tf_mocov3.<module>.<name>` and every path `tf_mocov3/<...>.py` (or under tests/,
benchmarks/, scripts/, configs/, export/) in the tree's *.py, *.md and *.sh files that does not resolve.

  python scripts/check_names.py        # prints FILE:LINE: NAME per stale name; exit status 1 when there is one

A name resolves when its longest prefix that is a module of the installed package imports and the rest are
attributes of it, one after the other (tf_mocov3.models.vit.ARCHS, tf_mocov3.MoCoV3.train_step); a path when
that file exists under the root. Command modules
(tf_mocov3/<command>.py, which define absl flags when imported: two of them in one process clash) are not
imported: their attributes are looked up among the names their source binds at the top level. Skipped: .venv,
.git, tests/data (fixtures of the old layout, on purpose), the names inside a path (tf_mocov3/models/vit.py) and
the strings in NOT_NAMES. tests/test_package.py runs this check over the tree.
"""

import ast
import importlib
import importlib.util
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP_DIRS = {".venv", ".git", "__pycache__", os.path.join("tests", "data")}
# A dotted name starting at tf_mocov3, not preceded by a path separator or another identifier character.
NAME = re.compile(r"(?<![\w/.])tf_mocov3(?:\.[A-Za-z_]\w*)+")
# A path of a Python or shell file in one of the tree's folders, not inside a longer path.
PATH = re.compile(r"(?<![\w/.])(?:tf_mocov3|tests|benchmarks|scripts|configs|export)/[\w/.-]*\w\.(?:py|sh)\b")
# Strings that look like a dotted name and are not one, each with what it is.
NOT_NAMES = {
    "tf_mocov3.prepared.v1": "the format tag in a prepared data set's metadata.json (data/sources.PREPARED_FORMAT)",
}


def _files(root):
    for folder, dirs, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        dirs[:] = sorted(d for d in dirs if os.path.normpath(os.path.join(rel, d)) not in SKIP_DIRS
                         and d not in SKIP_DIRS and not d.endswith(".egg-info"))
        for name in sorted(files):
            if name.endswith((".py", ".md", ".sh")):
                yield os.path.join(folder, name)


def _top_level_names(path):
    """The names a module's source binds at its top level (def, class, assignment, import)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _is_command(spec):
    origin = spec.origin or ""
    if os.path.basename(origin) == "__init__.py" or not origin.endswith(".py"):
        return False
    with open(origin, encoding="utf-8") as f:
        source = f.read()
    return "cli.define_flags(" in source or "flags.DEFINE_" in source


def resolves(name):
    """True when the dotted `name` is a module of the package or an attribute (chain) of one."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            spec = importlib.util.find_spec(module_name)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            continue
        rest = parts[cut:]
        if not rest:
            return True
        if _is_command(spec):
            return len(rest) == 1 and rest[0] in _top_level_names(spec.origin)
        value = importlib.import_module(module_name)
        for attribute in rest:
            if not hasattr(value, attribute):
                return False
            value = getattr(value, attribute)
        return True
    return False


def stale_names(root=ROOT):
    """[(path relative to root, line number, name or path)] of every one under root that does not resolve."""
    found, verdicts = [], {}
    for path in _files(root):
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        for number, line in enumerate(lines, 1):
            for match in NAME.finditer(line):
                name = match.group(0)
                if name in NOT_NAMES:
                    continue
                if name not in verdicts:
                    verdicts[name] = resolves(name)
                if not verdicts[name]:
                    found.append((os.path.relpath(path, root), number, name))
            for match in PATH.finditer(line):
                if not os.path.exists(os.path.join(root, match.group(0))):
                    found.append((os.path.relpath(path, root), number, match.group(0)))
    return found


def main():
    found = stale_names()
    for path, number, name in found:
        print(f"{path}:{number}: {name}")
    print(f"{len(found)} name(s) that do not resolve" if found else "every tf_mocov3.* name resolves")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
