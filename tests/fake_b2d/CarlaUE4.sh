#!/bin/sh
# Stand-in for CARLA 0.9.15 CarlaUE4.sh: the fake server keeps these arguments on its command line.
exec "${FAKE_B2D_PYTHON:-python3}" "$(dirname "$0")/fake_carla.py" "$@"
