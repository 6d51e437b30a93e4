"""The built-in procedural scenario: the ego overtakes a slow car on a right-hand curve, as a Bench2Drive clip.

Everything is generated here (no third-party images): a two-lane one-way road (straight, then a
right curve of radius 40 m) with solid edge lines and a dashed lane divider, roadside posts, the ego
in the left lane and a slower car in the right lane. Each frame is rendered through the six real
Bench2Drive camera models (model/cameras.py poses and fov) at a reduced resolution with the
intrinsics scaled accordingly (recorded in the annotations' `sensors`): the ground by inverse
perspective mapping of a top-down texture, objects as shaded 3D boxes, a plain sky.

World frame: CARLA's (x east, y south, z up); yaw in degrees positive to the right; the annotation's
`theta` is compass-style (compass = yaw + pi/2, radians), as Bench2Drive records it. The passed car
appears first in CAM_FRONT, then CAM_FRONT_RIGHT, CAM_BACK_RIGHT and CAM_BACK: the ground-truth camera
labels (authors' format: frame index -> camera or "NULL") follow it while it is within `label_range_m`.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from agent.debugger.projection import cam_to_ego, pixel_rays_ego, project_points, scaled_intrinsics, transform_matrix
from model.cameras import BENCH2DRIVE_CAMERAS, FRONT, NULL_CAMERA_LABEL, CameraSpec

ROAD_OPTION_LANEFOLLOW = 4
GRAVITY = 9.81
LANE_WIDTH_M = 3.5
# CARLA's vehicle.lincoln.mkz_2020 bounding box half sizes (metres), used for both cars.
CAR_EXTENT = (2.45, 1.06, 0.76)
POST_EXTENT = (0.15, 0.15, 1.5)


@dataclass(frozen=True)
class DemoSceneConfig:
    """Geometry, motion and rendering of the built-in scenario."""

    num_frames: int = 80
    fps: float = 10.0
    image_width: int = 400  # 1/4 of Bench2Drive's 1600x900, intrinsics scaled by the same factor
    image_height: int = 225
    straight_length_m: float = 20.0
    curve_radius_m: float = 40.0
    curve_angle_deg: float = 90.0
    ego_start_s_m: float = 5.0
    ego_speed_mps: float = 6.0
    ego_acceleration_mps2: float = 0.25
    other_start_s_m: float = 21.0
    other_speed_mps: float = 3.0
    label_range_m: float = 30.0
    # Route commands as Bench2Drive's data collector makes them (TCP-style planners): the far command
    # from the sparse global plan (about one point per 50 m) with 7.5 / 25 m thresholds, the near one
    # from the dense 1 m route with 4 / 50 m.
    sparse_route_spacing_m: float = 50.0
    far_planner_m: tuple[float, float] = (7.5, 25.0)
    near_planner_m: tuple[float, float] = (4.0, 50.0)
    scenario_type: str = "HazardAtSideLane"
    town: str = "Town00"  # not a CARLA town: the procedural demo road
    route_id: int = 0
    weather_id: int = 0
    seed: int = 0

    @property
    def clip_name(self) -> str:
        return f"{self.scenario_type}_{self.town}_Route{self.route_id}_Weather{self.weather_id}"


@dataclass(frozen=True)
class CurvedRoad:
    """Centreline: a straight segment heading east from (-20, 0), then a right curve; d > 0 is right."""

    straight_length: float
    radius: float
    curve_angle_rad: float
    start_x: float = -20.0
    exit_length: float = 40.0

    @property
    def length(self) -> float:
        return self.straight_length + self.radius * self.curve_angle_rad + self.exit_length

    def pose(self, s: np.ndarray | float, d: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World (x, y, yaw in radians) of arc length s along the centreline and lateral offset d."""
        s = np.asarray(s, dtype=np.float64)
        d = np.asarray(d, dtype=np.float64)
        s, d = np.broadcast_arrays(s, d)
        arc_end = self.straight_length + self.radius * self.curve_angle_rad
        corner_x = self.start_x + self.straight_length
        phi = np.clip((s - self.straight_length) / self.radius, 0.0, self.curve_angle_rad)
        # straight part (s < straight_length), possibly extrapolated backwards
        x = np.where(s < self.straight_length, self.start_x + s, corner_x + (self.radius - d) * np.sin(phi))
        y = np.where(s < self.straight_length, d, self.radius - (self.radius - d) * np.cos(phi))
        yaw = np.where(s < self.straight_length, 0.0, phi)
        # exit straight after the curve
        beyond = s > arc_end
        if np.any(beyond):
            end_x = corner_x + (self.radius - d) * np.sin(self.curve_angle_rad)
            end_y = self.radius - (self.radius - d) * np.cos(self.curve_angle_rad)
            extra = s - arc_end
            x = np.where(beyond, end_x + extra * np.cos(self.curve_angle_rad), x)
            y = np.where(beyond, end_y + extra * np.sin(self.curve_angle_rad), y)
        return x, y, yaw


