"""``reconcile`` (find, and unless --dry-run heal, every drift; the dry run's review file) and
``runs [list|show RUN]`` (the stored reports of past runs)."""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shared.entrypoints.cli.common import (EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK, CommandError, Parser, container,
                                           positive_int, stored_mappings)
from shared.entrypoints.cli.output import print_json, program


def register(commands: Any, flags: argparse.ArgumentParser) -> None:
    rec = commands.add_parser(parents=[flags], name="reconcile",
                              help="find (and unless --dry-run heal) every drift between the two systems")
    rec.add_argument("--dry-run", action="store_true", help="report what it would fix; write nothing")
    add_review_arguments(rec)
    rec.set_defaults(handler=cmd_reconcile)
    runs = commands.add_parser(parents=[flags], name="runs", help="recent reconciliation runs, one line each; "
                               "'runs show RUN' for one")
    runs.add_argument("--max", type=positive_int, default=10, help="at most this many runs, newest first (default 10)")
    runs.set_defaults(handler=cmd_runs, tsv_rows="runs")
    runs_cmds = runs.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
    ls = runs_cmds.add_parser(parents=[flags], name="list", help="recent runs, one line each (the default)")
    ls.add_argument("--max", type=positive_int, default=10, help="at most this many runs, newest first (default 10)")
    ls.set_defaults(handler=cmd_runs, tsv_rows="runs")
    show = runs_cmds.add_parser(parents=[flags], name="show", help="one run's report and the changes it could not make")
    show.add_argument("run", help="the run id (from 'runs'), or 'latest'")
    show.set_defaults(handler=cmd_runs_show, tsv_rows="unhealed")


def cmd_reconcile(args: argparse.Namespace) -> int:
    from shared.service_layer.reconcile import run_reconciliation
    from shared.service_layer.runs import report_lines, with_mismatches

    c = container()
    review = open_review(args, c)
    progress = _progress_line() if sys.stderr.isatty() and not args.json else None
    try:
        report = run_reconciliation(c, dry_run=args.dry_run, progress=progress,
                                    cases=review.case if review else None)
    except BaseException:
        if review:
            review.close(complete=False)
        raise
    if review:
        review.close(complete=True)
    if progress:
        print(file=sys.stderr)
    if review:
        report = {**report, "changes_file": review.path, "changes_written": review.count}
    if args.json:
        print_json(with_mismatches(report))
    else:
        print("\n".join(report_lines(report, program())))
        if review:
            print(f"wrote {review.count} proposed change(s) to {review.path} "
                  + ("(with addresses)" if args.show_addresses else "(people pseudonymised)"))
    if report.get("status") == "no_mappings":
        raise CommandError(f"no mappings imported yet ({program()} mappings import FILE)")
    return EXIT_OK if report.get("status") in ("succeeded", "running") else EXIT_FAILED



def _progress_line():
    """A one-line progress display on a terminal (stderr, rewritten in place)."""
    def show(stage: str, done: int, total: int | None) -> None:
        text = f"{stage}: {done}/{total}" if total else f"{stage}: {done}"
        sys.stderr.write("\r" + text.ljust(60))
        sys.stderr.flush()
    return show



# --- the dry run's review file -------------------------------------------------------------------

class _Review:
    """The dry run's review file: every proposed change, one row per record (shared.service_layer.review)."""

    def __init__(self, path: str, fmt: str, names: dict[str, str], person: Callable[[str], str]):
        from shared.service_layer.review import CaseWriter

        # Written beside the target and moved into place only when the run finished: a failed
        # run leaves no half a review file that reads like a whole one.
        self.path, self._names, self._person = path, names, person
        self._partial = Path(path).with_name(Path(path).name + ".partial")
        try:
            # Owner only (0600) from the first byte: the file names people (pseudonyms, or addresses).
            self._partial.unlink(missing_ok=True)
            fd = os.open(self._partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self._file = open(fd, "w", newline="", encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot write {path}: {exc.strerror}") from None
        self._writer = CaseWriter(self._file, fmt)

    @property
    def count(self) -> int:
        return self._writer.count

    def case(self, drift_class: str, action: Any) -> None:
        from shared.service_layer.review import describe_case

        self._writer.write(describe_case(drift_class, action, self._names, self._person))

    def close(self, complete: bool) -> None:
        if complete:
            self._writer.close()
        self._file.close()
        if complete:
            os.replace(self._partial, self.path)
        else:
            self._partial.unlink(missing_ok=True)



def add_review_arguments(rec: argparse.ArgumentParser) -> None:
    from shared.service_layer.review import FORMATS

    rec.add_argument("--changes", metavar="FILE",
                     help="with --dry-run: write every proposed change, one row per record, to FILE (.csv or .json) "
                          "for review; people appear as pseudonyms")
    rec.add_argument("--changes-format", choices=FORMATS, help="the file's format (default: from its extension)")
    rec.add_argument("--show-addresses", action="store_true",
                     help="with --changes: write email addresses instead of pseudonyms (the file then holds personal data)")



def open_review(args: argparse.Namespace, c: Any) -> "_Review | None":
    from shared.service_layer.review import format_for, names_of, pseudonymiser

    if not args.changes:
        if args.show_addresses or args.changes_format:
            raise CommandError("--show-addresses and --changes-format go with --changes FILE")
        return None
    if not args.dry_run:
        raise CommandError("--changes writes what a dry run proposes: add --dry-run (review, then run without it)")
    if Path(args.changes).is_dir():
        raise CommandError(f"{args.changes} is a folder; give a file name")
    fmt = format_for(args.changes, args.changes_format)
    mappings = stored_mappings(c, required=True)
    person = (lambda e: e) if args.show_addresses else pseudonymiser(c.tables().ledger.partition_for)
    return _Review(args.changes, fmt, names_of(mappings), person)



# --- runs ----------------------------------------------------------------------------------------

def cmd_runs(args: argparse.Namespace) -> int:
    from shared.service_layer.runs import SUMMARY_COLUMNS, recent

    rows = recent(container().tables().runs, args.max)
    if args.json:
        print_json({"runs": rows})
        return EXIT_OK
    if not rows:
        print(f"no reconciliation runs stored yet (they are kept from healing runs: {program()} reconcile, "
              "or the nightly timer)")
        return EXIT_OK
    print(_columns(rows, SUMMARY_COLUMNS))
    return EXIT_OK



def cmd_runs_show(args: argparse.Namespace) -> int:
    from shared.service_layer.runs import find, report_lines, unhealed_lines, with_mismatches

    report = find(container().tables().runs, args.run)
    if report is None:
        print(f"{program()}: no run {args.run!r} stored (list them: {program()} runs)", file=sys.stderr)
        return EXIT_NOT_FOUND
    if args.json:
        print_json(with_mismatches(report))
        return EXIT_OK
    print("\n".join(report_lines(report, program())))
    print("\n".join(unhealed_lines(report)))
    return EXIT_OK



def _columns(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """Rows as a plain table: a header, then one aligned line per row."""
    cells = [[c.replace("_", " ") for c in columns]] + [["-" if r.get(c) is None else str(r.get(c)) for c in columns]
                                                        for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells)

