"""Command lines that refuse bad input with one line: argparse's complaints
become ``UsageError`` (exit status 2) instead of argparse's own exit."""

from __future__ import annotations

import argparse
from typing import NoReturn


class UsageError(Exception):
    """Bad input: the message names the option or key and the value. One
    line on stderr, exit status 2, nothing started."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def parser(prog: str, usage: str, description: str, epilog: str) -> argparse.ArgumentParser:
    """With ``-h`` left for the caller to add, and the epilog kept as written."""
    return _Parser(prog=prog, usage=usage, description=description, epilog=epilog,
                   formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
