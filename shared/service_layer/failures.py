"""Failures in the administrator's words: what failed and what to do, shared by the CLI's one-line
errors and the doctor's checks.
"""
from __future__ import annotations


LOCAL_STACK_HINT = "locally: start the stack with make keep"


def describe_failure(exc: BaseException, storage_url: str | None = None) -> tuple[str, str]:
    """(what failed, what to do) in the administrator's words, for the CLI's one-line errors and
    the doctor's checks. Never Dataverse's own message text: it can quote a filter value (an
    address); the request kind, status and error code say enough."""
    from shared.adapters.dataverse.errors import (DataverseAmbiguous, DataverseAuthError, DataverseBadRequest,
                                                  DataverseError, DataverseNotFound, DataverseThrottled,
                                                  DataverseUnavailable, DataverseUnreachable)
    from shared.adapters.settings import SettingsError

    if isinstance(exc, SettingsError):
        return str(exc), "fix the app setting named (environment or local.settings.json; see README 'Configuration')"
    if isinstance(exc, DataverseError):
        what = exc.kind or "a request"
        code = f", code {exc.code}" if exc.code else ""
        if isinstance(exc, DataverseUnreachable):
            return (f"cannot reach Dataverse at {exc.url} ({exc.reason})",
                    f"check DATAVERSE_URL and the network; {LOCAL_STACK_HINT}")
        if isinstance(exc, DataverseAuthError) and exc.status == 403:
            return (f"Dataverse denied {what} (HTTP 403{code})",
                    "the application user's security role lacks a privilege (docs/dataverse-setup.md)")
        if isinstance(exc, DataverseAuthError):
            got = f"rejected the token for {what} (HTTP {exc.status})" if exc.status else "gave no token"
            return (f"Dataverse {got}",
                    "check DATAVERSE_CLIENT_ID, DATAVERSE_TENANT_ID and DATAVERSE_CLIENT_SECRET (or the managed "
                    "identity); a static DATAVERSE_ACCESS_TOKEN may have expired")
        if isinstance(exc, DataverseThrottled):
            return (f"Dataverse kept throttling {what} (HTTP 429) past DATAVERSE_RETRY_BUDGET_SECONDS",
                    "try again later, or raise DATAVERSE_RETRY_BUDGET_SECONDS")
        if isinstance(exc, DataverseUnavailable):
            why = f"HTTP {exc.status}" if exc.status else "no answer in time"
            return (f"Dataverse failed {what} ({why}) until the retry budget ran out",
                    "try again later; check the environment's health (Power Platform admin center), "
                    "DATAVERSE_TIMEOUT_SECONDS and DATAVERSE_RETRY_BUDGET_SECONDS")
        if isinstance(exc, (DataverseNotFound, DataverseAmbiguous)) and exc.status is None:
            return exc.message, "check the name or id given"  # our own message, naming what was asked
        if isinstance(exc, DataverseNotFound):
            return (f"Dataverse has no {what} (HTTP 404{code})",
                    "check DATAVERSE_URL (the environment's URL) and that Customer Insights - Journeys is installed")
        if isinstance(exc, DataverseBadRequest):
            return f"Dataverse rejected {what} (HTTP {exc.status}{code})", "run with --verbose and check the input"
        return f"Dataverse failed {what}" + (f" (HTTP {exc.status}{code})" if exc.status else ""), ""
    module = type(exc).__module__
    if module.startswith("azure.") or isinstance(exc, ConnectionError):
        where = f"Table Storage at {storage_url}" if storage_url else "Azure storage"
        status = getattr(exc, "status_code", None)
        name = type(exc).__name__
        if name in ("ServiceRequestError", "ServiceRequestTimeoutError") or isinstance(exc, ConnectionError):
            return (f"cannot reach {where}",
                    f"check AzureWebJobsStorage (or AzureWebJobsStorage__tableServiceUri); {LOCAL_STACK_HINT}")
        if name == "ClientAuthenticationError" or status in (401, 403):
            return (f"{where} refused access" + (f" (HTTP {status})" if status else ""),
                    "check the account key in AzureWebJobsStorage, or the identity's 'Storage Table Data "
                    "Contributor' role")
        if name == "CredentialUnavailableError":
            return "no Azure identity is available to sign in with", "run az login, or set the connection strings"
        return (f"{where} failed" + (f" (HTTP {status})" if status else f" ({name})"),
                "try again; if it persists run with --verbose")
    return f"unexpected failure ({type(exc).__name__})", "run with --verbose; report it with the command you ran"
