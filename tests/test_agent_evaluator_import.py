"""The agent module loads the way the upstream evaluator loads it: by file path, with the agent's
folder put first on sys.path, so no file in agent/ may shadow a standard-library module."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AGENT_FILE = REPO / "agent" / "drivemoe_agent.py"
DOUBLE = REPO / "tests" / "leaderboard_double"


def test_no_agent_module_shadows_the_standard_library() -> None:
    names = {path.stem for path in (REPO / "agent").glob("*.py")}
    clashes = sorted(names & set(sys.stdlib_module_names))
    assert not clashes, f"agent/ is put on sys.path by the evaluator; these files shadow stdlib modules: {clashes}"


def test_evaluator_style_import_finds_the_agent_class() -> None:
    # What leaderboard_evaluator.py does with --agent: basename as module name, its folder on sys.path.
    script = f"""
import importlib, os, sys
sys.path.insert(0, {str(DOUBLE)!r})
agent_path = {str(AGENT_FILE)!r}
sys.path.insert(0, os.path.dirname(agent_path))
module = importlib.import_module(os.path.basename(agent_path).split('.')[0])
from leaderboard.autoagents.autonomous_agent import AutonomousAgent
cls = getattr(module, module.get_entry_point())
assert issubclass(cls, AutonomousAgent), cls
import trace
assert 'lib' in trace.__file__ and 'agent' not in os.path.dirname(trace.__file__), trace.__file__
print(cls.__name__)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO.parent, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "DriveMoEAgent"
