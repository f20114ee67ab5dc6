"""``python -m segment``: the ``cellcls segment`` command as a standalone program."""
import sys

from cellcls.cli import run_command
from segment.command import SEGMENT

if __name__ == "__main__":
    sys.exit(run_command(SEGMENT, prog="python -m segment"))
