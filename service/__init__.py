"""The composition root: the app factory, the CLI, the demo and the worker, wiring the core
(camvoice/) and the adapters together. Nothing else imports the adapters."""
