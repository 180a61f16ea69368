"""regbench: what regularization costs and what it buys, measured truthfully."""

__version__ = "0.1.0"
SCHEMA_VERSION = 1
