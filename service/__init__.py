"""The composition root: the app factory, the CLI, the demo and the worker, wiring the core
(camvoice/) and the adapters together. No other package imports an adapter, but for the bearer
check in oauth.tokens (see the import contracts in pyproject.toml)."""
