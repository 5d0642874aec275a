"""The pure domain core: no Azure, HTTP, storage or environment access in this package."""
