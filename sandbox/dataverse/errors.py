"""Dataverse's error shape: ``{"error": {"code": "0x...", "message": "..."}}``."""
from __future__ import annotations

NOT_FOUND = "0x80040217"  # row does not exist
BAD_QUERY = "0x80060888"  # OData syntax / unsupported query
BAD_COLUMN = "0x80048d19"  # unknown property or wrong value type
BAD_REQUEST = "0x80040203"  # invalid argument
DUPLICATE = "0x80040237"  # row with that id exists
THROTTLED = "0x80072322"  # service protection: number of requests
THROTTLED_TIME = "0x80072321"  # service protection: combined execution time
UNAUTHORIZED = "0x80072560"
UNEXPECTED = "0x80040216"
BATCH_TOO_LARGE = "0x80040203"
PRECONDITION = "0x80060882"
BAD_CHOICE = "0x8004431a"  # option set value outside the column's choices (code: a guess, see FIDELITY.md)


class DataverseError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


def not_found(table: str, row_id: str) -> DataverseError:
    return DataverseError(404, NOT_FOUND, f"{table} With Id = {row_id} Does Not Exist")


def bad_query(message: str) -> DataverseError:
    return DataverseError(400, BAD_QUERY, message)


def bad_column(table: str, column: str) -> DataverseError:
    return DataverseError(400, BAD_COLUMN, f"Could not find a property named '{column}' on type 'Microsoft.Dynamics.CRM.{table}'.")
