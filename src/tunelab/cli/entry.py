"""The console script's entry point: a Ctrl-C while the commands' libraries are still being
imported (torch, transformers: a few seconds) ends as quietly as one during a command."""

import sys


def main() -> None:
    try:
        from tunelab.cli.main import main as run
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        raise SystemExit(130) from None
    run()
