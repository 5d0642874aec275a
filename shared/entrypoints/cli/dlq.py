"""``dlq list|replay``: the dead-lettered change events."""
from __future__ import annotations

import argparse
from typing import Any

from shared.entrypoints.cli.common import EXIT_OK, Parser, container, dead_letters, positive_int
from shared.entrypoints.cli.output import print_json


def register(commands: Any, flags: argparse.ArgumentParser) -> None:
    dlq = commands.add_parser("dlq", help="list or replay the dead-lettered change events")
    dlq_cmds = dlq.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=Parser)
    ls = dlq_cmds.add_parser(parents=[flags], name="list", help="peek at the dead letters of the changes and parking queues")
    ls.add_argument("--max", type=positive_int, default=50, help="at most this many (default 50)")
    ls.set_defaults(handler=cmd_dlq_list, tsv_rows="dead_letters")
    rp = dlq_cmds.add_parser(parents=[flags], name="replay", help="resubmit dead letters to the changes queue (after a fix)")
    rp.add_argument("--max", type=positive_int, default=100, help="at most this many (default 100)")
    rp.add_argument("--dry-run", action="store_true", help="list what would be replayed; move nothing")
    rp.set_defaults(handler=cmd_dlq_replay)


def cmd_dlq_list(args: argparse.Namespace) -> int:
    port = dead_letters(container())
    items = port.list(args.max)
    if args.json:
        print_json({"queues": list(port.queues), "dead_letters": [d.to_dict() for d in items]})
        return EXIT_OK
    if not items:
        print(f"no dead letters in {' or '.join(port.queues)}")
    for d in items:
        print(f"{d.enqueued_time or '-'}  {d.queue}  {d.message_id}  {d.kind or 'not a change event'}  "
              f"{d.reason or '-'}" + (f": {d.description}" if d.description else ""))
    return EXIT_OK



def cmd_dlq_replay(args: argparse.Namespace) -> int:
    c = container()
    port = dead_letters(c)
    if args.dry_run:
        # The selection replay makes: queue by queue, oldest first, up to --max change events;
        # what is not a change event is left in place and does not count.
        items, would = [], []
        for d in port.list(args.max + 1000):
            if len(would) >= args.max:
                break
            items.append(d)
            if d.kind:
                would.append(d)
        if args.json:
            print_json({"dry_run": True, "to": c.settings.changes_queue, "would_replay": [d.to_dict() for d in would],
                         "would_skip": len(items) - len(would)})
            return EXIT_OK
        print(f"dry run: would replay {len(would)} message(s) to {c.settings.changes_queue}"
              + (f"; {len(items) - len(would)} left in place (not change events)" if len(items) > len(would) else ""))
        for d in would:
            print(f"  {d.queue}  {d.message_id}  {d.kind}  {d.reason or '-'}")
        return EXIT_OK
    report = port.replay(args.max)
    if args.json:
        print_json({**report.to_dict(), "to": c.settings.changes_queue})
        return EXIT_OK
    print(f"replayed {report.replayed} message(s) to {c.settings.changes_queue}"
          + (f"; {report.skipped} left in place (not change events)" if report.skipped else ""))
    for m in report.messages:
        print(f"  {m.queue}  {m.message_id} -> {m.new_message_id}  {m.kind}")
    return EXIT_OK

