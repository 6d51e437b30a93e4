"""Test double of leaderboard.autoagents.autonomous_agent (Bench2Drive 0.0.4 / Leaderboard 2.0).

Follows the documented interface exactly:
- `Track` enum (SENSORS, MAP, SENSORS_QUALIFIER, MAP_QUALIFIER);
- `AutonomousAgent.__init__(carla_host, carla_port, debug=False)`: track = SENSORS, empty plans,
  a sensor interface, wallclock_t0 = None, then `get_hero()`;
- `set_global_plan(gps, world)`: downsampled to ~50 m (first, lane/option changes, last) into
  `_global_plan` / `_global_plan_world_coord`, dense GPS plan kept in `_plan_gps_HACK`;
- `setup(path)`, `sensors()`, `run_step(input_data, timestamp)` (returns carla.VehicleControl),
  `destroy()`;
- `__call__()`: input data for the current frame from the sensor interface, timestamp from game
  time, `run_step`, then `manual_gear_shift = False`;
- `get_metric_info()` (Bench2Drive addition) from the hero actor.

Leaves out: the CARLA world (the hero is whatever `HERO_ACTOR` holds, set by tests; upstream
searches the world for role_name 'hero'), real sensor callbacks and their timeouts, wall-clock
printing, ROS. Game time is the `GameTime` class below, driven by the test.
"""
from __future__ import annotations

from enum import Enum

import carla

from leaderboard.envs.sensor_interface import SensorInterface
from leaderboard.utils.route_manipulation import downsample_route

HERO_ACTOR = None  # tests assign an object with get_acceleration / get_angular_velocity / get_transform


class GameTime:
    """Simulation frame and time, advanced by the test harness (upstream: srunner's GameTime)."""

    frame = 0
    time = 0.0

    @classmethod
    def tick(cls, dt: float = 0.05) -> None:
        cls.frame += 1
        cls.time += dt

    @classmethod
    def reset(cls) -> None:
        cls.frame, cls.time = 0, 0.0


class Track(Enum):
    SENSORS = "SENSORS"
    MAP = "MAP"
    SENSORS_QUALIFIER = "SENSORS_QUALIFIER"
    MAP_QUALIFIER = "MAP_QUALIFIER"


class AutonomousAgent:
    """Base class of leaderboard agents (see the module docstring)."""

    def __init__(self, carla_host, carla_port, debug=False):
        self.track = Track.SENSORS
        self._global_plan = None
        self._global_plan_world_coord = None
        self.sensor_interface = SensorInterface()
        self.wallclock_t0 = None
        self.get_hero()

    def setup(self, path_to_conf_file):
        pass

    def sensors(self):
        return []

    def run_step(self, input_data, timestamp):
        control = carla.VehicleControl()
        control.steer = 0.0
        control.throttle = 0.0
        control.brake = 0.0
        control.hand_brake = False
        return control

    def destroy(self):
        pass

    def __call__(self):
        input_data = self.sensor_interface.get_data(GameTime.frame)
        timestamp = GameTime.time
        if not self.wallclock_t0:
            self.wallclock_t0 = 1
        control = self.run_step(input_data, timestamp)
        control.manual_gear_shift = False
        return control

    @staticmethod
    def get_ros_version():
        return -1

    def set_global_plan(self, global_plan_gps, global_plan_world_coord):
        kept = downsample_route(global_plan_world_coord, 50)
        self._global_plan_world_coord = [(global_plan_world_coord[i][0], global_plan_world_coord[i][1]) for i in kept]
        self._global_plan = [global_plan_gps[i] for i in kept]
        self._plan_gps_HACK = global_plan_gps

    def get_hero(self):
        self.hero_actor = HERO_ACTOR

    def get_metric_info(self):
        def as_list(vector, rotation=False):
            if rotation:
                return [vector.roll, vector.pitch, vector.yaw]
            return [vector.x, vector.y, vector.z]

        transform = self.hero_actor.get_transform()
        return {
            "acceleration": as_list(self.hero_actor.get_acceleration()),
            "angular_velocity": as_list(self.hero_actor.get_angular_velocity()),
            "forward_vector": as_list(transform.get_forward_vector()),
            "right_vector": as_list(transform.get_right_vector()),
            "location": as_list(transform.location),
            "rotation": as_list(transform.rotation, rotation=True),
        }
