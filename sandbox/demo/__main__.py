"""``python -m sandbox.demo [--keep]``: Straddle end to end on this machine.

Starts Azurite, the Dataverse sandbox seeded with a demo straddling tenant, and the local
Functions host; registers the webhooks and imports the mappings; plays a marketer's scenario and
prints what propagated where and how long it took; runs the nightly reconciliation and prints its
report (the table ``straddle reconcile`` prints); prints the opt-out deadlines (``straddle
compliance``); stops everything it started (``--keep``: leaves
it running until Ctrl-C, with the settings for the CLI in one file to ``source``).

One stack at a time: a second ``make run`` or ``make keep`` while one is up refuses (the state
folder, the log and the ports are shared) and says how to use or stop the one that runs.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import shlex
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

STATE = Path(__file__).resolve().parent / ".state"
REPO = Path(__file__).resolve().parents[2]
LOCK = STATE / "stack.lock"  # held (flock) by the running demo; its text says who holds it
ENV_FILE = STATE / "env.sh"  # written by --keep: the CLI's settings for the kept stack


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops as cleanly as Ctrl-C


def python_command() -> str:
    """How to run this venv's Python from the checkout, without activating the venv."""
    exe = Path(sys.prefix) / "bin" / "python"
    try:
        return str(exe.relative_to(REPO)) if exe.exists() else sys.executable
    except ValueError:
        return str(exe) if exe.exists() else sys.executable


