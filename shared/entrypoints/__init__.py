"""The ways in: the Azure Functions edge and the admin CLI, each a thin translation to a use case."""
