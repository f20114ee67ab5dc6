"""``python -m train``: the train stage's commands (registered in the ``cellcls.commands`` entry-point group)."""
import sys

from cellcls.cli import stage_main

sys.exit(stage_main("train"))
