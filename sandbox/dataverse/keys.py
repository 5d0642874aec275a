"""Primary keys as Dataverse mints them.

Dataverse's own record ids are sequential GUIDs (SQL Server ``NEWSEQUENTIALID``): a version-1 UUID
(a 60-bit timestamp, a clock sequence and the 6-byte hardware address of the server that made it)
with the bytes of its first three groups swapped, so that in SQL Server's ``uniqueidentifier``
order (last group first, then the fourth, third, second and first) they rise with time within
one server's *band*. Microsoft's sample ids show it: ``…-ed11-b83e-000d3a572421`` (year bits
``ed11``, an Azure hardware-address prefix ``000d3a``). A real org's keys therefore sit in a few
narrow bands, one per server that created rows; ``random`` keys (uuid4, as an import or an
integration that sets its own ids makes) spread over the whole key space.
"""
from __future__ import annotations

import random
import threading
import uuid

KEY_STYLES = ("sequential", "random")
#: Hardware-address prefixes of the servers (Azure's 00-0d-3a, 00-22-48, Hyper-V's 00-15-5d) and
#: how many of the rows each creates: a few bands, unevenly filled, as in an org that moved servers.
SERVERS = ((0x000D3A, 5), (0x002248, 3), (0x00155D, 2))
#: 100-ns ticks between two ids one server mints (about 10,000 ids a second).
_TICK = 1000
#: 100-ns ticks from the UUID epoch (1582-10-15) to 2024-01-01, where the sandbox's clock starts.
_START = 0x1EEA838B4CC8000


def sql_guid(order: int) -> str:
    """The GUID whose SQL Server ``uniqueidentifier`` order is ``order`` (a 128-bit integer): its
    high 48 bits are the last group, then the fourth group, then the third, second and first with
    their bytes as .NET's ``Guid.ToByteArray()`` lays them out (little-endian)."""
    b = order.to_bytes(16, "big")
    node, clock, g3, g2, g1 = b[0:6], b[6:8], b[8:10], b[10:12], b[12:16]
    # g1..g3 are compared byte by byte in ToByteArray order, which shows each group reversed.
    return str(uuid.UUID(bytes=g1[::-1] + g2[::-1] + g3[::-1] + clock + node))


class KeyMinter:
    """New primary keys, ``sequential`` (per server band, rising in SQL Server order) or ``random``.

    Deterministic for a given ``seed``; thread-safe."""

    def __init__(self, style: str = "sequential", seed: int | None = None):
        if style not in KEY_STYLES:
            raise ValueError(f"key style must be one of {', '.join(KEY_STYLES)}, not {style!r}")
        self.style = style
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        nodes = [(prefix << 24) | self._rng.getrandbits(24) for prefix, _ in SERVERS]
        self._servers = [[node, self._rng.getrandbits(14) | 0x8000, _START] for node in nodes]
        self._weights = [w for _, w in SERVERS]

    def mint(self) -> str:
        with self._lock:
            if self.style == "random":
                return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
            server = self._rng.choices(self._servers, self._weights)[0]
            server[2] += _TICK
            node, clock, ticks = server
        # time_hi with version 1, time_mid, time_low: least significant last, as SQL Server compares.
        time_hi = ((ticks >> 48) & 0x0FFF) | 0x1000
        order = (node << 80) | (clock << 64) | (time_hi << 48) | (((ticks >> 32) & 0xFFFF) << 32) | (ticks & 0xFFFFFFFF)
        return sql_guid(order)
