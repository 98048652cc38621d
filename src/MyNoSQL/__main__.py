"""``python -m MyNoSQL`` and the ``mynosql`` command (subcommands arrive with the operations work)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["demo"]:
        from .demo import main as demo

        return demo()
    print("usage: mynosql demo", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
