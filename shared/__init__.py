"""Straddle: keeps email opt-outs consistent between Dynamics 365 Outbound and Real-time marketing.

Layers (see docs/architecture.md):
- ``shared.domain``: the pure core (consent model, change events, mappings, planner). No I/O.
- ``shared.ingest``: turns Dataverse webhook notifications into change events. No I/O.
- ``shared.adapters``: one outside system each (settings, Service Bus, Table Storage, Dataverse).
- ``shared.bootstrap``: the one place adapters are built from settings.
- ``shared.entry``: the Azure Functions edge; ``function_app.py`` only declares bindings.
"""
