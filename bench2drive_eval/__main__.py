import sys

from bench2drive_eval.cli import main

sys.exit(main())
