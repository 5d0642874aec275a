"""Whether a webhook registration can authenticate against the app's settings (shared.service_layer.webhooks)."""
from __future__ import annotations

import pytest

from shared.adapters.dataverse.webhooks import auth_description, auth_names
from shared.service_layer.webhooks import registration_auth_problem

SECRET = "x-straddle-secret"


def test_the_description_records_names_only_and_reads_back():
    text = auth_description(["X-Functions-Key", SECRET])
    assert auth_names(text) == ("x-functions-key", SECRET)
    assert auth_names("Registered by Straddle") is None and auth_names(None) is None


@pytest.mark.parametrize("auth_type,names,secret,ok", [
    (5, ("x-functions-key", SECRET), SECRET, True),   # as infra deploys: both headers
    (4, ("code",), None, True),                       # no secret configured: the key as ?code=
    (5, ("x-functions-key",), None, True),
])
def test_registrations_that_authenticate(auth_type, names, secret, ok):
    assert (registration_auth_problem(auth_type, names, secret) is None) is ok


@pytest.mark.parametrize("auth_type,names,secret,words", [
    (5, (SECRET,), SECRET, "does not send the function key"),        # the old code's registration
    (5, ("x-functions-key",), SECRET, f"does not send the {SECRET} header"),
    (4, ("code",), SECRET, f"also requires the {SECRET} header"),
    (5, None, SECRET, "older version"),
    (6, ("code",), SECRET, "query string"),
    (2, ("code",), None, "auth type 2"),
])
def test_registrations_that_cannot_authenticate_say_why(auth_type, names, secret, words):
    problem = registration_auth_problem(auth_type, names, secret)
    assert problem and words in problem