def hold_the_stack(mode: str, lock: Path | None = None):
    """The open lock file (keep it open while the stack runs), or None when another demo holds it.
    flock is released by the kernel when the holder exits, so a crash leaves no stale lock."""
    lock = lock or LOCK
    lock.parent.mkdir(parents=True, exist_ok=True)
    f = open(lock, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "mode": mode, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
    f.flush()
    return f


def holder(lock: Path | None = None) -> dict:
    lock = lock or LOCK
    try:
        return json.loads(lock.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def refusal(mode: str, info: dict) -> str:
    who = "make keep" if info.get("mode") == "keep" else "make run"
    pid = info.get("pid", "?")
    lines = [f"make {mode}: refused: a local stack started by `{who}` is running (pid {pid}, since "
             f"{info.get('started', '?')}); starting another would break it."]
    if info.get("mode") == "keep":
        lines.append(f"  use it from any shell in this folder: . {_shown(ENV_FILE)} && "
                     f"{python_command()} -m shared doctor")
    lines.append(f"  or stop it: Ctrl-C in its terminal, or kill {pid}; then run `make {mode}` again.")
    return "\n".join(lines)


def _shown(path: Path) -> str:
    """A path as typed from the checkout's root (where make runs)."""
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def write_env_file(stack, path: Path | None = None) -> Path:
    """The settings the CLI needs for the kept stack, as exports to ``source``."""
    path = path or ENV_FILE
    h = stack.host
    values = {"DATAVERSE_URL": stack.sandbox.url, "DATAVERSE_ACCESS_TOKEN": stack.values["DATAVERSE_ACCESS_TOKEN"],
              "AzureWebJobsStorage": stack.values["AzureWebJobsStorage"], "TABLE_PREFIX": stack.table_prefix,
              "LEDGER_KEY": stack.values["LEDGER_KEY"], "STRADDLE_LOCAL_HOST": h.url,
              "STRADDLE_FUNCTION_KEY": h.function_key}
    lines = [f"# Written by `make keep` for the stack it runs; removed when it stops. Use: . {_shown(path)}"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)  # a token and a key
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sandbox.demo", description=__doc__.splitlines()[0])
    p.add_argument("--keep", action="store_true", help="leave the stack running for exploration (Ctrl-C stops it)")
    p.add_argument("--contacts", type=int, default=5000)
    p.add_argument("--sandbox-port", type=int, default=7070, help="default 7070 (local.settings.sample.json), else free")
    p.add_argument("--host-port", type=int, default=7071)
    p.add_argument("--log-file", type=Path, default=STATE / "demo.log")
    args = p.parse_args(argv)

    from sandbox.host.host import STATE_DIR, configure_logging, load_settings, stored_keys

    mode = "keep" if args.keep else "run"
    lock = hold_the_stack(mode)
    if lock is None:
        print(refusal(mode, holder()), file=sys.stderr)
        return 2
    args.log_file.parent.mkdir(parents=True, exist_ok=True)
    args.log_file.write_text("")
    configure_logging("INFO", args.log_file)  # the app's logs (redacted) go to the file, the story to the terminal
    for sig in (signal.SIGINT, signal.SIGTERM):  # also when started in the background with SIGINT ignored
        signal.signal(sig, _interrupt)

    from sandbox.demo.stack import DemoStack

    t0 = time.monotonic()
    demo_started = datetime.now(timezone.utc)
    function_key, master_key = stored_keys()
    stack = DemoStack(load_settings(), contacts=args.contacts, sandbox_port=args.sandbox_port,
                      host_port=args.host_port, export_env=True, function_key=function_key, master_key=master_key,
                      state_dir=STATE_DIR)
    ok = True
    try:
        print(f"Starting Azurite, the Dataverse sandbox ({args.contacts} contacts) and the local Functions host ...")
        stack.start()
        print_stack(stack, t0)
        ok = play_marketer(stack)
        ok = reconcile_now(stack) and ok
        ok = queues_clear(stack) and ok
        ok = print_compliance(stack, demo_started) and ok
        print(f"App log (no email addresses): {args.log_file}")
        if args.keep:
            keep_running(stack)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything", file=sys.stderr)
        return 130
    finally:
        stack.close()
        ENV_FILE.unlink(missing_ok=True)
        lock.close()
    print("PASS: every opt-out propagated" if ok else "FAIL: see NOT SEEN above or the report")
    return 0 if ok else 1


def print_stack(stack, t0: float) -> None:
    """What runs where, the seed's size and the mappings."""
    counts = {k: len(v) for k, v in stack.seed.items() if k in ("contacts", "leads", "lists", "consents")}
    print(f"  Dataverse sandbox   {stack.sandbox.url}   seeded: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    print(f"  local host          {stack.host.url}   functions: {', '.join(stack.host.functions)}")
    r = stack.registration
    print(f"  webhooks            registered ({len(r.step_ids) if hasattr(r, 'step_ids') else 'all'} steps) "
          f"-> {stack.host.url}/api/dataverse/webhook")
    from shared.service_layer.mappings import summary
    print(f"  mappings            {summary(stack.mappings)}")
    print(f"  ready in {time.monotonic() - t0:.1f} s\n")


def play_marketer(stack) -> bool:
    """The marketer's scenario, step by step, with how long each opt-out took to propagate; False
    when one was not seen."""
    from sandbox.demo.scenario import Marketer, play, steps, table

    marketer = Marketer(stack.sandbox.api_url)
    played = []
    ok = True
    for step in steps():
        played.append(play(step, marketer))
        ok = ok and step.done
    print("What a marketer did, and what Straddle propagated (timed from the write until visible in Dataverse):")
    print(table(played))
    stack.settle()
    return ok


def reconcile_now(stack) -> bool:
    """The nightly reconciliation, run now, and its report; False unless it succeeded."""
    from shared.service_layer.reconcile import run_reconciliation
    from shared.service_layer.runs import report_lines

    print("\nNightly reconciliation (run now; it heals the drift seeded in the tenant):")
    started = time.monotonic()
    report = run_reconciliation(stack.container)
    stack.settle()
    print("\n".join(report_lines(report, f"{python_command()} -m shared")))
    print(f"  took {time.monotonic() - started:.1f} s")
    return str(report.get("status")) == "succeeded"


def queues_clear(stack) -> bool:
    """Each queue's completed and dead-lettered messages; False when any was dead-lettered."""
    queues = {q["name"]: q for q in (q.stats() for q in stack.host.bus.queues())}
    dead = sum(q["deadletter"] for q in queues.values())
    print("\nQueues: " + "; ".join(f"{n}: {q['completed']} completed, {q['deadletter']} dead-lettered"
                                 for n, q in queues.items()))
    return dead == 0


def print_compliance(stack, started: datetime) -> bool:
    """The opt-out deadlines of this run, as ``straddle compliance`` prints them: the marketer's
    opt-outs (timed from their change events) and the seeded drift the reconciliation healed
    (dated by the rows, months before: past both deadlines, which is the point of the report).
    False when an opt-out is still open."""
    from shared.service_layer.compliance import compliance_lines, compliance_view

    view = compliance_view(stack.container.tables().compliance, started, datetime.now(timezone.utc),
                           stack.container.settings.opt_out_deadline_hours)
    print(f"\nOpt-out deadlines ({python_command()} -m shared compliance --since {started:%Y-%m-%dT%H:%M:%S}):")
    print("\n".join("  " + line for line in compliance_lines(view)))
    print("  (the rows past the deadlines are the drift seeded into the tenant months ago, healed by the run)")
    return view["open"] == 0 and view["received"] > 0


def keep_running(stack) -> None:
    h = stack.host
    env = _shown(write_env_file(stack))
    cli = f"{python_command()} -m shared"
    print(f"""
The stack keeps running (Ctrl-C stops everything):
  Dataverse sandbox  {stack.sandbox.api_url}   (any bearer token; /_sandbox/counts, /_sandbox/notifications)
  webhook            POST {h.url}/api/dataverse/webhook?code={h.function_key}
  admin API          {h.url}/admin/queues   (x-functions-key: master key in sandbox/host/.state/keys.json)
Use the CLI against it from another shell in this folder (no need to activate the venv):
  . {env}
  {cli} doctor
  {cli} explain ann.scenario@contoso.example
  {cli} runs
  {cli} activity --since 1h
  {cli} compliance --since 1h
  {cli} compliance export --since 1h --to opt-outs.csv
  {cli} reconcile --dry-run --changes changes.csv
  {cli} dlq list
  {cli} webhooks status --url {h.url}/api/dataverse/webhook
{env} is rewritten at each start (the tables are new each time) and removed when the stack stops.""")
    sys.stdout.flush()
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
