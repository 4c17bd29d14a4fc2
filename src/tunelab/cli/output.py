"""The terminal consoles every sub-command prints through.

Soft wrap keeps long lines (paths, error messages) whole, so they can be copied and grepped.
"""

from rich.console import Console

console = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)
