"""The core's own subcommands. Each module keeps its imports light; work is imported in ``run``."""
