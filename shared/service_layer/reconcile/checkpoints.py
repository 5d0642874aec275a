"""Scan checkpoints: a finished partition's compact result as (meta, payload), stored under the run
so an interrupted run merges it instead of reading it again."""
from __future__ import annotations

import json
import sys
import zlib

from shared.domain.drift import PartScan


def encode_part(part: PartScan) -> tuple[dict, bytes]:
    """A partition's result as (meta, payload): member ids packed 16 bytes each, then the consent
    digests and candidates as compressed JSON."""
    purposes = sorted({p for _, p, _ in part.consent})
    topics = sorted({t for _, _, t in part.consent if t})
    pi, ti = {p: i for i, p in enumerate(purposes)}, {t: i for i, t in enumerate(topics)}
    rest = {"p": purposes, "t": topics,
            "c": [[ek, pi[p], ti[t] if t else -1, stamp, out] for (ek, p, t), (stamp, out) in part.consent.items()],
            "f": part.found}
    ids = b"".join(i.to_bytes(16, "big") for i in part.ids)
    return {"rows": part.rows, "ids": len(part.ids)}, ids + zlib.compress(json.dumps(rest, separators=(",", ":")).encode())


def decode_part(meta: dict, payload: bytes) -> PartScan:
    n = int(meta["ids"]) * 16
    rest = json.loads(zlib.decompress(payload[n:]))
    purposes, topics = rest["p"], rest["t"]
    consent = {(ek, sys.intern(purposes[p]), sys.intern(topics[t]) if t >= 0 else None): (stamp, out)
               for ek, p, t, stamp, out in rest["c"]}
    ids = [int.from_bytes(payload[i:i + 16], "big") for i in range(0, n, 16)]
    return PartScan(int(meta["rows"]), consent, ids, [tuple(f) for f in rest["f"]])
