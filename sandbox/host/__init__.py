"""The local Functions host (README.md here): ``python -m sandbox.host`` or ``LocalHost(app, settings)``."""
from sandbox.host.host import LocalHost, load_settings
from sandbox.host.queue import LocalQueue, LocalServiceBus, Message

__all__ = ["LocalHost", "LocalQueue", "LocalServiceBus", "Message", "load_settings"]
