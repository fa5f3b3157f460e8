"""The ``easel`` console script's entry point.

The command line is imported and run inside one guard, so a Ctrl+C at any moment ends with one line and
status 130: in the first second, while the import loads numpy and Pillow and argparse reads its
translations, it printed a traceback of the import machinery. (Commands that can be interrupted mid-way
say what became of their work themselves.)
"""

import sys


def main() -> int:
    try:
        from backend.cli import main as run

        return run()
    except KeyboardInterrupt:
        print("\neasel: interrupted", file=sys.stderr)
        return 130
