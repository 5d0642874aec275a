"""Adapters: one outside system each, behind the ports in ``shared.ports``."""
