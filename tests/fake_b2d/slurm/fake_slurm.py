"""A small stand-in for SLURM's sbatch/squeue/sacct/scancel, for job arrays only, keeping state in $FAKE_SLURM_DIR.

sbatch --array=SPEC[%N] starts a detached controller that runs each task's batch script with
SLURM_ARRAY_JOB_ID / SLURM_ARRAY_TASK_ID / SLURM_JOB_ID / CUDA_VISIBLE_DEVICES set, at most N at a time,
stdout+stderr into --output (%A, %a expanded). squeue lists pending/running tasks (and fails with
"Invalid job id specified" for unknown jobs), sacct prints final states, scancel sends SIGTERM and,
2 s later, SIGKILL. FAKE_SLURM_NODE_FAIL="<index>,..." kills those tasks' processes (as a cgroup would)
0.8 s after their first start and records NODE_FAIL.
"""
import json
import os
import signal
import subprocess
import sys
import time

STATE = os.environ.get("FAKE_SLURM_DIR", "/tmp/fake_slurm")
ACTIVE = ("PENDING", "RUNNING")


def _write(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(data, handle)
    os.replace(tmp, path)


def _read(path):
    with open(path) as handle:
        return json.load(handle)


def _log(entry):
    os.makedirs(STATE, exist_ok=True)
    with open(os.path.join(STATE, "calls.log"), "a") as handle:
        handle.write(json.dumps(entry) + "\n")


def parse_array(spec):
    throttle = 0
    if "%" in spec:
        spec, limit = spec.split("%")
        throttle = int(limit)
    indices = []
    for part in spec.split(","):
        if "-" in part:
            a, b = part.split("-")
            indices.extend(range(int(a), int(b) + 1))
        else:
            indices.append(int(part))
    return indices, throttle


def task_processes(marker):
    needle = ("FAKE_SLURM_TASK=" + marker).encode()
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/environ" % name, "rb") as handle:
                    if needle in handle.read().split(b"\0"):
                        found.append(int(name))
            except OSError:
                pass
    return found


def sbatch(argv):
    options, rest = {}, []
    for i, arg in enumerate(argv):
        if arg.startswith("--") and not rest:
            key, _, value = arg[2:].partition("=")
            options[key] = value
        else:
            rest = argv[i:]
            break
    os.makedirs(STATE, exist_ok=True)
    counter = os.path.join(STATE, "next_id")
    job_id = int(open(counter).read()) if os.path.exists(counter) else 1000
    with open(counter, "w") as handle:
        handle.write(str(job_id + 1))
    job_dir = os.path.join(STATE, str(job_id))
    os.makedirs(job_dir)
    indices, throttle = parse_array(options["array"])
    for index in indices:
        _write(os.path.join(job_dir, "task_%d.json" % index), {"state": "PENDING", "exit": 0})
    _write(os.path.join(job_dir, "meta.json"), {"options": options, "script": rest, "indices": indices, "throttle": throttle})
    _log({"tool": "sbatch", "argv": argv, "job_id": job_id})
    subprocess.Popen([sys.executable, os.path.abspath(__file__), "controller", str(job_id)], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(job_id)
    return 0


def controller(job_id):
    job_dir = os.path.join(STATE, job_id)
    meta = _read(os.path.join(job_dir, "meta.json"))
    node_fail = {int(i) for i in os.environ.get("FAKE_SLURM_NODE_FAIL", "").split(",") if i.strip()}
    failed_once = os.path.join(STATE, "node_failed")
    pending = list(meta["indices"])
    running = {}
    cancelled_at = None
    while pending or running:
        cancelled = os.path.exists(os.path.join(job_dir, "cancelled"))
        if cancelled and cancelled_at is None:
            cancelled_at = time.time()
            for index in pending:
                _write(os.path.join(job_dir, "task_%d.json" % index), {"state": "CANCELLED", "exit": 0})
            pending = []
        while pending and (meta["throttle"] == 0 or len(running) < meta["throttle"]):
            index = pending.pop(0)
            marker = "%s_%d" % (job_id, index)
            env = dict(os.environ, SLURM_ARRAY_JOB_ID=job_id, SLURM_ARRAY_TASK_ID=str(index), SLURM_JOB_ID=marker,
                       CUDA_VISIBLE_DEVICES=str(index % 2), FAKE_SLURM_TASK=marker)
            output = meta["options"].get("output", "slurm-%A_%a.out").replace("%A", job_id).replace("%a", str(index))
            with open(output, "ab") as log:
                proc = subprocess.Popen(["bash"] + meta["script"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
            running[index] = (proc, time.time(), marker)
            _write(os.path.join(job_dir, "task_%d.json" % index), {"state": "RUNNING", "exit": 0, "pid": proc.pid})
        for index, (proc, started, marker) in list(running.items()):
            if index in node_fail and not os.path.exists(failed_once) and time.time() - started > 0.8:
                open(failed_once, "w").close()
                for pid in task_processes(marker):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                proc.wait()
                _write(os.path.join(job_dir, "task_%d.json" % index), {"state": "NODE_FAIL", "exit": 1})
                del running[index]
                continue
            if cancelled_at is not None and time.time() - cancelled_at > 2.0:
                for pid in task_processes(marker):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
            code = proc.poll()
            if code is not None:
                state = "CANCELLED" if cancelled else ("COMPLETED" if code == 0 else "FAILED")
                _write(os.path.join(job_dir, "task_%d.json" % index), {"state": state, "exit": code})
                del running[index]
        time.sleep(0.05)


def tasks(job_id):
    job_dir = os.path.join(STATE, job_id)
    if not os.path.isdir(job_dir):
        return None
    meta = _read(os.path.join(job_dir, "meta.json"))
    return [(i, _read(os.path.join(job_dir, "task_%d.json" % i))) for i in meta["indices"]]


def _option(argv, flag):
    return argv[argv.index(flag) + 1] if flag in argv else None


def squeue(argv):
    job_id = _option(argv, "-j")
    found = tasks(job_id)
    if found is None:
        sys.stderr.write("slurm_load_jobs error: Invalid job id specified\n")
        return 1
    for index, task in found:
        if task["state"] in ACTIVE:
            print("%s_%d %s" % (job_id, index, task["state"]))
    return 0


def sacct(argv):
    job_id = _option(argv, "-j")
    for index, task in tasks(job_id) or []:
        print("%s_%d|%s|%d:0" % (job_id, index, task["state"], task["exit"]))
    return 0


def scancel(argv):
    job_id = argv[-1]
    _log({"tool": "scancel", "argv": argv})
    found = tasks(job_id)
    if found is None:
        sys.stderr.write("scancel: error: Invalid job id %s\n" % job_id)
        return 1
    open(os.path.join(STATE, job_id, "cancelled"), "w").close()
    for index, task in found:
        if task["state"] == "RUNNING":
            try:
                os.killpg(task["pid"], signal.SIGTERM)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "controller":
        controller(sys.argv[2])
    else:
        sys.exit({"sbatch": sbatch, "squeue": squeue, "sacct": sacct, "scancel": scancel}[sys.argv[1]](sys.argv[2:]))
