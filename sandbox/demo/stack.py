"""The whole local stack for the demo and the end-to-end tests: Azurite, the Dataverse sandbox
seeded with the demo tenant, and the local Functions host running function_app; webhooks
registered in the sandbox and mappings imported with the same code the CLI uses."""
from __future__ import annotations

import uuid
from typing import Any, Mapping

from sandbox.azurite import Azurite, accepts, ensure_azurite
from sandbox.dataverse import SandboxServer
from sandbox.demo.tenant import generate, mappings
from sandbox.host import LocalHost

SYNC_TOKEN = "local-dev-token"  # local.settings.sample.json's DATAVERSE_ACCESS_TOKEN: the sync's app user
LEDGER_KEY = "local-dev-ledger-key-7Qm2xK9vR4tZ8pWc"  # local.settings.sample.json's


def port_or_free(port: int) -> int:
    return 0 if not port or accepts(port) else port


class DemoStack:
    def __init__(self, settings: Mapping[str, str] | None = None, *, seed: dict | None = None, contacts: int = 5000,
                 sandbox_port: int = 0, host_port: int = 0, table_prefix: str | None = None,
                 azurite_connection: str | None = None, export_env: bool = False, time_scale: float = 1.0,
                 function_key: str | None = None, master_key: str | None = None, state_dir: Any = None,
                 sandbox_options: Mapping[str, Any] | None = None, host_options: Mapping[str, Any] | None = None,
                 mappings_doc: dict | None = None):
        self.base = dict(settings or {})
        self.seed = seed if seed is not None else generate(contacts)
        self.sandbox_port, self.host_port = sandbox_port, host_port
        self.table_prefix = table_prefix or "demo" + uuid.uuid4().hex[:8]  # each run its own tables
        self.azurite_connection = azurite_connection
        self.export_env, self.time_scale = export_env, time_scale
        self.keys = (function_key, master_key)
        self.state_dir = state_dir
        self.sandbox_options = dict(sandbox_options or {})
        self.host_options = dict(host_options or {})
        self.mappings_doc = mappings_doc if mappings_doc is not None else mappings()
        self.azurite: Azurite | None = None
        self.sandbox: SandboxServer | None = None
        self.host: LocalHost | None = None
        self.registration: Any = None

    @property
    def container(self) -> Any:
        return self.host.container

    def start(self) -> "DemoStack":
        import function_app
        from shared.service_layer.mappings import import_mappings
        from shared.service_layer.webhooks import register_webhooks

        try:
            if self.azurite_connection is None:
                self.azurite = ensure_azurite()
                self.azurite_connection = self.azurite.connection_string
            self.sandbox = SandboxServer(port=port_or_free(self.sandbox_port), seed=self.seed,
                                         **self.sandbox_options).start()
            values = {**self.base, "DATAVERSE_URL": self.sandbox.url, "AzureWebJobsStorage": self.azurite_connection,
                      "TABLE_PREFIX": self.table_prefix}
            if not values.get("DATAVERSE_ACCESS_TOKEN"):
                values["DATAVERSE_ACCESS_TOKEN"] = SYNC_TOKEN
            if not values.get("LEDGER_KEY"):
                values["LEDGER_KEY"] = LEDGER_KEY
            self.values = values
            self.host = LocalHost(function_app.app, values, port=port_or_free(self.host_port),
                                  function_key=self.keys[0], master_key=self.keys[1], time_scale=self.time_scale,
                                  export_env=self.export_env, state_dir=self.state_dir, **self.host_options).start()
            s = self.container.settings
            client = self.container.dataverse()
            # The real `webhooks register` code, pointed at the host with its function key.
            self.registration = register_webhooks(client, f"{self.host.url}/api/dataverse/webhook",
                                                  function_key=self.host.function_key,
                                                  secret_header=s.webhook_secret_header,
                                                  secret=s.webhook_secret)
            self.mappings = import_mappings(self.mappings_doc, client, self.container.tables().mappings)
            return self
        except BaseException:
            self.close()
            raise

    def run_timer(self, name: str = "nightly_reconcile", timeout: float = 30.0) -> int:
        """Runs a timer function now through the host's admin endpoint (master key), as an operator
        would; waits until it was invoked. Returns the admin endpoint's status code."""
        import time

        import requests

        before = self.host.functions[name].invocations
        r = requests.post(f"{self.host.url}/admin/functions/{name}", json={"input": ""},
                          headers={"x-functions-key": self.host.master_key})
        deadline = time.monotonic() + timeout
        while r.status_code == 202 and self.host.functions[name].invocations == before and time.monotonic() < deadline:
            time.sleep(0.05)
        return r.status_code

    def settle(self, timeout: float = 30.0) -> bool:
        """Waits until webhooks are delivered and the host's queues are quiet (twice: the sync's own
        writes cause webhooks too)."""
        ok = True
        for _ in range(3):
            ok = self.sandbox.wait_for_webhooks(timeout=timeout) and self.host.wait_idle(timeout)
        return ok and self.sandbox.wait_for_webhooks(timeout=timeout)

    def close(self) -> None:
        from shared import bootstrap

        if self.host is not None:
            self.host.stop()
            try:
                self.container.tables().close()
            except Exception:  # storage never configured: nothing to close
                pass
            bootstrap.reset_container(None)
            self.host = None
        if self.sandbox is not None:
            self.sandbox.stop()
            self.sandbox = None
        if self.azurite is not None:
            self.azurite.stop()
            self.azurite = None
