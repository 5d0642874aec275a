"""The one-command demo (``python -m sandbox.demo [--keep]``): a straddling tenant, the local host,
a marketer's scenario and the nightly reconciliation. See sandbox/demo/__main__.py."""
