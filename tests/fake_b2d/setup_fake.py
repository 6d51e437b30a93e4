"""Build a throw-away Bench2Drive checkout and CARLA folder whose executables are the fakes in this folder."""
from __future__ import annotations

import json
import os
import random
import signal
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent

WEATHER_XML = """<weathers>
    <case weather_id="1">
        <weather route_percentage="0" cloudiness="5.0" precipitation="0.0" precipitation_deposits="0.0"
                 wetness="0.0" wind_intensity="10.0" sun_azimuth_angle="-1.0" sun_altitude_angle="45.0" fog_density="2.0"/>
    </case>
</weathers>
"""


@dataclass(frozen=True)
class FakeBench:
    b2d: Path
    carla: Path
    agent: Path
    state: Path
    plan: Path

    def env(self, route_seconds: float = 0.2) -> dict[str, str]:
        return {
            "FAKE_B2D_STATE": str(self.state),
            "FAKE_B2D_PLAN": str(self.plan),
            "FAKE_B2D_ROUTE_SECONDS": str(route_seconds),
            "FAKE_B2D_PYTHON": sys.executable,
        }

    def set_plan(self, plan: dict[str, list[str]]) -> None:
        self.plan.write_text(json.dumps(plan))

    def kill_everything(self) -> None:
        """After a test: SIGKILL whatever the fakes started that is still alive (pids from the event log)."""
        for entry in self.events():
            for key in ("pid", "carla", "child"):
                pid = entry.get(key)
                if isinstance(pid, int) and pid != os.getpid() and self._started_by_fakes(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass

    def _started_by_fakes(self, pid: int) -> bool:
        """Guards against a reused pid: only processes carrying this test's FAKE_B2D_STATE are ours."""
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            return False
        return f"FAKE_B2D_STATE={self.state}".encode() in environ.split(b"\0")

    def events(self) -> list[dict]:
        path = self.state / "events.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def route_xml(route_ids: list[str], seed: int = 0) -> str:
    """A leaderboard route file in Bench2Drive's format with synthetic routes of varied length."""
    rng = random.Random(seed)
    parts = ["<routes>"]
    for rid in route_ids:
        n = rng.randint(3, 40)
        points = "\n".join(
            f'            <position x="{10.0 * i:.1f}" y="{rng.uniform(-1, 1):.1f}" z="0.0" />' for i in range(n)
        )
        parts.append(
            f'<route id="{rid}" town="Town12">\n         <waypoints>\n{points}\n         </waypoints>\n'
            f'         <scenarios>\n            <scenario name="ParkingCutIn_{rid}" type="ParkingCutIn">\n'
            f'               <trigger_point x="0.0" y="0.0" z="0.0" yaw="0"/>\n            </scenario>\n         </scenarios>\n'
            f'         <weathers>\n            <weather route_percentage="0" cloudiness="5.0"/>\n         </weathers>\n      </route>'
        )
    parts.append("</routes>")
    return "\n".join(parts) + "\n"


def make_fake_bench(root: Path) -> FakeBench:
    b2d = root / "Bench2Drive"
    (b2d / "leaderboard" / "leaderboard").mkdir(parents=True)
    (b2d / "leaderboard" / "data").mkdir(parents=True)
    (b2d / "scenario_runner").mkdir()
    shutil.copy(HERE / "leaderboard_evaluator.py", b2d / "leaderboard" / "leaderboard" / "leaderboard_evaluator.py")
    (b2d / "leaderboard" / "data" / "weather.xml").write_text(WEATHER_XML)
    carla = root / "CARLA_0.9.15"
    carla.mkdir()
    shutil.copy(HERE / "fake_carla.py", carla / "fake_carla.py")
    shutil.copy(HERE / "CarlaUE4.sh", carla / "CarlaUE4.sh")
    (carla / "CarlaUE4.sh").chmod(0o755)
    agent = root / "my_agent.py"
    agent.write_text("def get_entry_point():\n    return 'MyAgent'\n")
    state = root / "fake_state"
    state.mkdir()
    plan = root / "plan.json"
    plan.write_text("{}")
    return FakeBench(b2d, carla, agent, state, plan)
