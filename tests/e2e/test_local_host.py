"""The local host runs a v2-model FunctionApp as the Functions host does: keys, routes, Service Bus
batches (abandon on exception, dead-letter after max deliveries), timers on schedule and on the
admin endpoint. A small app of its own keeps these independent of Straddle's functions."""
from __future__ import annotations

import threading
import time

import azure.functions as func
import pytest
import requests

from sandbox.host import LocalHost
from sandbox.host.queue import MAX_DELIVERY_REASON, Message
from shared import bootstrap

FK, MK = "test-function-key", "test-master-key"


def make_app():
    app = func.FunctionApp()
    seen: dict = {"batches": [], "timers": [], "fail": set()}

    @app.route(route="hello/{name}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
    def hello(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse(f"hi {req.route_params['name']} {req.params.get('x', '')}", status_code=201)

    @app.route(route="open", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
    def open_(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse(req.get_body(), mimetype="application/json")

    @app.service_bus_queue_trigger(arg_name="messages", queue_name="%CHANGES_QUEUE%", connection="ServiceBusConnection",
                                   cardinality=func.Cardinality.MANY)
    def consume(messages: list[func.ServiceBusMessage]) -> None:
        seen["batches"].append([(m.message_id, m.delivery_count, m.get_body()) for m in messages])
        if any(m.get_body() in seen["fail"] for m in messages):
            raise RuntimeError("boom")

    @app.timer_trigger(arg_name="timer", schedule="%TICK%")
    def tick(timer: func.TimerRequest) -> None:
        seen["timers"].append(timer)

    return app, seen


@pytest.fixture
def host():
    app, seen = make_app()
    h = LocalHost(app, {"CHANGES_QUEUE": "work", "TICK": "*/1 * * * * *"}, function_key=FK, master_key=MK,
                  batch_wait=0.3)
    h.seen = seen
    h.start()
    yield h
    h.stop()
    bootstrap.reset_container(None)


def test_http_functions_honour_routes_methods_and_keys(host):
    url = f"{host.url}/api/hello/ann?x=1"
    assert requests.get(url).status_code == 401  # no key
    assert requests.get(url, headers={"x-functions-key": "wrong"}).status_code == 401
    r = requests.get(url, headers={"x-functions-key": FK})
    assert (r.status_code, r.text) == (201, "hi ann 1")
    assert requests.get(f"{url}&code={MK}").status_code == 201  # the master key opens everything
    assert requests.post(url, headers={"x-functions-key": FK}).status_code == 405
    assert requests.post(f"{host.url}/api/open", data=b'{"a":1}').json() == {"a": 1}  # anonymous
    assert requests.get(f"{host.url}/api/nowhere", headers={"x-functions-key": FK}).status_code == 404


def test_a_batch_is_completed_on_success_and_abandoned_whole_on_an_exception(host):
    q = host.bus.queue("work")
    host.seen["fail"].add(b"poison")
    q.send([Message(b"ok-1", "m1"), Message(b"poison", "m2"), Message(b"ok-2", "m3")])
    assert host.wait_idle(20)
    # every delivery carried the whole batch; ten deliveries, then the dead-letter sub-queue
    counts = [[d for _, d, _ in b] for b in host.seen["batches"]]
    assert counts == [[n, n, n] for n in range(1, 11)]
    assert sorted(m.message_id for m in q.deadletter) == ["m1", "m2", "m3"]
    assert {m.dead_letter_reason for m in q.deadletter} == {MAX_DELIVERY_REASON}
    assert host.functions["consume"].failures == 10

    host.seen["batches"].clear()
    q.send([Message(b"fine", "m4")])
    assert host.wait_idle(10)
    assert host.seen["batches"] == [[("m4", 1, b"fine")]] and q.stats()["completed"] == 1


def test_messages_arriving_together_come_in_one_batch(host):
    q = host.bus.queue("work")
    q.send([Message(f"b{i}".encode(), f"id{i}") for i in range(50)])
    assert host.wait_idle(10)
    assert sum(len(b) for b in host.seen["batches"]) == 50 and len(host.seen["batches"]) <= 2


def test_the_admin_api_needs_the_master_key_and_triggers_a_timer(host):
    url = f"{host.url}/admin/functions/tick"
    assert requests.post(url, json={"input": ""}).status_code == 401
    assert requests.post(url, json={"input": ""}, headers={"x-functions-key": FK}).status_code == 401
    before = len(host.seen["timers"])
    assert requests.post(url, json={"input": ""}, headers={"x-functions-key": MK}).status_code == 202
    deadline = time.monotonic() + 5
    while len(host.seen["timers"]) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    timer = host.seen["timers"][-1]
    assert isinstance(timer, func.TimerRequest) and timer.past_due is False
    assert requests.post(f"{host.url}/admin/functions/nope", headers={"x-functions-key": MK}).status_code == 404


def test_timers_run_on_their_ncrontab_schedule(host):
    deadline = time.monotonic() + 4
    while len(host.seen["timers"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(host.seen["timers"]) >= 2  # every second


def test_admin_queue_endpoints(host):
    h = {"x-functions-key": MK}
    host.seen["fail"].add(b"bad")
    host.bus.queue("work").send([Message(b"bad", "d1")])
    assert host.wait_idle(20)
    host.seen["fail"].clear()
    queues = {q["name"]: q for q in requests.get(f"{host.url}/admin/queues", headers=h).json()}
    assert queues["work"]["deadletter"] == 1
    dl = requests.get(f"{host.url}/admin/queues/work/deadletter", headers=h).json()
    assert dl["count"] == 1 and dl["messages"][0]["dead_letter_reason"] == MAX_DELIVERY_REASON
    assert dl["messages"][0]["body"] == "bad"
    r = requests.post(f"{host.url}/admin/queues/work/deadletter/replay", json={"max": 5}, headers=h).json()
    assert r == {"replayed": 1, "to": "work"}
    assert host.wait_idle(10)
    assert host.seen["batches"][-1][0][0] == "d1.replay-1" and host.seen["batches"][-1][0][2] == b"bad"
    assert requests.get(f"{host.url}/admin/queues/nope/deadletter", headers=h).status_code == 404
    assert requests.get(f"{host.url}/admin/queues", headers={"x-functions-key": FK}).status_code == 401


def test_stop_lets_a_running_batch_settle(host):
    gate = threading.Event()
    original = host.functions["consume"].callable
    host.functions["consume"].callable = lambda **kw: (gate.wait(5), original(**kw))
    host.bus.queue("work").send([Message(b"slow", "s1")])
    time.sleep(0.3)
    threading.Timer(0.3, gate.set).start()
    host.stop()
    assert host.bus.queue("work").stats()["completed"] == 1


def test_a_body_over_the_hosts_limit_is_refused_before_it_is_read():
    import socket

    app, _ = make_app()
    h = LocalHost(app, {"CHANGES_QUEUE": "work", "TICK": "*/1 * * * * *", "FUNCTIONS_REQUEST_BODY_SIZE_LIMIT": "1024"},
                  function_key=FK, master_key=MK, run_timers=False).start()
    try:
        assert requests.post(f"{h.url}/api/open", data=b"x" * 1024).status_code == 200  # at the limit
        # Only the headers are sent, announcing 10 MB: the answer comes without waiting for a byte of body.
        with socket.create_connection((h.bind, h.port), timeout=5) as s:
            s.sendall(b"POST /api/open HTTP/1.1\r\nHost: x\r\nContent-Length: 10485760\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 413")
    finally:
        h.stop()
        bootstrap.reset_container(None)
