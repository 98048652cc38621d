"""Write docs/api.md from the docstrings of the public API (``--check``: fail if it is out of date)."""

from __future__ import annotations

import dataclasses
import inspect
import sys
from pathlib import Path

import MyNoSQL
from MyNoSQL import aio, cli, errors

OUT = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def members(cls: type) -> list[str]:
    out = []
    for name, obj in cls.__dict__.items():
        if name.startswith("_") and name not in ("__iter__", "__len__", "__contains__", "__enter__", "__exit__",
                                                 "__aenter__", "__aexit__"):
            continue
        if isinstance(obj, property):
            doc = inspect.getdoc(obj) or ""
            out.append(f"#### `{cls.__name__}.{name}` (property)\n\n{doc}\n")
        elif inspect.isfunction(obj):
            sig = str(inspect.signature(obj)).replace("'", "")
            doc = inspect.getdoc(obj) or ""
            awaited = "await " if inspect.iscoroutinefunction(obj) else ""
            out.append(f"#### `{awaited}{cls.__name__}.{name}{sig}`\n\n{doc}\n")
    return out


def render() -> str:
    parts = [
        "# API reference",
        "",
        "Generated from the docstrings by `scripts/apidoc.py` (the test suite fails when it is out of date).",
        "Examples that run: [tutorial](tutorial.md), [operations](operations.md).",
        "",
        "## `MyNoSQL.MyNoSQL`",
        "",
        inspect.getdoc(MyNoSQL.MyNoSQL) or "",
        "",
        *members(MyNoSQL.MyNoSQL),
        "## `MyNoSQL.Database`",
        "",
        inspect.getdoc(MyNoSQL.Database) or "",
        "",
        *members(MyNoSQL.Database),
        "## `MyNoSQL.Node`",
        "",
        inspect.getdoc(MyNoSQL.Node) or "",
        "",
        "What a `Node` adds to `Database` (what `opendb` returns is a `Node`):",
        "",
        *members(MyNoSQL.Node),
        "## `MyNoSQL.aio.AsyncMyNoSQL`",
        "",
        inspect.getdoc(aio.AsyncMyNoSQL) or "",
        "",
        "### How it runs (`MyNoSQL.aio`)",
        "",
        (inspect.getdoc(aio) or "").split("\n\n", 1)[1].split("\n\n", 1)[1],
        "",
        *members(aio.AsyncMyNoSQL),
        "## `MyNoSQL.Change`",
        "",
        inspect.getdoc(MyNoSQL.Change) or "",
        "",
        "Fields: " + ", ".join(f"`{f}`" for f in MyNoSQL.Change._fields),
        "",
    ]
    for cls in (MyNoSQL.Options, MyNoSQL.Limits):
        parts += [f"## `MyNoSQL.{cls.__name__}`", "", inspect.getdoc(cls) or "", "", "| field | default |", "|---|---|"]
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f"{f.default_factory.__name__}()"  # type: ignore[union-attr]
            parts.append(f"| `{f.name}` | `{default!r}` |")
        parts.append("")
    parts += ["## Errors", "", "```", (inspect.getdoc(errors) or "").strip(), "```", ""]
    for name in sorted(n for n in MyNoSQL.__all__ if isinstance(getattr(MyNoSQL, n), type)
                       and issubclass(getattr(MyNoSQL, n), Exception)):
        parts += [f"- `{name}`: {inspect.getdoc(getattr(MyNoSQL, name)) or ''}".replace("\n", " ")]
    parts += ["", "## The `mynosql` command", "", inspect.getdoc(cli) or "", "", "```"]
    for name, cmd in sorted(cli.cli.commands.items()):
        parts.append(f"mynosql {name:<10} {(cmd.help or '').splitlines()[0]}")
    parts += ["```", ""]
    return "\n".join(parts)


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python scripts/apidoc.py")
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
