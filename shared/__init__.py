"""Straddle: keeps email opt-outs consistent between Dynamics 365 Outbound and Real-time marketing.

Layers (see docs/architecture.md):
- ``shared.domain``: the pure core (consent model, change events, mappings, planner). No I/O.
- ``shared.ingest``: turns Dataverse webhook notifications into change events. No I/O.
- ``shared.adapters``: one outside system each (settings, Service Bus, Table Storage, Dataverse).
- ``shared.service_layer``: one module per use case (process changes, reconcile, mappings, webhooks,
  discovery, explain, doctor, and the reports the CLI shows).
- ``shared.bootstrap``: the one place adapters are built from settings.
- ``shared.entrypoints``: the Azure Functions edge (``functions``; ``function_app.py`` only declares
  bindings) and the admin CLI (the ``cli`` package: one module per command group), each a thin
  translation to a use case.
"""
