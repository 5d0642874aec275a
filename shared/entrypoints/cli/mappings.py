"""``mappings import|export|discover``: the list-to-topic mappings in and out of storage."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.entrypoints.cli.common import (EXIT_FAILED, EXIT_OK, CommandError, Parser, container, ratio,
                                           stored_mappings)
from shared.entrypoints.cli.output import print_json, program


def register(commands: Any, flags: argparse.ArgumentParser) -> None:
    from shared.service_layer.discovery import DEFAULT_THRESHOLD

    mappings = commands.add_parser("mappings", help="import, export or discover the list-to-topic mappings")
    mappings_cmds = mappings.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=Parser)
    imp = mappings_cmds.add_parser(parents=[flags], name="import", help="validate a mappings file against Dataverse and store it")
    imp.add_argument("file", help="mappings JSON file (see docs/mappings.md)")
    imp.add_argument("--dry-run", action="store_true", help="validate and resolve only; store nothing")
    imp.set_defaults(handler=cmd_mappings_import)
    exp = mappings_cmds.add_parser(parents=[flags], name="export", help="write the stored mappings as a file")
    exp.add_argument("file", nargs="?", help="where to write (default: standard output)")
    exp.set_defaults(handler=cmd_mappings_export)
    disc = mappings_cmds.add_parser(parents=[flags], name="discover", help="propose list-to-topic pairs from Dataverse names and write a mappings file to review",
        description="Pairs subscription lists with topics of the same or a similar name (including the topics "
                    "Microsoft's subscription-list migration creates), one brand per purpose of the matched topics.")
    disc.add_argument("--out", metavar="FILE", help="where to write the proposal (default: standard output)")
    disc.add_argument("--mode", choices=("single-brand", "multi-brand"),
                      help="default: multi-brand when the matched topics span several purposes")
    disc.add_argument("--threshold", type=ratio, default=DEFAULT_THRESHOLD,
                      help=f"lowest name similarity (difflib ratio) that pairs a list and a topic (default {DEFAULT_THRESHOLD})")
    disc.set_defaults(handler=cmd_mappings_discover)


def cmd_mappings_import(args: argparse.Namespace) -> int:
    from shared.service_layer.mappings import import_mappings, mappings_changes, summary

    try:
        doc = json.loads(Path(args.file).read_text())
    except OSError as exc:
        raise CommandError(f"cannot read {args.file}: {exc.strerror}") from None
    except ValueError as exc:
        raise CommandError(f"{args.file} is not valid JSON: {exc}") from None
    c = container()
    before = stored_mappings(c)
    store = None if args.dry_run else c.tables().mappings
    mappings = import_mappings(doc, c.dataverse(), store)
    changes = mappings_changes(before, mappings)
    if args.json:
        print_json({"imported": not args.dry_run, "mappings": mappings.to_dict(), "changes": changes})
    else:
        print(("checked (dry run): " if args.dry_run else "imported: ") + summary(mappings))
        _print_changes(changes, "against the stored mappings" + (" (nothing stored)" if args.dry_run else ""),
                       "same as the stored mappings")
    return EXIT_OK



def _print_changes(changes: Sequence[str], heading: str, nothing: str) -> None:
    if not changes:
        print(f"  {nothing}")
        return
    print(f"  changes {heading}:")
    for line in changes:
        print(f"    {line}")



def cmd_mappings_export(args: argparse.Namespace) -> int:
    from shared.service_layer.mappings import export_mappings

    doc = export_mappings(container().tables().mappings)
    if doc is None:
        raise CommandError(f"no mappings imported yet ({program()} mappings import FILE)")
    text = json.dumps(doc, indent=2) + "\n"
    if args.file:
        Path(args.file).write_text(text)
        print(f"wrote {args.file}")
    else:
        sys.stdout.write(text)
    return EXIT_OK



def cmd_mappings_discover(args: argparse.Namespace) -> int:
    from shared.service_layer.discovery import discover_mappings
    from shared.domain.mappings import parse_mappings_file, resolve_mappings

    if args.out and Path(args.out).is_dir():
        raise CommandError(f"{args.out} is a folder; give a file name")
    client = container().dataverse()
    lists, topics, purposes = client.marketing_lists(), client.topics(), client.purposes()
    found = discover_mappings(lists, topics, purposes, mode=args.mode, threshold=args.threshold)
    doc = found["mappings"]
    if doc is not None:
        # The proposal must import as written: check it the way `mappings import` will.
        resolve_mappings(parse_mappings_file(doc), lists, topics, purposes)
    text = json.dumps(doc, indent=2) + "\n" if doc is not None else None
    if text is not None and args.out:
        try:
            Path(args.out).write_text(text)
        except OSError as exc:
            raise CommandError(f"cannot write {args.out}: {exc.strerror}") from None
    if args.json:
        print_json({**found, "written": args.out if (doc is not None and args.out) else None})
    else:
        # Without --out the file goes to standard output, so the report goes to standard error.
        report = sys.stdout if args.out else sys.stderr
        brands = len(doc["brands"]) if doc else 0
        print(f"matched {len(found['matched'])} list(s) to topics in {brands} brand(s) ({found['mode']}, "
              f"threshold {found['threshold']}):", file=report)
        for m in found["matched"]:
            print(f"  [{m['brand']}] {m['list']!r} -> {m['topic']!r}  {m['why']}", file=report)
        for o in found["opt_out_lists"]:
            print(f"  [{o['brand']}] opt-out list {o['list']!r}", file=report)
        for label, key in (("lists", "unmatched_lists"), ("topics", "unmatched_topics"),
                           ("opt-out-like lists", "unused_opt_out_lists")):
            if found[key]:
                print(f"unmatched {label}: " + ", ".join(repr(n) for n in found[key]), file=report)
        if doc is None:
            print("nothing matched: no mappings file written (lower --threshold, or write it by hand: "
                  "docs/mappings.md)", file=report)
        elif args.out:
            print(f"wrote {args.out}: review it, then: {program()} mappings import {args.out}", file=report)
        else:
            sys.stdout.write(text)
    return EXIT_OK if doc is not None else EXIT_FAILED

