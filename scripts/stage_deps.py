"""Each DVC stage's code deps, derived from imports: the stage script and every ``bnr`` module
it imports, directly or through other ``bnr`` modules (function-level imports included).

    python scripts/stage_deps.py            # print the code deps dvc.yaml should list per stage
    python scripts/stage_deps.py --check    # exit 1 and name each stage whose deps differ
    python scripts/stage_deps.py --write    # rewrite the code deps in dvc.yaml (data deps kept)

``tests/test_stage_deps.py`` runs the check, so dvc.yaml cannot drift from the imports. The files
are read with ``ast``, never imported.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CODE_SUFFIXES = (".py",)


def module_file(module: str, repo: Path = REPO) -> Path | None:
    """``bnr.data.voc`` -> ``bnr/data/voc.py`` (or a package's ``__init__.py``); None if absent."""
    base = repo.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, repo: Path = REPO) -> set[str]:
    """The ``bnr`` modules ``path`` imports anywhere in the file (``from bnr.x import y`` counts
    ``bnr.x`` and, when ``y`` is a submodule, ``bnr.x.y``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if (name == "bnr" or name.startswith("bnr.")) and module_file(name, repo):
                found.add(name)
    return found


def import_closure(script: Path, repo: Path = REPO) -> list[str]:
    """Repo-relative paths of ``script`` and every ``bnr`` file it reaches through imports.

    Package ``__init__.py`` files on the way are included: Python runs them on import.
    """
    seen: set[Path] = {script.resolve()}
    todo = [script.resolve()]
    while todo:
        for module in imported_modules(todo.pop(), repo):
            parts = module.split(".")
            files = [module_file(".".join(parts[:i]), repo) for i in range(1, len(parts) + 1)]
            for file in files:
                if file is not None and file.resolve() not in seen:
                    seen.add(file.resolve())
                    todo.append(file.resolve())
    return sorted(str(p.relative_to(repo)) for p in seen)


def stage_script(cmd: str) -> str | None:
    """``python stages/crf.py --x`` -> ``stages/crf.py``."""
    for word in cmd.split():
        if word.endswith(".py"):
            return word
    return None


def expected_and_declared(repo: Path = REPO) -> dict[str, tuple[list[str], list[str]]]:
    """Per stage: (code deps derived from imports, code deps dvc.yaml declares)."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        script = stage_script(stage["cmd"])
        if script is None:
            continue
        declared = sorted(d for d in stage.get("deps", []) if isinstance(d, str)
                          and d.endswith(CODE_SUFFIXES))
        out[name] = (import_closure(repo / script, repo), declared)
    return out


def write_code_deps(repo: Path = REPO) -> None:
    """Rewrite each stage's ``deps:`` in dvc.yaml: its import closure, then its other deps in
    their order. A text edit, so the file's layout and every other entry stay as they are."""
    path = repo / "dvc.yaml"
    text = path.read_text()
    stages = yaml.safe_load(text)["stages"]
    pieces = re.split(r"(?m)^(?=  [A-Za-z_][\w-]*:\n)", text)
    for i, piece in enumerate(pieces):
        match = re.match(r"  ([A-Za-z_][\w-]*):\n", piece)
        if not match or match.group(1) not in stages:
            continue
        stage = stages[match.group(1)]
        script = stage_script(stage.get("cmd", ""))
        if script is None:
            continue
        other = [d for d in stage.get("deps", []) if not (isinstance(d, str)
                                                           and d.endswith(CODE_SUFFIXES))]
        deps = import_closure(repo / script, repo) + other
        block = "    deps:\n" + "".join(f"      - {d}\n" for d in deps)
        pieces[i] = re.sub(r"(?m)^    deps:\n(      - .*\n)+", lambda _, b=block: b, piece)
    path.write_text("".join(pieces))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with dvc.yaml")
    parser.add_argument("--write", action="store_true", help="rewrite dvc.yaml's code deps")
    args = parser.parse_args()
    if args.write:
        write_code_deps()
        return 0
    bad = 0
    for name, (expected, declared) in expected_and_declared().items():
        if not args.check:
            print(f"{name}:\n" + "".join(f"  - {p}\n" for p in expected), end="")
            continue
        missing = sorted(set(expected) - set(declared))
        extra = sorted(set(declared) - set(expected))
        if missing or extra:
            bad += 1
            print(f"{name}: missing {missing or '-'}; not imported {extra or '-'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
