"""A local Dataverse Web API sandbox (tests, benchmarks and the local stack; never deployed).

    from sandbox.dataverse import SandboxServer
    with SandboxServer(port=0) as srv:
        srv.api_url  # http://127.0.0.1:<port>/api/data/v9.2
        srv.store    # the in-memory rows, for assertions
"""
from .server import SandboxServer
from .store import Store

__all__ = ["SandboxServer", "Store"]
