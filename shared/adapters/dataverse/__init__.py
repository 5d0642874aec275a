"""Dataverse Web API client (requests + azure-identity): see ``client.DataverseClient``."""
from shared.adapters.dataverse.auth import CredentialToken, StaticToken, TokenProvider, token_provider_from_settings
from shared.adapters.dataverse.client import DataverseClient
from shared.adapters.dataverse.errors import (DataverseAmbiguous, DataverseAuthError, DataverseBadRequest,
                                              DataverseError, DataverseNotFound, DataverseThrottled,
                                              DataverseUnavailable)
from shared.adapters.dataverse.webhooks import RegistrationResult, StepSpec, StepStatus, WebhookRegistration

__all__ = [
    "DataverseClient", "TokenProvider", "StaticToken", "CredentialToken", "token_provider_from_settings",
    "DataverseError", "DataverseAuthError", "DataverseNotFound", "DataverseAmbiguous", "DataverseThrottled",
    "DataverseUnavailable", "DataverseBadRequest", "StepSpec", "StepStatus", "RegistrationResult",
    "WebhookRegistration",
]
