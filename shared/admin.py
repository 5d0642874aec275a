"""Administrative use cases shared by the CLI and the local host: mappings import and export.

Import is all-or-nothing: the file is checked, every name is resolved against Dataverse, and
only a fully resolved document is stored (one Table Storage transaction).
"""
from __future__ import annotations

from typing import Any, Protocol

from shared.domain.mappings import Mappings, parse_mappings_file, resolve_mappings
from shared.domain.model import Purpose, SubscriptionList, Topic


class Catalog(Protocol):
    """The Dataverse reference data a mappings file names."""

    def marketing_lists(self, subscription_only: bool = False) -> list[SubscriptionList]: ...

    def topics(self) -> list[Topic]: ...

    def purposes(self) -> list[Purpose]: ...


class MappingsDocuments(Protocol):
    def save(self, document: dict) -> None: ...

    def load(self) -> dict | None: ...


def import_mappings(doc: Any, catalog: Catalog, store: MappingsDocuments | None) -> Mappings:
    """Validates and resolves ``doc``; stores it unless ``store`` is None (a dry run)."""
    spec = parse_mappings_file(doc)
    mappings = resolve_mappings(spec, catalog.marketing_lists(), catalog.topics(), catalog.purposes())
    if store is not None:
        store.save(mappings.to_dict())
    return mappings


def export_mappings(store: MappingsDocuments) -> dict | None:
    """The stored mappings in file form (by name), or None when nothing was imported."""
    doc = store.load()
    return Mappings.from_dict(doc).to_file() if doc else None


def summary(m: Mappings) -> str:
    lists = sum(len(b.lists) for b in m.brands)
    opt_out = sum(1 for b in m.brands if b.opt_out_list)
    return (f"{m.mode}: {len(m.brands)} brand(s), {lists} list-topic pair(s), "
            f"{len(m.covered_purposes)} purpose(s), {opt_out} opt-out list(s)")


# --- webhook registration: the steps the sync needs ------------------------------------------

def sync_steps(email_columns: tuple[str, ...] | list[str] = ("emailaddress1", "emailaddress2", "emailaddress3")):
    """One step per message and table a rule reacts to, with the columns its event needs."""
    from shared.adapters.dataverse.webhooks import StepSpec
    from shared.domain.consent import OPT_OUT_FLAGS

    member_columns = (*email_columns, *OPT_OUT_FLAGS)
    consent_columns = ("msdynmkt_contactpointvalue", "msdynmkt_contactpointtype", "msdynmkt_contactpointconsenttype",
                       "msdynmkt_value", "msdynmkt_purposeid", "msdynmkt_topicid", "msdynmkt_source", "msdynmkt_reason")
    steps = []
    for table in ("contact", "lead"):
        steps += [StepSpec("Create", table, image_attributes=member_columns),
                  StepSpec("Update", table, filtering_attributes=member_columns, image_attributes=member_columns),
                  StepSpec("Delete", table)]
    consent = "msdynmkt_contactpointconsent4"
    steps += [StepSpec("Create", consent, image_attributes=consent_columns),
              StepSpec("Update", consent, filtering_attributes=("msdynmkt_value", "msdynmkt_contactpointvalue"),
                       image_attributes=consent_columns)]
    steps += [StepSpec("Associate"), StepSpec("Disassociate")]
    steps += [StepSpec(m, "list") for m in ("AddMember", "AddListMembers", "RemoveMember")]
    return steps


WEBHOOK_NAME = "Straddle"


def register_webhooks(client: Any, url: str, *, function_key: str | None = None, secret_header: str | None = None,
                      secret: str | None = None, email_columns: tuple[str, ...] | None = None,
                      name: str = WEBHOOK_NAME) -> Any:
    """Registers (idempotently) the service endpoint and every step the sync needs.

    Authentication follows the app's settings: a shared-secret header (WEBHOOK_SECRET_HEADER and
    WEBHOOK_SECRET) when configured, else the Azure Functions key as Dataverse's WebhookKey.
    """
    steps = sync_steps(email_columns) if email_columns else sync_steps()
    if secret_header and secret:
        return client.register_webhook(url, name=name, auth="HttpHeader", auth_value={secret_header: secret},
                                       steps=steps)
    if not function_key:
        raise ValueError("a function key (or WEBHOOK_SECRET_HEADER/WEBHOOK_SECRET) is needed to register the webhook")
    return client.register_webhook(url, name=name, auth="WebhookKey", auth_value=function_key, steps=steps)
