"""python -m sandbox.dataverse --port 8081 [--seed FILE] [--latency-ms N] [--limit 6000/300] [--execution-limit 1200/300]
[--dop-hint N] [--without-outbound-solution] [--without-auditing] [--without-remove-member-action] [--key-style sequential|random]"""
from __future__ import annotations

import argparse
import logging

from .keys import KEY_STYLES
from .limits import parse_limit
from .server import DOP_HINT, SandboxServer


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m sandbox.dataverse", description="Local Dataverse Web API sandbox")
    ap.add_argument("--port", type=int, default=8081)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--seed", help="seed JSON file (see sandbox/dataverse/README.md)")
    ap.add_argument("--latency-ms", type=float, default=0)
    ap.add_argument("--limit", help="service protection limit REQUESTS/SECONDS, e.g. 6000/300")
    ap.add_argument("--execution-limit", help="service protection limit on combined execution time "
                                              "SECONDS/WINDOW_SECONDS, e.g. 1200/300")
    ap.add_argument("--dop-hint", type=int, default=DOP_HINT,
                    help=f"x-ms-dop-hint sent with every answer (default {DOP_HINT}; 0 sends none)")
    ap.add_argument("--webhook-shuffle", action="store_true", help="deliver webhooks out of order")
    ap.add_argument("--webhook-duplicate-share", type=float, default=0.0)
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--without-outbound-solution", action="store_true",
                    help="an org whose Outbound marketing solution is uninstalled: no msdyncrm_* columns")
    ap.add_argument("--without-auditing", action="store_true",
                    help="an org with auditing off: no audit rows when a member's flags change")
    ap.add_argument("--without-remove-member-action", action="store_true",
                    help="an environment created without Dynamics 365 apps: no RemoveMemberList action "
                         "(members leave by DELETE listmembers(id))")
    ap.add_argument("--key-style", choices=KEY_STYLES, default="sequential",
                    help="new rows' keys: sequential GUIDs in a few server bands, as Dataverse mints them, or random")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    srv = SandboxServer(port=args.port, host=args.host, seed=args.seed, latency_ms=args.latency_ms,
                        limit=parse_limit(args.limit), webhook_shuffle=args.webhook_shuffle,
                        webhook_duplicate_share=args.webhook_duplicate_share, verbose=not args.quiet,
                        without_outbound_solution=args.without_outbound_solution,
                        auditing=not args.without_auditing,
                        without_remove_member_action=args.without_remove_member_action,
                        execution_limit=parse_limit(args.execution_limit, float), dop_hint=args.dop_hint or None, key_style=args.key_style)
    srv.start()
    logging.getLogger("sandbox.dataverse").info("Dataverse sandbox at %s", srv.api_url)
    try:
        srv._thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
