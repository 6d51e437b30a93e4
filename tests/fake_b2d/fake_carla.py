"""A stand-in for the CARLA server: listens on -carla-rpc-port until killed (FAKE_CARLA_IGNORE_TERM=1 ignores SIGTERM)."""
import json
import os
import signal
import socket
import sys
import time

port = next(int(a.split("=", 1)[1]) for a in sys.argv[1:] if a.startswith("-carla-rpc-port="))
if os.environ.get("FAKE_CARLA_IGNORE_TERM") == "1":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
server.bind(("localhost", port))
server.listen(8)
state = os.environ.get("FAKE_B2D_STATE", ".")
line = json.dumps({"event": "carla_start", "pid": os.getpid(), "port": port, "argv": sys.argv[1:], "time": time.time()})
fd = os.open(os.path.join(state, "events.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
os.write(fd, (line + "\n").encode())
os.close(fd)
while True:
    connection, _ = server.accept()
    connection.close()
