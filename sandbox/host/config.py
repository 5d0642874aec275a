"""The local host's configuration: app settings (local.settings.json overlaid by the
environment), host.json's Service Bus options, %NAME% binding expressions, the host's keys, logging."""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
from pathlib import Path
from typing import Any, Mapping

REPO = Path(__file__).resolve().parents[2]
STATE_DIR = Path(__file__).resolve().parent / ".state"
_EXPR = re.compile(r"%([^%]+)%")


def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None,
                  sample: Path = REPO / "local.settings.sample.json") -> dict[str, str]:
    """local.settings.json "Values" (the sample's when absent) overlaid by the environment.

    The sample is read, never copied into the checkout: a local.settings.json left behind would
    hand the local stack's static token and ledger key to every later CLI run from this folder."""
    path = path or REPO / "local.settings.json"
    source = path if path.exists() else sample
    values: dict[str, str] = {}
    if source.exists():
        values = {k: str(v) for k, v in json.loads(source.read_text()).get("Values", {}).items() if v is not None}
    env = os.environ if environ is None else environ
    for key in list(values):
        if key in env:
            values[key] = env[key]
    return values


def service_bus_options(host_json: Path = REPO / "host.json") -> dict[str, Any]:
    opts = {"maxMessageBatchSize": 1000, "minMessageBatchSize": 1, "maxBatchWaitTime": "00:00:30",
            "maxDeliveryCount": 10}
    try:
        opts.update(json.loads(host_json.read_text()).get("extensions", {}).get("serviceBus", {}))
    except (OSError, ValueError):
        pass
    return opts


def timespan_seconds(text: str | float) -> float:
    if isinstance(text, (int, float)):
        return float(text)
    days = 0
    if "." in text.split(":")[0]:
        d, text = text.split(".", 1)
        days = int(d)
    h, m, s = text.split(":")
    return days * 86400 + int(h) * 3600 + int(m) * 60 + float(s)


def resolve(value: Any, settings: Mapping[str, str]) -> Any:
    """``%NAME%`` binding expressions from the app settings (an unknown name is an error, as in the host)."""
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        if m.group(1) not in settings or settings[m.group(1)] == "":
            raise KeyError(f"binding expression %{m.group(1)}% does not resolve: no such app setting")
        return settings[m.group(1)]

    return _EXPR.sub(one, value)


def stored_keys(state_dir: Path = STATE_DIR) -> tuple[str, str]:
    """(function key, master key): made once and kept, as the real host keeps its secrets."""
    path = state_dir / "keys.json"
    try:
        doc = json.loads(path.read_text())
        return doc["function_key"], doc["master_key"]
    except (OSError, ValueError, KeyError):
        pass
    keys = {"function_key": secrets.token_urlsafe(32), "master_key": secrets.token_urlsafe(32)}
    state_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(keys, indent=2))
    path.chmod(0o600)
    return keys["function_key"], keys["master_key"]


def configure_logging(level: str = "INFO", path: Path | None = None) -> None:
    """Root logging with the app's email redaction installed before any record is made."""
    from shared.telemetry import install_redaction

    install_redaction()
    handler: logging.Handler = logging.FileHandler(path) if path else logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("azure.core.pipeline.policies.http_logging_policy", "urllib3", "azure"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
