"""``python -m streams.widget ...``: the same as ``trail widget ...``."""

import argparse

from streams.widget.cli import add_arguments, run

_parser = argparse.ArgumentParser(prog="trail widget")
add_arguments(_parser)
raise SystemExit(run(_parser.parse_args()))
