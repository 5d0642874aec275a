"""Use cases, one module each: what the app does, over the domain and the ports; no bindings, no argument parsing."""
