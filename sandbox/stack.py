"""The local end-to-end stack for tests and benchmarks: the Dataverse sandbox firing real webhooks at
the real function code over HTTP, Azurite for Table Storage, and an in-memory stand-in for the
Service Bus queue (the emulator cannot run here).

    sandbox write (as a person) -> webhook POST -> function_app.dataverse_webhook -> queue
    queue -> function_app.process_changes (real ServiceBusMessage objects) -> sandbox writes
"""
from __future__ import annotations

import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import azure.functions as func
import requests
from azure.functions.servicebus import ServiceBusMessage

import function_app
from sandbox.dataverse import SandboxServer
from shared import bootstrap
from shared.adapters.servicebus import to_message
from shared.adapters.settings import Settings
from shared.service_layer.mappings import import_mappings
from shared.service_layer.webhooks import sync_steps
from shared.domain.consent import ConsentValue

SYNC_TOKEN = "straddle-sync-app-user"
PERSON_TOKEN = "a-marketer"
LEDGER_KEY = "local-stack-ledger-key-0123456789"


class RecordingQueue:
    """EventQueue + RetryQueue in memory, with Service Bus's MessageId duplicate detection."""

    def __init__(self):
        self.lock = threading.Lock()
        self.pending: list[ServiceBusMessage] = []
        self.ids: set[str] = set()
        self.later: list[tuple[str, int, int]] = []
        self.parked: list[tuple[bytes, str]] = []
        self.other: dict[str, list[tuple[str, bytes]]] = {}  # other queues (reconciliation chunks)

    def _put(self, body: bytes, message_id: str, attempt: int) -> None:
        with self.lock:
            if message_id in self.ids:
                return  # duplicate detection
            self.ids.add(message_id)
            self.pending.append(ServiceBusMessage(
                body=body, message_id=message_id, application_properties={"attempt": attempt}, user_properties={},
                delivery_count=1, content_type="application/json", enqueued_time_utc=datetime.now(timezone.utc)))

    def send(self, events) -> None:
        for e in events:
            m = to_message(e)
            self._put(str(m).encode(), m.message_id, 1)

    def send_later(self, event, delay_seconds: int, attempt: int) -> None:
        self.later.append((event.id, delay_seconds, attempt))
        self._put(event.to_json().encode(), f"{event.id}.{attempt}", attempt)  # no waiting in tests

    def park(self, body: bytes, reason: str, attempt: int, message_id: str | None = None) -> None:
        self.parked.append((body, reason))

    def send_raw(self, queue_name: str, messages: list[tuple[str, bytes]]) -> None:
        with self.lock:
            self.other.setdefault(queue_name, []).extend(messages)

    def take(self) -> list[ServiceBusMessage]:
        with self.lock:
            out, self.pending = self.pending, []
            return out


