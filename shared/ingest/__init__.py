"""Ingest: Dataverse webhook notifications in, validated change events out."""
