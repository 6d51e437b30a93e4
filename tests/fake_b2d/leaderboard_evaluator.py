"""A stand-in for Bench2Drive's leaderboard_evaluator.py: same arguments, launch behaviour and checkpoint format.

It starts $CARLA_ROOT/CarlaUE4.sh in a session of its own (as upstream does), reads the route XML, resumes
like upstream's RouteIndexer, and writes the checkpoint (non-atomically, as upstream) after every route.
What happens on each route comes from the JSON file named by FAKE_B2D_PLAN: {"<route id>": [action of
attempt 1, action of attempt 2, ...]} (the last action repeats); actions:
  ok            drive the route (FAKE_B2D_ROUTE_SECONDS, default 0.2 s) and record a result
  agent_crash   record "Failed - Agent crashed" and go on, like upstream
  reject        record "Failed - Agent's sensors were invalid" and stop (exit -1), as upstream does
  sim_crash     record "Failed - Simulation crashed", kill every CARLA on the GPU with upstream's
                `ps -ef | grep -graphicsadapter=N | ... | xargs kill -9`, exit -1
  die           SIGKILL itself mid-route (no record; the CARLA server is left behind)
  orphan        start a stray child in its own session, then die like `die`
  busy          compute for FAKE_B2D_BUSY_SECONDS (default 5, wall clock) writing nothing (a slow but healthy route), then ok
  hang          stop making progress forever
  hang_ignore_term   the same, ignoring SIGTERM
FAKE_B2D_FAIL_STARTUP=1 makes it fail before any route (an agent that does not import).
Attempts are counted in FAKE_B2D_STATE/attempts_<route id>; events are appended to FAKE_B2D_STATE/events.log.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

RETRIED = ["Failed", "Failed - Simulation crashed", "Failed - Agent crashed"]
INFRACTIONS = [
    "collisions_layout", "collisions_pedestrian", "collisions_vehicle", "red_light", "stop_infraction",
    "outside_route_lanes", "min_speed_infractions", "yield_emergency_vehicle_infractions",
    "scenario_timeouts", "route_dev", "vehicle_blocked", "route_timeout",
]
STATE = os.environ.get("FAKE_B2D_STATE", ".")


def event(**fields):
    fields["time"] = time.time()
    fields["pid"] = os.getpid()
    line = (json.dumps(fields) + "\n").encode()
    fd = os.open(os.path.join(STATE, "events.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def next_action(route_id):
    plan = {}
    if os.environ.get("FAKE_B2D_PLAN"):
        with open(os.environ["FAKE_B2D_PLAN"]) as handle:
            plan = json.load(handle)
    counter = os.path.join(STATE, "attempts_" + route_id)
    attempt = int(open(counter).read()) if os.path.exists(counter) else 0
    with open(counter, "w") as handle:
        handle.write(str(attempt + 1))
    actions = plan.get(route_id, ["ok"])
    return actions[min(attempt, len(actions) - 1)], attempt + 1


def find_free_port(port):
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("localhost", port))
                return port
            except OSError:
                port += 1


def load_routes(path):
    routes = []
    for element in ET.parse(path).getroot().iter("route"):
        scenario = element.find("scenarios/scenario")
        points = [(float(p.get("x")), float(p.get("y"))) for p in element.iter("position")]
        length = sum(((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2) ** 0.5 for a, b in zip(points, points[1:]))
        routes.append({"id": element.get("id"), "town": element.get("town"),
                       "scenario": scenario.get("name") if scenario is not None else "", "length": round(length, 3)})
    return routes


def resume_index(path, routes):
    """Upstream's validate_and_resume: None when the checkpoint cannot be resumed."""
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None, None
    if not data or not data.get("entry_status") or data["entry_status"] == "Invalid":
        return None, None
    checkpoint = data.get("_checkpoint") or {}
    progress = checkpoint.get("progress")
    if not progress or progress[1] != len(routes):
        return None, None
    records = checkpoint.get("records", [])
    index = progress[0]
    check = 0
    while check < index:
        if check >= len(records):
            index = max(check - 1, 0)
            break
        if records[check]["route_id"] != "RouteScenario_%s_rep0" % routes[check]["id"]:
            return None, None
        if records[check]["status"] in RETRIED:
            index = check
            break
        check += 1
    if data["entry_status"] == "Crashed":
        index = max(0, index - 1)
    return index, data


def save(path, results):
    with open(path, "w") as handle:  # not atomic, like upstream's save_dict
        json.dump(results, handle, indent=4)


def record(route, index, status, score):
    return {
        "index": index, "route_id": "RouteScenario_%s_rep0" % route["id"], "scenario_name": route["scenario"],
        "weather_id": "1", "save_name": "RouteScenario_%s_rep0_%s" % (route["id"], route["town"]),
        "town_name": route["town"], "status": status, "num_infractions": 0,
        "infractions": {key: [] for key in INFRACTIONS},
        "scores": {"score_route": score, "score_penalty": 1.0, "score_composed": score},
        "meta": {"route_length": route["length"], "duration_game": 10.0, "duration_system": 20.0},
    }


