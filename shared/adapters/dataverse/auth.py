"""Bearer tokens for Dataverse: Entra ID via azure-identity, or a static dev/test token.

Tokens are cached until 5 minutes before they expire; a lock keeps the threads of one sync from
each fetching their own. Nothing here logs a token or a secret.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Protocol

from shared.adapters.dataverse.errors import DataverseAuthError

#: Refresh this long before expiry, so a token never expires in flight.
REFRESH_MARGIN_SECONDS = 300


class TokenProvider(Protocol):
    def token(self) -> str: ...

    def invalidate(self) -> None:
        """Forget a cached token (after a 401), so the next call fetches a fresh one."""
        ...


class StaticToken:
    """DATAVERSE_ACCESS_TOKEN (dev/test only). A 401 cannot be cured by refetching it."""

    refreshable = False

    def __init__(self, value: str):
        self._value = value

    def token(self) -> str:
        return self._value

    def invalidate(self) -> None:
        pass

    def __repr__(self) -> str:
        return "StaticToken(<redacted>)"


class CredentialToken:
    """A TokenCredential (azure-identity) for ``<DATAVERSE_URL>/.default``, cached."""

    refreshable = True

    def __init__(self, credential: Any, scope: str, clock: Callable[[], float] = time.time):
        self._credential = credential
        self._scope = scope
        self._clock = clock
        self._lock = threading.Lock()
        self._value: str | None = None
        self._expires_on = 0.0

    def token(self) -> str:
        with self._lock:
            if self._value is None or self._clock() >= self._expires_on - REFRESH_MARGIN_SECONDS:
                try:
                    got = self._credential.get_token(self._scope)
                except Exception as exc:  # azure-identity raises several types; the caller wants one
                    raise DataverseAuthError(f"could not get a Dataverse token: {type(exc).__name__}") from exc
                self._value, self._expires_on = got.token, float(got.expires_on)
            return self._value

    def invalidate(self) -> None:
        with self._lock:
            self._value = None

    def __repr__(self) -> str:
        return f"CredentialToken({type(self._credential).__name__}, {self._scope!r})"


def scope_for(dataverse_url: str) -> str:
    return dataverse_url.rstrip("/") + "/.default"


def credential_for(client_id: str | None, tenant_id: str | None, client_secret: str | None) -> Any:
    """Client secret when one is set, else managed identity when a client id is set, else the default chain."""
    from azure.identity import ClientSecretCredential, DefaultAzureCredential, ManagedIdentityCredential

    if client_secret:
        if not (tenant_id and client_id):
            raise DataverseAuthError("DATAVERSE_CLIENT_SECRET needs DATAVERSE_TENANT_ID and DATAVERSE_CLIENT_ID")
        return ClientSecretCredential(tenant_id, client_id, client_secret)
    if client_id:
        return ManagedIdentityCredential(client_id=client_id)
    return DefaultAzureCredential()


def token_provider_from_settings(settings: Any) -> TokenProvider:
    if settings.dataverse_access_token:
        return StaticToken(settings.dataverse_access_token)
    credential = credential_for(settings.dataverse_client_id, settings.dataverse_tenant_id,
                                settings.dataverse_client_secret)
    return CredentialToken(credential, scope_for(settings.dataverse_url))
