"""The command line's output conventions, after the Azure CLI's: ``--output json|table|tsv``.

- ``table`` (the default) is what a person reads: each command's own lines and columns.
- ``json`` is the stable document scripts parse (``--json`` is the same).
- ``tsv`` is tab-separated values without keys, for ``cut``/``while read``: a command's list
  (its rows) one line each, or the document's top-level scalars on one line; nested objects
  are left out; ``None`` is empty; true/false are lower case.

Also the program's name as the user invoked it (``straddle`` or ``python -m shared``) and its
version, so messages and ``--help`` show the command that works for them, and ``print_json``, the
one way a command writes its machine-readable document.
"""
from __future__ import annotations

import json
import sys
from typing import Any

FORMATS = ("table", "json", "tsv")
#: This invocation's program name, output format and tsv rows (set by main; one command per process).
_OUTPUT: dict[str, Any] = {}


def begin(prog: str) -> None:
    """A new invocation: the program as it was invoked, the format still the default."""
    _OUTPUT.clear()
    _OUTPUT["prog"] = prog


def choose(fmt: str, rows: str | None) -> None:
    """The format the command's flags asked for, and the list tsv writes one line per item of."""
    _OUTPUT.update(format=fmt, rows=rows)


def program() -> str:
    """The program as the user invoked it (``straddle`` or ``python -m shared``), for messages."""
    return _OUTPUT.get("prog") or "straddle"


def print_json(data: Any) -> None:
    """Machine-readable output: JSON, or with ``--output tsv`` tab-separated values (Azure CLI style)."""
    if _OUTPUT.get("format") == "tsv":
        sys.stdout.write(tsv(data, _OUTPUT.get("rows")))
        return
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return " ".join(str(value).split())  # a tab or newline inside a value would break the line


def _line(item: Any) -> str | None:
    if isinstance(item, dict):
        cells = [_cell(v) for v in item.values() if not isinstance(v, (dict, list))]
        return "\t".join(cells)
    if isinstance(item, list):
        return "\t".join(_cell(v) for v in item if not isinstance(v, (dict, list)))
    return _cell(item)


def tsv(data: Any, rows: str | None = None) -> str:
    """``data`` as tab-separated lines: ``data[rows]`` one line per item when ``rows`` names the
    command's list, a list one line per item, else one line of the top-level scalars."""
    if rows is not None and isinstance(data, dict) and isinstance(data.get(rows), list):
        data = data[rows]
    items = data if isinstance(data, list) else [data]
    lines = [_line(i) for i in items]
    return "".join(f"{line}\n" for line in lines if line is not None)


def prog_name() -> str:
    """``python -m shared`` when run as the module, else ``straddle`` (the installed script)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return "python -m shared" if spec is not None and spec.name in ("shared", "shared.__main__") else "straddle"


def version() -> str:
    """The installed package's version, else the checkout's pyproject.toml."""
    from importlib import metadata

    try:
        return metadata.version("straddle")
    except metadata.PackageNotFoundError:
        pass
    import tomllib
    from pathlib import Path

    try:
        with open(Path(__file__).resolve().parents[3] / "pyproject.toml", "rb") as f:
            return str(tomllib.load(f)["project"]["version"])
    except (OSError, KeyError, ValueError):
        return "unknown"


#: Examples shown at the end of each command's --help ({prog} is the name the user typed).
EXAMPLES: dict[str, tuple[str, ...]] = {
    "": ("{prog} doctor", "{prog} runs", "{prog} activity --since 24h", '{prog} explain "$EMAIL"',
         "{prog} --output json reconcile --dry-run"),
    "mappings import": ("{prog} mappings import mappings.json --dry-run", "{prog} mappings import mappings.json"),
    "mappings export": ("{prog} mappings export mappings.json", "{prog} mappings export > mappings.json"),
    "mappings discover": ("{prog} mappings discover --out mappings.json",
                          "{prog} mappings discover --mode single-brand --threshold 0.9"),
    "webhooks register": ("{prog} webhooks register --url https://APP.azurewebsites.net/api/dataverse/webhook "
                          "--function-key KEY",),
    "webhooks status": ("{prog} webhooks status", "{prog} webhooks status --output tsv | grep -v registered"),
    "webhooks remove": ("{prog} webhooks remove", "{prog} webhooks remove --url https://APP.azurewebsites.net/api/dataverse/webhook"),
    "explain": ('{prog} explain "$EMAIL"', '{prog} explain "$EMAIL" --json'),
    "dlq list": ("{prog} dlq list", "{prog} dlq list --max 10 --output tsv"),
    "dlq replay": ("{prog} dlq replay --max 10",),
    "doctor": ("{prog} doctor", "{prog} doctor --url https://APP.azurewebsites.net/api/dataverse/webhook --json"),
    "reconcile": ("{prog} reconcile --dry-run", "{prog} reconcile --dry-run --changes changes.csv",
                  "{prog} reconcile --dry-run --changes changes.json --show-addresses", "{prog} reconcile"),
    "runs": ("{prog} runs", "{prog} runs --max 30 --output tsv", "{prog} runs show latest"),
    "runs list": ("{prog} runs list --max 30",),
    "runs show": ("{prog} runs show latest", "{prog} runs show 20260131T020000-1a2b3c --json"),
    "compliance": ("{prog} compliance", "{prog} compliance --since 7d --output json",
                   "{prog} compliance export --since 90d --to opt-outs.csv"),
    "compliance export": ("{prog} compliance export --since 30d --to opt-outs.csv",
                          "{prog} compliance export --since 2026-01-01 --to q1-opt-outs.csv"),
    "activity": ("{prog} activity", "{prog} activity --since 7d", "{prog} activity --since 2026-01-31T08:00 --json"),
}


def examples_epilog(command: str, prog: str) -> str | None:
    found = EXAMPLES.get(command)
    if not found:
        return None
    return "examples:\n" + "\n".join("  " + e.format(prog=prog) for e in found)
