"""Straddle's Azure Functions (Python v2 programming model): bindings only.

Each function hands its bound input to ``shared.entrypoints.functions``; the logic lives in ``shared/``.
"""
import azure.functions as func

from shared.entrypoints import functions

app = func.FunctionApp()


@app.route(route="dataverse/webhook", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def dataverse_webhook(req: func.HttpRequest) -> func.HttpResponse:
    return functions.dataverse_webhook(req)


@app.service_bus_queue_trigger(arg_name="messages", queue_name="%CHANGES_QUEUE%",
                               connection="ServiceBusConnection", cardinality=func.Cardinality.MANY)
def process_changes(messages: list[func.ServiceBusMessage]) -> None:
    functions.process_changes(messages)


@app.timer_trigger(arg_name="timer", schedule="%RECONCILE_SCHEDULE%", run_on_startup=False)
def nightly_reconcile(timer: func.TimerRequest) -> None:
    functions.nightly_reconcile(timer)


@app.service_bus_queue_trigger(arg_name="message", queue_name="%RECONCILE_QUEUE%", connection="ServiceBusConnection")
def reconcile_chunk(message: func.ServiceBusMessage) -> None:
    functions.reconcile_chunk(message)


@app.timer_trigger(arg_name="timer", schedule="0 30 * * * *", run_on_startup=False)
def compliance_check(timer: func.TimerRequest) -> None:
    functions.compliance_check(timer)