def kill_carla_on_gpu(gpu_rank):
    command = "ps -ef | grep -- '-graphicsadapter=%d' | grep -v grep | awk '{print $2}' | xargs -r kill -9" % gpu_rank
    subprocess.run(command, shell=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", default=2000, type=int)
    parser.add_argument("--traffic-manager-port", default=8000, type=int)
    parser.add_argument("--traffic-manager-seed", default=0, type=int)
    parser.add_argument("--debug", type=int, default=0)
    parser.add_argument("--record", type=str, default="")
    parser.add_argument("--timeout", default=600.0, type=float)
    parser.add_argument("--routes", required=True)
    parser.add_argument("--routes-subset", default="", type=str)
    parser.add_argument("--repetitions", type=int, default=1)
    parser.add_argument("-a", "--agent", type=str, required=True)
    parser.add_argument("--agent-config", type=str, default="")
    parser.add_argument("--track", type=str, default="SENSORS")
    parser.add_argument("--resume", type=bool, default=False)
    parser.add_argument("--checkpoint", type=str, default="./simulation_results.json")
    parser.add_argument("--debug-checkpoint", type=str, default="./live_results.txt")
    parser.add_argument("--gpu-rank", type=int, default=0)
    args = parser.parse_args()

    assert os.path.exists("leaderboard/data/weather.xml"), "must run from the Bench2Drive root"
    if os.environ.get("FAKE_B2D_FAIL_STARTUP") == "1":
        sys.stderr.write("ModuleNotFoundError: No module named 'team_code'\n")
        sys.exit(1)
    port = find_free_port(args.port)
    server = subprocess.Popen(
        "%s -RenderOffScreen -nosound -carla-rpc-port=%d -graphicsadapter=%d"
        % (os.path.join(os.environ["CARLA_ROOT"], "CarlaUE4.sh"), port, args.gpu_rank),
        shell=True, preexec_fn=os.setsid,
    )
    event(event="evaluator_start", checkpoint=args.checkpoint, resume=args.resume, carla=server.pid,
          port=port, gpu=args.gpu_rank, cuda=os.environ.get("CUDA_VISIBLE_DEVICES"), save_path=os.environ.get("SAVE_PATH"),
          pythonpath=os.environ.get("PYTHONPATH", ""), carla_root=os.environ.get("CARLA_ROOT"), cwd=os.getcwd(),
          argv=sys.argv[1:])
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex(("localhost", port)) == 0:
                break
        time.sleep(0.02)

    routes = load_routes(args.routes)
    results = {"_checkpoint": {"global_record": {}, "progress": [0, len(routes)], "records": []},
               "entry_status": "Started", "eligible": False, "sensors": [], "values": [], "labels": []}
    start = 0
    if args.resume:
        index, data = resume_index(args.checkpoint, routes)
        if index is not None:
            start, results = index, data
    results["_checkpoint"]["progress"] = [start, len(routes)]
    save(args.checkpoint, results)
    records = results["_checkpoint"]["records"]
    seconds = float(os.environ.get("FAKE_B2D_ROUTE_SECONDS", "0.2"))

    for index in range(start, len(routes)):
        route = routes[index]
        action, attempt = next_action(route["id"])
        event(event="route_start", route=route["id"], action=action, attempt=attempt, checkpoint=args.checkpoint)
        print("========= Preparing RouteScenario_%s (repetition 0) =========" % route["id"], flush=True)
        if action in ("die", "orphan"):
            if action == "orphan":
                stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"], preexec_fn=os.setsid)
                event(event="orphan", child=stray.pid)
            os.kill(os.getpid(), signal.SIGKILL)
        if action in ("hang", "hang_ignore_term"):
            if action == "hang_ignore_term":
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            while True:
                time.sleep(1)
        if action == "busy":
            until = time.time() + float(os.environ.get("FAKE_B2D_BUSY_SECONDS", "5"))
            while time.time() < until:
                pass
        time.sleep(seconds)
        with open(args.debug_checkpoint, "w") as live:
            live.write("Route id: RouteScenario_%s_rep0\n" % route["id"])
        carla_dead = server.poll() is not None
        if action == "sim_crash" or carla_dead:
            new = record(route, index, "Failed - Simulation crashed", 0.0)
            results["entry_status"] = "Crashed"
        elif action == "reject":
            new = record(route, index, "Failed - Agent's sensors were invalid", 0.0)
            results["entry_status"] = "Rejected"
        elif action == "agent_crash":
            new = record(route, index, "Failed - Agent crashed", 5.0)
        else:
            score = float(int(route["id"]) % 90 + 10) if route["id"].isdigit() else 50.0
            new = record(route, index, "Completed" if score < 100 else "Perfect", score)
        if index < len(records):
            records[index] = new
        else:
            records.append(new)
        results["_checkpoint"]["progress"] = [index + 1, len(routes)]
        save(args.checkpoint, results)
        event(event="route_end", route=route["id"], status=new["status"], checkpoint=args.checkpoint, carla_dead=carla_dead)
        if new["status"] in ("Failed - Simulation crashed", "Failed - Agent's sensors were invalid"):
            kill_carla_on_gpu(args.gpu_rank)
            sys.exit(-1)

    results["entry_status"] = "Finished"
    results["eligible"] = True
    save(args.checkpoint, results)
    os.killpg(server.pid, signal.SIGKILL)
    event(event="evaluator_end", checkpoint=args.checkpoint)


if __name__ == "__main__":
    main()
