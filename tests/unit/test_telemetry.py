"""Telemetry: email redaction of text and of every log record once installed."""
from __future__ import annotations

import logging

import pytest

from shared import telemetry
from shared.telemetry import MASK, emit, install_redaction, redact


@pytest.mark.parametrize("text,expected", [
    ("jane.doe@contoso.example", MASK),
    ('GET contacts?$filter=emailaddress1 eq "JANE+news@Fabrikam.co.uk" HTTP/1.1',
     f'GET contacts?$filter=emailaddress1 eq "{MASK}" HTTP/1.1'),
    ("o'brien@contoso.example", MASK),
    ("a@b.c and x.y@z.example", f"{MASK} and {MASK}"),
    ("no address here", "no address here"),
    ("user@localhost", MASK),
])
def test_redact(text, expected):
    assert redact(text) == expected


def test_redact_in_an_odata_filter_hides_the_address():
    # The local part may contain an apostrophe, so the opening quote is masked too: over-masking is fine.
    out = redact("$filter=emailaddress1 eq 'jane@contoso.example'")
    assert "jane" not in out and "contoso" not in out and MASK in out


@pytest.fixture
def fresh_redaction(monkeypatch):
    """Installs the redaction into a clean factory and puts the previous factory back afterwards."""
    previous = logging.getLogRecordFactory()
    logging.setLogRecordFactory(logging.LogRecord)
    monkeypatch.setattr(telemetry, "_installed", False)
    install_redaction()
    yield
    logging.setLogRecordFactory(previous)


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(self.format(record))


@pytest.fixture
def handler():
    h = Capture()
    logger = logging.getLogger("straddle.test.telemetry")
    logger.addHandler(h)
    logger.setLevel(logging.DEBUG)
    yield logger, h
    logger.removeHandler(h)


def test_installed_redaction_masks_messages_and_args(fresh_redaction, handler):
    logger, h = handler
    logger.info("contact jane.doe@contoso.example opted out")
    logger.warning("filter %s matched %d rows", "emailaddress1 eq j@x.example", 2)
    logger.debug("%(who)s", {"who": "bob@fabrikam.example"})
    assert h.lines == [f"contact {MASK} opted out", f"filter emailaddress1 eq {MASK} matched 2 rows", MASK]


def test_caplog_sees_the_masked_record(fresh_redaction, caplog):
    caplog.set_level(logging.DEBUG)
    logging.getLogger("urllib3.connectionpool").debug('"GET /api/data/v9.2/contacts?$filter=%s HTTP/1.1" 200', "a@b.example")
    assert "a@b.example" not in caplog.text and MASK in caplog.text


def test_install_is_idempotent(fresh_redaction, handler):
    factory = logging.getLogRecordFactory()
    install_redaction()
    assert logging.getLogRecordFactory() is factory
    logger, h = handler
    logger.info("x@y.example")
    assert h.lines == [MASK]


def test_records_without_addresses_are_untouched(fresh_redaction, handler):
    logger, h = handler
    logger.info("count=%d", 3)
    assert h.lines == ["count=3"]


def test_a_broken_format_does_not_break_logging(fresh_redaction):
    record = logging.getLogRecordFactory()("n", logging.INFO, __file__, 1, "%d", ("not a number",), None)
    assert record.msg == "%d"


def test_without_install_nothing_is_masked(handler):
    previous = logging.getLogRecordFactory()
    logging.setLogRecordFactory(logging.LogRecord)
    try:
        logger, h = handler
        logger.info("a@b.example")
    finally:
        logging.setLogRecordFactory(previous)
    assert h.lines == ["a@b.example"], "the check above is meaningful only if an unmasked record is possible"


def test_emit_writes_the_line_and_structured_fields(caplog):
    caplog.set_level(logging.INFO)
    logger = logging.getLogger("straddle.test.emit")
    emit(logger, "process.received", event_id="e1", kind="contact_changed")
    record, = caplog.records
    assert record.getMessage() == "process.received event_id=e1 kind=contact_changed"
    assert record.event == "process.received" and record.straddle_event_id == "e1"


def test_emit_skips_disabled_levels(caplog):
    caplog.set_level(logging.WARNING)
    emit(logging.getLogger("straddle.test.emit"), "x.y", logging.DEBUG, a=1)
    assert caplog.records == []


@pytest.mark.parametrize("url,expected", [
    ("https://org.crm.dynamics.com/api/data/v9.2/contacts?$filter=emailaddress1%20eq%20'a@b.example'",
     "https://org.crm.dynamics.com/api/data/v9.2/contacts"),
    ("https://org.crm.dynamics.com/api/data/v9.2/contacts(emailaddress1='a@b.example')#x",
     f"https://org.crm.dynamics.com/api/data/v9.2/contacts({MASK}')"),  # the local part may eat the key name
    ("https://org.crm.dynamics.com/api/data/v9.2/$batch", "https://org.crm.dynamics.com/api/data/v9.2/$batch"),
])
def test_safe_url_drops_the_query_and_masks_addresses(url, expected):
    assert telemetry.safe_url(url) == expected


@pytest.fixture
def configure_calls(monkeypatch):
    import azure.monitor.opentelemetry as distro

    from shared import bootstrap

    calls = []
    monkeypatch.setattr(distro, "configure_azure_monitor", lambda **kw: calls.append(kw))
    monkeypatch.setattr(bootstrap, "_telemetry_configured", False)
    return calls


def test_telemetry_is_configured_once_when_the_worker_does_not(configure_calls):
    from shared.adapters.settings import Settings
    from shared.bootstrap import export_telemetry

    settings = Settings.from_env({"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=k"})
    assert export_telemetry(settings) is True
    assert export_telemetry(settings) is False  # a rebuilt container must not configure it again
    assert configure_calls == [{"connection_string": "InstrumentationKey=k"}]


@pytest.mark.parametrize("env", [
    {"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=k", "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": "true"},
    {},  # local: nothing to export to
])
def test_telemetry_is_not_configured_over_the_worker_or_locally(configure_calls, env):
    from shared.adapters.settings import Settings
    from shared.bootstrap import export_telemetry

    assert export_telemetry(Settings.from_env(env)) is False
    assert configure_calls == []


def test_the_exporter_signs_in_with_the_authentication_string(monkeypatch):
    # Local auth is off in Azure: the exporter must build an Entra credential from the app setting.
    from azure.identity import ManagedIdentityCredential
    from azure.monitor.opentelemetry.exporter.export._base import _get_authentication_credential

    monkeypatch.setenv("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "ClientId=00000000-0000-0000-0000-0000000000c1;Authorization=AAD")
    assert isinstance(_get_authentication_credential(), ManagedIdentityCredential)


def test_requirements_ask_for_an_exporter_that_honours_the_authentication_string():
    # azure-monitor-opentelemetry 1.6.11 is the first to require exporter 1.0.0b40 (the string is read since 1.0.0b36)
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "requirements.txt").read_text()
    m = re.search(r"^azure-monitor-opentelemetry>=([\d.]+)", text, re.M)
    assert m, "requirements.txt must give azure-monitor-opentelemetry a lower bound"
    assert tuple(int(x) for x in m.group(1).split(".")) >= (1, 6, 11)
