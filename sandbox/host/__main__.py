"""``python -m sandbox.host [--port 7071]``: run function_app on this machine (see README.md here)."""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from sandbox.host.host import REPO, STATE_DIR, LocalHost, configure_logging, load_settings, resolve, stored_keys

LOCAL_STORAGE = ("", "UseDevelopmentStorage=true")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sandbox.host", description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=7071)
    p.add_argument("--settings", type=Path, default=REPO / "local.settings.json",
                   help="local.settings.json (local.settings.sample.json's values when absent)")
    p.add_argument("--time-scale", type=float, default=1.0, help="multiplies scheduled-retry delays (tests: 0.01)")
    p.add_argument("--function-key", help="default: generated once, kept in sandbox/host/.state/keys.json")
    p.add_argument("--master-key")
    p.add_argument("--instances", type=int, default=1,
                   help="concurrent batch loops per Service Bus function (what scale-out to N instances does)")
    p.add_argument("--no-timers", action="store_true", help="do not run timer functions on their schedule")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--log-file", type=Path)
    args = p.parse_args(argv)

    configure_logging(args.log_level, args.log_file)
    settings = load_settings(args.settings)
    azurite = None
    if settings.get("AzureWebJobsStorage", "") in LOCAL_STORAGE and not settings.get("AzureWebJobsStorage__tableServiceUri"):
        from sandbox.azurite import ensure_azurite

        azurite = ensure_azurite()  # the one on :10002, or a new in-memory one stopped with the host
        settings["AzureWebJobsStorage"] = azurite.connection_string
    function_key, master_key = stored_keys()
    sys.path.insert(0, str(REPO))
    import function_app

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    host = LocalHost(function_app.app, settings, port=args.port, function_key=args.function_key or function_key,
                     master_key=args.master_key or master_key, time_scale=args.time_scale, export_env=True,
                     run_timers=not args.no_timers, state_dir=STATE_DIR, instances=args.instances)
    try:
        host.start()
        print(f"Straddle local host on {host.url} (Ctrl-C stops)")
        for fn in host.functions.values():
            t = fn.trigger
            where = {"httpTrigger": lambda: f"{'/'.join(t.get('methods') or ['*'])} {host.url}/api/{t.get('route')}",
                     "serviceBusTrigger": lambda: f"queue {resolve(t['queueName'], settings)}",
                     "timerTrigger": lambda: f"schedule {resolve(t['schedule'], settings)}"}.get(t["type"], lambda: "")()
            print(f"  {fn.name:20} {t['type']:18} {where}")
        print(f"  function key: {host.function_key}")
        print(f"  master key (admin API, /admin/queues ...): kept in {STATE_DIR / 'keys.json'}")
        sys.stdout.flush()
        stop.wait()
    finally:
        host.stop()
        if azurite:
            azurite.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
