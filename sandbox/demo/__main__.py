"""``python -m sandbox.demo [--keep]``: Straddle end to end on this machine.

Starts Azurite, the Dataverse sandbox seeded with a demo straddling tenant, and the local
Functions host; registers the webhooks and imports the mappings; plays a marketer's scenario and
prints what propagated where and how long it took; runs the nightly reconciliation and prints its
report; stops everything it started (``--keep``: leaves it running until Ctrl-C).
"""
from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

STATE = Path(__file__).resolve().parent / ".state"


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops as cleanly as Ctrl-C


def print_report(report: dict) -> None:
    for key, value in report.items():
        if isinstance(value, dict):
            inner = ", ".join(f"{k}={v}" for k, v in value.items())
            print(f"  {key:22} {inner}")
        else:
            print(f"  {key:22} {value}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sandbox.demo", description=__doc__.splitlines()[0])
    p.add_argument("--keep", action="store_true", help="leave the stack running for exploration (Ctrl-C stops it)")
    p.add_argument("--contacts", type=int, default=5000)
    p.add_argument("--sandbox-port", type=int, default=7070, help="default 7070 (local.settings.sample.json), else free")
    p.add_argument("--host-port", type=int, default=7071)
    p.add_argument("--log-file", type=Path, default=STATE / "demo.log")
    args = p.parse_args(argv)

    from sandbox.host.host import STATE_DIR, configure_logging, load_settings, stored_keys

    args.log_file.parent.mkdir(parents=True, exist_ok=True)
    args.log_file.write_text("")
    configure_logging("INFO", args.log_file)  # the app's logs (redacted) go to the file, the story to the terminal
    for sig in (signal.SIGINT, signal.SIGTERM):  # also when started in the background with SIGINT ignored
        signal.signal(sig, _interrupt)

    from sandbox.demo.scenario import Marketer, play, steps, table
    from sandbox.demo.stack import DemoStack

    t0 = time.monotonic()
    function_key, master_key = stored_keys()
    stack = DemoStack(load_settings(), contacts=args.contacts, sandbox_port=args.sandbox_port,
                      host_port=args.host_port, export_env=True, function_key=function_key, master_key=master_key,
                      state_dir=STATE_DIR)
    ok = True
    try:
        print(f"Starting Azurite, the Dataverse sandbox ({args.contacts} contacts) and the local Functions host ...")
        stack.start()
        counts = {k: len(v) for k, v in stack.seed.items() if k in ("contacts", "leads", "lists", "consents")}
        print(f"  Dataverse sandbox   {stack.sandbox.url}   seeded: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
        print(f"  local host          {stack.host.url}   functions: {', '.join(stack.host.functions)}")
        r = stack.registration
        print(f"  webhooks            registered ({len(r.step_ids) if hasattr(r, 'step_ids') else 'all'} steps) "
              f"-> {stack.host.url}/api/dataverse/webhook")
        from shared.admin import summary
        print(f"  mappings            {summary(stack.mappings)}")
        print(f"  ready in {time.monotonic() - t0:.1f} s\n")

        marketer = Marketer(stack.sandbox.api_url)
        played = []
        for step in steps():
            played.append(play(step, marketer))
            ok = ok and step.done
        print("What a marketer did, and what Straddle propagated (timed from the write until visible in Dataverse):")
        print(table(played))
        stack.settle()

        from shared.reconcile import run_reconciliation

        print("\nNightly reconciliation (run now; it heals the drift seeded in the tenant):")
        started = time.monotonic()
        report = run_reconciliation(stack.container)
        stack.settle()
        print_report(report)
        print(f"  took {time.monotonic() - started:.1f} s")
        ok = ok and str(report.get("status")) == "succeeded"
        queues = {q["name"]: q for q in (q.stats() for q in stack.host.bus.queues())}
        dead = sum(q["deadletter"] for q in queues.values())
        print("\nQueues: " + "; ".join(f"{n}: {q['completed']} completed, {q['deadletter']} dead-lettered"
                                     for n, q in queues.items()))
        ok = ok and dead == 0
        print(f"App log (no email addresses): {args.log_file}")
        if args.keep:
            keep_running(stack)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything", file=sys.stderr)
        return 130
    finally:
        stack.close()
    print("PASS: every opt-out propagated" if ok else "FAIL: see NOT SEEN above or the report")
    return 0 if ok else 1


def keep_running(stack) -> None:
    h = stack.host
    print(f"""
The stack keeps running (Ctrl-C stops everything):
  Dataverse sandbox  {stack.sandbox.api_url}   (any bearer token; /_sandbox/counts, /_sandbox/notifications)
  webhook            POST {h.url}/api/dataverse/webhook?code={h.function_key}
  admin API          {h.url}/admin/queues   (x-functions-key: master key in sandbox/host/.state/keys.json)
Use the CLI against it from another shell in this folder:
  export DATAVERSE_URL={stack.sandbox.url} DATAVERSE_ACCESS_TOKEN={stack.values['DATAVERSE_ACCESS_TOKEN']}
  export AzureWebJobsStorage='{stack.values['AzureWebJobsStorage']}' TABLE_PREFIX={stack.table_prefix}
  export STRADDLE_LOCAL_HOST={h.url}
  python -m shared explain ann.scenario@contoso.example
  python -m shared reconcile --dry-run
  python -m shared dlq list
  python -m shared webhooks status --url {h.url}/api/dataverse/webhook
  python -m shared doctor""")
    sys.stdout.flush()
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