class _FunctionsHandler(BaseHTTPRequestHandler):
    """Turns an HTTP request into a real func.HttpRequest for the webhook function."""

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        req = func.HttpRequest("POST", f"http://localhost{self.path}", headers=dict(self.headers.items()),
                               params={}, route_params={}, body=body)
        resp = function_app.dataverse_webhook(req)
        payload = resp.get_body()
        self.send_response(resp.status_code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


class Stack:
    def __init__(self, azurite_connection: str, table_prefix: str, seed: dict, mappings_doc: dict,
                 register_webhooks: bool = True, batch_size: int = 500, settings: dict[str, str] | None = None,
                 **sandbox_options: Any):
        self.sandbox = SandboxServer(port=0, seed=seed, **sandbox_options).start()
        self.queue = RecordingQueue()
        self.batch_size = batch_size
        env = {
            "DATAVERSE_URL": self.sandbox.url, "DATAVERSE_ACCESS_TOKEN": SYNC_TOKEN,
            "DATAVERSE_RETRY_BUDGET_SECONDS": "20", "AzureWebJobsStorage": azurite_connection,
            "TABLE_PREFIX": table_prefix, "LEDGER_KEY": LEDGER_KEY, "MAX_ATTEMPTS": "3", "RETRY_DELAY_SECONDS": "1",
            **(settings or {}),
        }
        self.container = bootstrap.Container(Settings.from_env(env))
        self.container.set_event_queue(self.queue)
        bootstrap.reset_container(self.container)
        self.mappings = import_mappings(mappings_doc, self.container.dataverse(), self.container.tables().mappings)
        self.person = requests.Session()
        self.person.headers.update({"Authorization": f"Bearer {PERSON_TOKEN}", "Accept": "application/json",
                                    "OData-Version": "4.0"})
        self.http = None
        if register_webhooks:
            self.http = ThreadingHTTPServer(("127.0.0.1", 0), _FunctionsHandler)
            threading.Thread(target=self.http.serve_forever, daemon=True).start()
            self._register_webhooks()

    def _register_webhooks(self) -> None:
        url = f"http://127.0.0.1:{self.http.server_address[1]}/api/dataverse/webhook"
        self.container.dataverse().register_webhook(url, name="straddle", auth="WebhookKey",
                                                    auth_value="function-key", steps=sync_steps())

    def activate(self) -> None:
        """Makes this stack's container the process-wide one the functions use."""
        bootstrap.reset_container(self.container)

    def reload(self, seed: dict) -> None:
        """Replaces every row with ``seed`` (the webhook registration is made again: it is data too)
        and activates this stack."""
        self.activate()
        self.sandbox.wait_idle(timeout=10)  # a late request of the previous run must not land in this one
        self.sandbox.wait_for_webhooks(timeout=10)
        self.sandbox.store.reset()
        self.sandbox.store.load(seed)
        if self.http:
            self._register_webhooks()
        self.queue.take()
        self.sandbox.stats.reset()

    def close(self) -> None:
        if self.http:
            self.http.shutdown()
        self.sandbox.stop()
        self.container.tables().close()
        bootstrap.reset_container(None)

    # --- acting as a person in Dataverse ----------------------------------------------------

    def api(self, method: str, path: str, body: dict | None = None) -> requests.Response:
        r = self.person.request(method, f"{self.sandbox.api_url}/{path}", json=body,
                                headers={"If-Match": "*"} if method == "PATCH" else None)
        assert r.status_code < 300, (r.status_code, r.text)
        return r

    def drain(self, rounds: int = 10) -> int:
        """Delivers webhooks and processes the queue until both are quiet; returns messages processed."""
        total = 0
        for _ in range(rounds):
            self.sandbox.wait_for_webhooks(timeout=10)
            batch = self.queue.take()
            if not batch:
                return total
            for start in range(0, len(batch), self.batch_size):
                function_app.process_changes(batch[start:start + self.batch_size])
            total += len(batch)
        raise AssertionError("the queue did not go quiet")

    # --- reading the sandbox ----------------------------------------------------------------

    def rows(self, table: str) -> dict[str, dict]:
        return self.sandbox.store.data[table].rows

    def members_of(self, list_id: str) -> set[str]:
        rel = "listlead_association" if self.rows("list")[list_id].get("createdfromcode") == 4 else "listcontact_association"
        return set(self.sandbox.store.members[rel].get(list_id, set()))

    def consent(self, email: str, purpose: str, topic: str | None = None) -> list[dict]:
        return [r for r in self.rows("msdynmkt_contactpointconsent4").values()
                if (r.get("msdynmkt_contactpointvalue") or "").strip().lower() == email
                and r.get("_msdynmkt_purposeid_value") == purpose
                and (r.get("_msdynmkt_topicid_value") == topic)]

    def opted_out(self, email: str, purpose: str, topic: str | None = None) -> bool:
        rows = self.consent(email, purpose, topic)
        return bool(rows) and all(r["msdynmkt_value"] == ConsentValue.OPTED_OUT for r in rows)


    def ledger_rules(self, email: str) -> list[str]:
        return [e.rule for e in self.container.tables().ledger.history(email)]