@dataclass(frozen=True)
class Box:
    """A 3D box in the world frame: footprint centre (x, y), yaw in radians, half sizes, bottom at z0."""

    x: float
    y: float
    yaw: float
    extent: tuple[float, float, float]
    color: tuple[int, int, int]  # RGB
    z0: float = 0.0

    def corners_world(self) -> np.ndarray:
        ex, ey, ez = self.extent
        local = np.array([[sx * ex, sy * ey, self.z0 + ez + sz * ez] for sx in (1, -1) for sy in (1, -1) for sz in (1, -1)])
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        return local @ rotation.T + np.array([self.x, self.y, 0.0])


# Faces as corner indices (corner order from Box.corners_world: sx, sy, sz loops), with outward normals.
_BOX_FACES: tuple[tuple[int, int, int, int], ...] = (
    (0, 1, 3, 2),  # front (+x)
    (4, 6, 7, 5),  # back (-x)
    (0, 4, 5, 1),  # right (+y)
    (2, 3, 7, 6),  # left (-y)
    (0, 2, 6, 4),  # top (+z)
    (1, 5, 7, 3),  # bottom (-z)
)
_FACE_SHADE = (1.0, 0.7, 0.85, 0.85, 1.15, 0.4)


@dataclass(frozen=True)
class EgoPose:
    x: float
    y: float
    yaw: float  # radians, CARLA convention

    def world_to_ego(self, points: np.ndarray) -> np.ndarray:
        """[N, 3] world points -> ego frame (the 2D part is model.ego_state.world_to_ego's rotation)."""
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        delta = np.asarray(points, dtype=np.float64) - np.array([self.x, self.y, 0.0])
        return np.stack([c * delta[:, 0] + s * delta[:, 1], -s * delta[:, 0] + c * delta[:, 1], delta[:, 2]], axis=1)

    def matrix(self) -> np.ndarray:
        return transform_matrix(self.x, self.y, 0.0, math.degrees(self.yaw))


