"""bench2drive_eval's runner and SLURM backend share local_driving.py instead of importing each other."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bench2drive_eval"


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_slurm_does_not_import_the_runner():
    assert "bench2drive_eval.runner" not in imported_modules(PACKAGE / "slurm.py")
    assert "bench2drive_eval.local_driving" in imported_modules(PACKAGE / "slurm.py")


def test_no_module_of_the_package_imports_itself_in_a_circle():
    graph = {p.stem: {m.split(".", 1)[1] for m in imported_modules(p) if m.startswith("bench2drive_eval.")}
             for p in PACKAGE.glob("*.py")}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    circular = sorted(name for name in graph if reaches(name, name, {name}))
    assert circular == []
