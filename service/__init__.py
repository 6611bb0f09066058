"""The composition root: the app factory, the CLI, the demo and the worker, wiring the core
(camvoice/) and the adapters together. No other package imports an adapter, but for the bearer
check in oauth.tokens (see the import contracts in pyproject.toml)."""

import os

PRIVATE_UMASK = 0o077


def private_files() -> None:
    """Whatever this process and its children create is private to the service's user: files
    0600, folders 0700. camvoice gives its own files explicit modes (the SQLite file, the secret
    key, certificates); the umask covers what other programs write under the data dir (ffmpeg's
    HLS segments and playlists, the relay's lock and marker files). The app factory and the
    command line call it first; it is process-wide, hence here and nowhere else."""
    os.umask(PRIVATE_UMASK)
