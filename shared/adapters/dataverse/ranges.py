"""Key ranges: what the nightly scan reads of a table, one partition (``after < key <= upto``) at a
time, without the affinity cookie so that parallel readers spread over the service's servers."""
from __future__ import annotations

from typing import Iterator

from shared.adapters.dataverse.odata import guid
from shared.adapters.dataverse.rows import _lower


def key_range_filter(key: str, after: str | None, upto: str | None, filter: str | None = None) -> str | None:
    """``filter and key gt after and key le upto``, leaving out what is None."""
    bounded = bool(after or upto)
    terms = [f"({filter})" if filter and bounded else filter,
             f"{key} gt {guid(after)}" if after else None, f"{key} le {guid(upto)}" if upto else None]
    return " and ".join(t for t in terms if t) or None


class KeyRanges:
    """Mixed into the client; uses the transport's ``iter_pages_more``/``get_json``."""

    def key_pages(self, path: str, key: str, select: str, filter: str | None = None, after: str | None = None,
                  upto: str | None = None) -> Iterator[tuple[list[dict], bool]]:
        """Rows with ``after < key <= upto`` in key order, page by page, with whether more follow.
        Dataverse compares and sorts GUID keys in SQL Server's uniqueidentifier order."""
        params = {"$select": select, "$filter": key_range_filter(key, after, upto, filter), "$orderby": key}
        return self.iter_pages_more(path, params, affinity=False)

    def largest_key(self, path: str, key: str, filter: str | None = None, after: str | None = None,
                    upto: str | None = None) -> str | None:
        """The largest key (SQL Server order) of the rows ``filter`` selects with ``after < key <= upto``;
        None when there are none."""
        params = {"$select": key, "$filter": key_range_filter(key, after, upto, filter), "$orderby": f"{key} desc",
                  "$top": "1"}
        rows = self.get_json(path, params, affinity=False).get("value") or []
        return _lower(rows[0].get(key)) if rows else None
