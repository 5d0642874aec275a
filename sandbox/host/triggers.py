"""Queue and timer triggers: a receive loop per Service Bus function (batches as host.json
configures them), a scheduler per timer function, and running a function on demand."""
from __future__ import annotations

import logging
import secrets
import time
import traceback
from datetime import datetime, timezone
from typing import Any, Callable

from azure.functions.servicebus import ServiceBusMessage
from azure.functions.timer import TimerRequest

from sandbox.host.config import resolve
from sandbox.host.functions import Function
from sandbox.host.ncrontab import Schedule
from sandbox.host.queue import Message

log = logging.getLogger("sandbox.host")


class Triggers:
    """Mixed into ``LocalHost``; uses its functions, bus, settings and stop event."""

    def _service_bus_loop(self, fn: Function) -> None:
        # One batch at a time per listener, as the Service Bus extension's batch receive loop.
        queue = self.bus.queue(resolve(fn.trigger["queueName"], self.binding_values))
        many = str(fn.trigger.get("cardinality", "ONE")).upper() == "MANY"
        max_batch = int(self.sb["maxMessageBatchSize"]) if many else 1
        min_batch = int(self.sb.get("minMessageBatchSize", 1)) if many else 1
        while not self._stop.is_set():
            batch = queue.receive(max_batch, self.batch_wait, min_count=min_batch, stop=self._stop,
                                  wait_for_first=0.2)
            if not batch:
                continue
            with self._busy_lock:
                self._busy += 1
            try:
                arg = [self._sb_message(m) for m in batch]
                error = self._invoke(fn, {fn.trigger["name"]: arg if many else arg[0]})
                # autoCompleteMessages: success completes the batch, an exception abandons all of it
                (queue.abandon if error else queue.complete)(batch)
            finally:
                with self._busy_lock:
                    self._busy -= 1

    @staticmethod
    def _sb_message(m: Message) -> ServiceBusMessage:
        enqueued = datetime.fromtimestamp(m.enqueued_time, tz=timezone.utc)
        return ServiceBusMessage(
            body=m.body, message_id=m.message_id, application_properties=dict(m.application_properties),
            user_properties=dict(m.application_properties), delivery_count=m.delivery_count,
            enqueued_time_utc=enqueued, content_type=m.content_type, correlation_id=m.correlation_id,
            subject=m.subject, label=m.subject, sequence_number=m.sequence_number, lock_token=m.lock_token,
            scheduled_enqueue_time_utc=(datetime.fromtimestamp(m.scheduled_time, tz=timezone.utc)
                                        if m.scheduled_time else None))

    def _invoke(self, fn: Function, kwargs: dict, call: Callable[..., Any] | None = None) -> BaseException | None:
        started = time.monotonic()
        error: BaseException | None = None
        try:
            (call or fn.callable)(**kwargs)
        except Exception as exc:  # the host reports a failed invocation; it never dies of one
            error = exc
            log.error("host.function_failed function=%s error=%s\n%s", fn.name, type(exc).__name__,
                      "".join(traceback.format_exception(exc)[-3:]))
        fn.record(error)
        log.debug("host.invoked function=%s ok=%s ms=%d", fn.name, error is None,
                  (time.monotonic() - started) * 1000)
        return error

    # --- timers ---------------------------------------------------------------------------------

    def _timer_loop(self, fn: Function) -> None:
        try:
            schedule = Schedule.parse(resolve(fn.trigger["schedule"], self.binding_values))
        except Exception as exc:
            log.error("host.timer_invalid function=%s error=%s", fn.name, exc)
            return
        last = None
        if fn.trigger.get("runOnStartup"):
            self.run_timer(fn.name)
        while not self._stop.is_set():
            now = datetime.now(timezone.utc)
            nxt = schedule.next_after(now)
            while not self._stop.is_set() and datetime.now(timezone.utc) < nxt:
                self._stop.wait(min(1.0, (nxt - datetime.now(timezone.utc)).total_seconds()))
            if self._stop.is_set():
                return
            self.run_timer(fn.name, last=last, next_=schedule.next_after(nxt))
            last = nxt

    def run_timer(self, name: str, last: datetime | None = None, next_: datetime | None = None,
                  past_due: bool = False) -> BaseException | None:
        fn = self.functions[name]
        now = datetime.now(timezone.utc)
        status = {"Last": (last or now).isoformat(), "Next": (next_ or now).isoformat(), "LastUpdated": now.isoformat()}
        timer = TimerRequest(past_due=past_due, schedule_status=status, schedule={"AdjustForDST": True})
        with self._busy_lock:
            self._busy += 1
        try:
            return self._invoke(fn, {fn.trigger["name"]: timer})
        finally:
            with self._busy_lock:
                self._busy -= 1

    def run_function(self, name: str, payload: str = "") -> None:
        """What POST /admin/functions/<name> does: the non-HTTP function, now, in the background."""
        fn = self.functions[name]
        if fn.kind == "timerTrigger":
            self._spawn(f"manual-{name}", self.run_timer, (name,))
        elif fn.kind == "serviceBusTrigger":
            # The real host hands the input to the trigger as a message body.
            queue = self.bus.queue(resolve(fn.trigger["queueName"], self.binding_values))
            queue.send([Message(body=payload.encode(), message_id=secrets.token_hex(16))])
        else:
            raise ValueError(f"{name} is an HTTP function: call it at its route")