class GroundTexture:
    """Top-down RGB texture of the ground (grass, asphalt, lane markings), sampled by cv2.remap."""

    def __init__(self, road: CurvedRoad, seed: int, metres_per_pixel: float = 0.1) -> None:
        self.metres_per_pixel = metres_per_pixel
        self.origin = np.array([-70.0, -60.0])  # world (x, y) of texture pixel (0, 0)
        size = int(200.0 / metres_per_pixel)
        rng = np.random.default_rng(seed)
        noise = cv2.GaussianBlur(rng.normal(0.0, 1.0, (size // 8, size // 8)).astype(np.float32), (0, 0), 2.0)
        noise = cv2.resize(noise, (size, size), interpolation=cv2.INTER_LINEAR)[..., None]
        grass = np.clip(np.array([88, 122, 62], np.float32) + 14.0 * noise, 0, 255)
        texture = grass.astype(np.uint8)
        s = np.arange(-40.0, road.length, 0.5)

        def line(d: float) -> np.ndarray:
            x, y, _ = road.pose(s, np.full_like(s, d))
            return self.to_pixels(np.stack([x, y], axis=1))

        road_width_px = int(round(2 * LANE_WIDTH_M / metres_per_pixel))
        cv2.polylines(texture, [line(0.0).astype(np.int32)], False, (150, 150, 150), road_width_px + 30)  # kerb
        cv2.polylines(texture, [line(0.0).astype(np.int32)], False, (72, 72, 76), road_width_px)
        asphalt = cv2.inRange(texture, (72, 72, 76), (72, 72, 76)) > 0
        texture[asphalt] = np.clip(np.array([72, 72, 76], np.float32) + 6.0 * noise[asphalt], 0, 255).astype(np.uint8)
        marking_px = max(1, int(round(0.15 / metres_per_pixel)))
        for edge in (-LANE_WIDTH_M + 0.2, LANE_WIDTH_M - 0.2):
            cv2.polylines(texture, [line(edge).astype(np.int32)], False, (235, 235, 235), marking_px, cv2.LINE_AA)
        centre = line(0.0)
        dash = (np.mod(s, 9.0) < 3.0)
        for start in np.flatnonzero(dash & ~np.roll(dash, 1)):
            stop = start
            while stop + 1 < len(s) and dash[stop + 1]:
                stop += 1
            cv2.polylines(texture, [centre[start : stop + 1].astype(np.int32)], False, (235, 235, 235), marking_px, cv2.LINE_AA)
        self.texture = texture

    def to_pixels(self, xy: np.ndarray) -> np.ndarray:
        return (np.asarray(xy) - self.origin) / self.metres_per_pixel

    def sample(self, world_xy: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """RGB of the ground at [H, W, 2] world points (grass outside the texture)."""
        pixels = self.to_pixels(world_xy).astype(np.float32)
        pixels[~valid] = -10.0
        return cv2.remap(
            self.texture, pixels[..., 0], pixels[..., 1], cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT, borderValue=(88, 122, 62),
        )


@dataclass(frozen=True)
class _CameraGround:
    ground_ego: np.ndarray  # [H, W, 2] ego-frame ground point of each pixel
    ground_mask: np.ndarray  # [H, W] pixel sees the ground within range
    fog: np.ndarray  # [H, W, 1] blend factor towards the haze colour
    sky: np.ndarray  # [H, W, 3] uint8 sky gradient


_MAX_GROUND_RANGE_M = 150.0
_HAZE = np.array([190, 200, 210], np.float32)


def _camera_ground(camera: CameraSpec, size: tuple[int, int]) -> _CameraGround:
    origin, rays = pixel_rays_ego(camera, size)
    down = rays[..., 2] < -1e-6
    t = np.where(down, -origin[2] / np.where(down, rays[..., 2], -1.0), np.inf)
    ground = origin[:2] + t[..., None] * rays[..., :2]
    distance = np.hypot(ground[..., 0] - origin[0], ground[..., 1] - origin[1])
    mask = down & (distance < _MAX_GROUND_RANGE_M)
    fog = np.clip(np.where(mask, distance, _MAX_GROUND_RANGE_M) / _MAX_GROUND_RANGE_M, 0.0, 1.0) ** 1.5
    height = size[1]
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    sky = ((1 - rows) * np.array([110, 160, 225], np.float32) + rows * _HAZE) * np.ones((1, size[0], 1), np.float32)
    return _CameraGround(np.where(mask[..., None], ground, 0.0), mask, fog[..., None].astype(np.float32), sky.astype(np.uint8))


def _clip_near(polygon_cam: np.ndarray, near: float = 0.2) -> np.ndarray:
    """Clip a polygon (camera frame, x = depth) against the plane x = near (Sutherland-Hodgman)."""
    out = []
    count = len(polygon_cam)
    for i in range(count):
        current, following = polygon_cam[i], polygon_cam[(i + 1) % count]
        current_in, following_in = current[0] >= near, following[0] >= near
        if current_in:
            out.append(current)
        if current_in != following_in:
            t = (near - current[0]) / (following[0] - current[0])
            out.append(current + t * (following - current))
    return np.array(out)


def _draw_box(image: np.ndarray, corners_ego: np.ndarray, colour: tuple[int, int, int], camera: CameraSpec) -> None:
    """Draw a box given by its 8 corners in the ego frame (order of Box.corners_world)."""
    matrix = cam_to_ego(camera)
    corners_cam = (corners_ego - matrix[:3, 3]) @ matrix[:3, :3]
    if np.all(corners_cam[:, 0] < 0.2):
        return
    height, width = image.shape[:2]
    intrinsics = scaled_intrinsics(camera, (width, height))
    # Cull boxes wholly beyond the left or right edge of the view (planes through the camera centre,
    # two pixels of margin for the anti-aliased outline): a convex box with every corner outside the
    # same plane draws no pixel, so skipping it changes nothing in the image.
    left = (intrinsics[0, 2] + 2.0) / intrinsics[0, 0]
    right = (width - intrinsics[0, 2] + 2.0) / intrinsics[0, 0]
    if np.all(corners_cam[:, 1] > right * corners_cam[:, 0]) or np.all(corners_cam[:, 1] < -left * corners_cam[:, 0]):
        return
    centre = corners_cam.mean(axis=0)
    for face, shade in zip(_BOX_FACES, _FACE_SHADE):
        polygon = corners_cam[list(face)]
        face_centre = polygon.mean(axis=0)
        normal = face_centre - centre
        if np.dot(normal, face_centre) >= 0:  # faces away from the camera (the box is convex)
            continue
        polygon = _clip_near(polygon)
        if len(polygon) < 3:
            continue
        u = intrinsics[0, 2] + intrinsics[0, 0] * polygon[:, 1] / polygon[:, 0]
        v = intrinsics[1, 2] - intrinsics[1, 1] * polygon[:, 2] / polygon[:, 0]
        points = np.clip(np.stack([u, v], axis=1), -4 * width, 4 * width).round().astype(np.int32)
        shaded = tuple(int(min(255, c * shade)) for c in colour)
        cv2.fillPoly(image, [points], shaded, cv2.LINE_AA)
        cv2.polylines(image, [points], True, (25, 25, 25), 1, cv2.LINE_AA)


def camera_label_of_point(centre_ego: np.ndarray, label_range_m: float) -> str:
    """The label of an object centred at `centre_ego` (ego frame, metres): the camera whose axis is
    nearest its direction among those that see it; "NULL" if that is the front camera or it is far."""
    centre = np.asarray(centre_ego, dtype=np.float64).reshape(1, 3)
    if float(np.hypot(centre[0, 0], centre[0, 1])) > label_range_m:
        return NULL_CAMERA_LABEL
    best, best_angle = None, math.inf
    for camera in BENCH2DRIVE_CAMERAS:
        if not project_points(centre, camera).visible[0]:
            continue
        direction = math.atan2(centre[0, 1] - camera.y, centre[0, 0] - camera.x)
        angle = abs((math.degrees(direction) - camera.yaw + 180.0) % 360.0 - 180.0)
        if angle < best_angle:
            best, best_angle = camera.name, angle
    return NULL_CAMERA_LABEL if best in (None, FRONT) else best


@dataclass(frozen=True)
class DemoFrame:
    """One generated frame: RGB images per camera, the Bench2Drive annotation, the camera label."""

    index: int
    images: dict[str, np.ndarray]
    annotation: dict
    camera_label: str


class DemoScene:
    """The built-in scenario; `frames()` renders it frame by frame."""

    def __init__(self, config: DemoSceneConfig = DemoSceneConfig()) -> None:
        if config.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {config.num_frames}")
        self.config = config
        self.road = CurvedRoad(config.straight_length_m, config.curve_radius_m, math.radians(config.curve_angle_deg))
        self.size = (config.image_width, config.image_height)
        self.texture = GroundTexture(self.road, config.seed)
        self._ground = {camera.name: _camera_ground(camera, self.size) for camera in BENCH2DRIVE_CAMERAS}
        s = np.arange(-20.0, self.road.length, 20.0)
        posts = []
        for d in (-LANE_WIDTH_M - 2.5, LANE_WIDTH_M + 2.5):
            x, y, yaw = self.road.pose(s, np.full_like(s, d))
            posts += [Box(float(a), float(b), float(c), POST_EXTENT, (205, 190, 120)) for a, b, c in zip(x, y, yaw)]
        self.posts = tuple(posts)
        self.ego_lane = -LANE_WIDTH_M / 2
        self.other_lane = LANE_WIDTH_M / 2
        self._commands = self._route_commands()

    # ---- motion -------------------------------------------------------------------------------
    def time(self, index: int) -> float:
        return index / self.config.fps

    def ego_s(self, t: float) -> float:
        c = self.config
        return c.ego_start_s_m + c.ego_speed_mps * t + 0.5 * c.ego_acceleration_mps2 * t * t

    def other_s(self, t: float) -> float:
        return self.config.other_start_s_m + self.config.other_speed_mps * t

    def _pose_at(self, s: float, d: float) -> EgoPose:
        x, y, yaw = self.road.pose(s, d)
        return EgoPose(float(x), float(y), float(yaw))

    def ego_pose(self, t: float) -> EgoPose:
        return self._pose_at(self.ego_s(t), self.ego_lane)

    def other_box(self, t: float) -> Box:
        """The passed car's bounding box (what the annotation records)."""
        pose = self._pose_at(self.other_s(t), self.other_lane)
        return Box(pose.x, pose.y, pose.yaw, CAR_EXTENT, (200, 45, 40))

    def other_car_parts(self, t: float) -> list[Box]:
        """The passed car as drawn: a red body and a darker glass cabin set back on it."""
        box = self.other_box(t)
        body_height = 0.62 * CAR_EXTENT[2]
        cabin = (0.55 * CAR_EXTENT[0], 0.88 * CAR_EXTENT[1], CAR_EXTENT[2] - body_height)
        back = -0.25 * CAR_EXTENT[0]
        cx, cy = box.x + back * math.cos(box.yaw), box.y + back * math.sin(box.yaw)
        return [
            Box(box.x, box.y, box.yaw, (CAR_EXTENT[0], CAR_EXTENT[1], body_height), box.color),
            Box(cx, cy, box.yaw, cabin, (70, 80, 100), z0=2 * body_height),
        ]

    def _ego_kinematics(self, t: float) -> tuple[float, np.ndarray, np.ndarray]:
        """Speed (m/s), IMU acceleration [3] (ego frame, with gravity on z) and angular velocity [3]."""
        dt = 1e-3
        p0, p1, p2 = (self.ego_pose(t + k * dt) for k in (-1, 0, 1))
        v_world = np.array([p2.x - p0.x, p2.y - p0.y]) / (2 * dt)
        a_world = np.array([p2.x - 2 * p1.x + p0.x, p2.y - 2 * p1.y + p0.y]) / (dt * dt)
        c, s = math.cos(p1.yaw), math.sin(p1.yaw)
        a_ego = np.array([c * a_world[0] + s * a_world[1], -s * a_world[0] + c * a_world[1], GRAVITY])
        yaw_rate = (p2.yaw - p0.yaw) / (2 * dt)
        return float(np.hypot(*v_world)), a_ego, np.array([0.0, 0.0, yaw_rate])

    def _lane_points(self, spacing: float) -> np.ndarray:
        s = np.append(np.arange(self.config.ego_start_s_m, self.road.length, spacing), self.road.length)
        x, y, _ = self.road.pose(s, np.full_like(s, self.ego_lane))
        return np.stack([x, y], axis=1)

    def sparse_route(self) -> np.ndarray:
        """[N, 2] world points of the global plan along the ego lane (the leaderboard's ~50 m plan)."""
        return self._lane_points(self.config.sparse_route_spacing_m)

    def dense_route(self) -> np.ndarray:
        return self._lane_points(1.0)

    def _route_commands(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(near, far) world command points per frame, from planners stepped along the ego's path."""
        from agent.runtime.route_planner import RoutePlanner

        far_planner = RoutePlanner(self.sparse_route(), *self.config.far_planner_m)
        near_planner = RoutePlanner(self.dense_route(), *self.config.near_planner_m)
        commands = []
        for index in range(self.config.num_frames):
            pose = self.ego_pose(self.time(index))
            position = np.array([pose.x, pose.y])
            commands.append((near_planner.step(position), far_planner.step(position)))
        return commands

    # ---- labels -------------------------------------------------------------------------------
    def camera_label(self, index: int) -> str:
        """Authors'-format camera label: the camera facing the passed car, "NULL" if front/far."""
        t = self.time(index)
        pose, other = self.ego_pose(t), self.other_box(t)
        centre = pose.world_to_ego(np.array([[other.x, other.y, other.extent[2]]]))
        return camera_label_of_point(centre[0], self.config.label_range_m)

    def camera_labels(self) -> dict[str, str]:
        return {str(i): self.camera_label(i) for i in range(self.config.num_frames)}

    # ---- rendering ----------------------------------------------------------------------------
    def render(self, index: int) -> dict[str, np.ndarray]:
        """RGB uint8 images of the six cameras at frame `index`."""
        t = self.time(index)
        pose = self.ego_pose(t)
        c, s = math.cos(pose.yaw), math.sin(pose.yaw)
        car = self.other_car_parts(t)
        boxes = list(self.posts) + car
        # painter's order, far first, by object: the car's parts share the body's distance and a
        # stable sort keeps the cabin after (on top of) the body
        anchors = [(b.x, b.y) for b in self.posts] + [(car[0].x, car[0].y)] * len(car)
        centres = pose.world_to_ego(np.array([[x, y, 0.0] for x, y in anchors]))
        order = np.argsort(-np.hypot(centres[:, 0], centres[:, 1]), kind="stable")
        near = [k for k in order if np.hypot(*centres[k, :2]) < 80.0]
        corners = {k: pose.world_to_ego(boxes[k].corners_world()) for k in near}
        images = {}
        for camera in BENCH2DRIVE_CAMERAS:
            ground = self._ground[camera.name]
            ex, ey = ground.ground_ego[..., 0], ground.ground_ego[..., 1]
            world = np.stack([pose.x + c * ex - s * ey, pose.y + s * ex + c * ey], axis=-1)
            colour = self.texture.sample(world, ground.ground_mask).astype(np.float32)
            colour = colour * (1 - ground.fog) + _HAZE * ground.fog
            image = np.where(ground.ground_mask[..., None], colour, ground.sky).astype(np.uint8)
            image = np.ascontiguousarray(image)
            for k in near:
                _draw_box(image, corners[k], boxes[k].color, camera)
            images[camera.name] = image
        return images

    # ---- annotations --------------------------------------------------------------------------
    def annotation(self, index: int) -> dict:
        """Bench2Drive annotation of frame `index` (keys and conventions of Bench2Drive's docs/anno.md)."""
        t = self.time(index)
        pose = self.ego_pose(t)
        speed, acceleration, angular_velocity = self._ego_kinematics(t)
        near, far = self._commands[index]
        ego_matrix = pose.matrix()
        sensors = {}
        for camera in BENCH2DRIVE_CAMERAS:
            cam2ego = cam_to_ego(camera)
            cam2world = ego_matrix @ cam2ego
            sensors[camera.name] = {
                "location": cam2world[:3, 3].tolist(),
                "rotation": [camera.pitch, camera.roll, math.degrees(pose.yaw) + camera.yaw],
                "intrinsic": scaled_intrinsics(camera, self.size).tolist(),
                "world2cam": np.linalg.inv(cam2world).tolist(),
                "cam2ego": cam2ego.tolist(),
                "fov": camera.fov,
                "image_size_x": self.size[0],
                "image_size_y": self.size[1],
            }
        other = self.other_box(t)
        other_matrix = transform_matrix(other.x, other.y, 0.0, math.degrees(other.yaw))
        wheelbase = 2.9
        steer = float(np.clip(math.atan(wheelbase * angular_velocity[2] / max(speed, 0.1)) / math.radians(70.0), -1, 1))
        return {
            "x": pose.x,
            "y": pose.y,
            "theta": pose.yaw + math.pi / 2.0,
            "speed": speed,
            "throttle": 0.4,
            "steer": steer,
            "brake": 0.0,
            "reverse": False,
            "x_command_far": float(far[0]),
            "y_command_far": float(far[1]),
            "command_far": ROAD_OPTION_LANEFOLLOW,
            "x_command_near": float(near[0]),
            "y_command_near": float(near[1]),
            "command_near": ROAD_OPTION_LANEFOLLOW,
            "should_brake": 0,
            "only_ap_brake": False,
            "x_target": float(far[0]),
            "y_target": float(far[1]),
            "next_command": ROAD_OPTION_LANEFOLLOW,
            "weather": {"cloudiness": 10.0, "precipitation": 0.0, "sun_altitude_angle": 60.0},
            "acceleration": acceleration.tolist(),
            "angular_velocity": angular_velocity.tolist(),
            "sensors": sensors,
            "bounding_boxes": [
                {
                    "class": "ego_vehicle",
                    "id": "0",
                    "type_id": "vehicle.lincoln.mkz_2020",
                    "location": [pose.x, pose.y, 0.0],
                    "rotation": [0.0, 0.0, math.degrees(pose.yaw)],
                    "center": [pose.x, pose.y, CAR_EXTENT[2]],
                    "extent": list(CAR_EXTENT),
                    "speed": speed,
                    "world2ego": np.linalg.inv(ego_matrix).tolist(),
                },
                {
                    "class": "vehicle",
                    "state": "dynamic",
                    "id": "1",
                    "type_id": "vehicle.demo.box",
                    "location": [other.x, other.y, 0.0],
                    "rotation": [0.0, 0.0, math.degrees(other.yaw)],
                    "center": [other.x, other.y, CAR_EXTENT[2]],
                    "extent": list(CAR_EXTENT),
                    "speed": self.config.other_speed_mps,
                    "distance": float(math.hypot(other.x - pose.x, other.y - pose.y)),
                    "world2vehicle": np.linalg.inv(other_matrix).tolist(),
                },
            ],
        }

    def frames(self) -> Iterator[DemoFrame]:
        for index in range(self.config.num_frames):
            yield DemoFrame(index, self.render(index), self.annotation(index), self.camera_label(index))


@dataclass(frozen=True)
class DemoClip:
    clip_dir: Path
    camera_labels_path: Path
    scenario_type: str
    num_frames: int


def write_demo_clip(out_dir: str | Path, config: DemoSceneConfig = DemoSceneConfig(), progress: bool = True) -> DemoClip:
    """Render the scenario into `out_dir/<clip name>/` (Bench2Drive layout) and write its camera
    labels to `out_dir/camera_labels/<clip name>.json`."""
    from tqdm import tqdm

    from bench2drive_eval.jsonio import write_json_atomic
    from model.dataset.b2d_clip import write_frame

    scene = DemoScene(config)
    out = Path(out_dir)
    clip_dir = out / config.clip_name
    labels = {}
    for frame in tqdm(scene.frames(), total=config.num_frames, desc="demo clip", unit="frame", disable=not progress):
        write_frame(clip_dir, frame.index, frame.annotation, frame.images)
        labels[str(frame.index)] = frame.camera_label
    labels_path = out / "camera_labels" / f"{config.clip_name}.json"
    write_json_atomic(labels_path, labels, indent=4)
    return DemoClip(clip_dir, labels_path, config.scenario_type, config.num_frames)
