"""Shared plumbing for CLI commands: lazy settings, database and wiring, one-line failures,
--json. The composition root's CLI passes in how to wire; adapters' commands receive it."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # imported when a command first needs them: `camvoice --help` stays quick
    from camvoice.db import Database
    from camvoice.services import Services
    from camvoice.settings import Settings

Wire = Callable[["Settings", "Database"], "Services"]


class Context:
    """Settings, database and wiring, made once per command and only when needed."""

    def __init__(self, wire: Wire | None = None) -> None:
        self._settings: Settings | None = None
        self._db: Database | None = None
        self._services: Services | None = None
        self._wire = wire

    @property
    def settings(self) -> Settings:
        from camvoice.settings import ConfigError, load_settings

        if self._settings is None:
            try:
                self._settings = load_settings()
            except ConfigError as exc:
                fail(str(exc))
        return self._settings  # type: ignore[return-value]

    @property
    def db(self) -> Database:
        from camvoice.db import Database

        if self._db is None:
            self._db = Database(self.settings.sqlalchemy_url)
        return self._db

    @property
    def services(self) -> Services:
        """The same wiring the app builds, so CLI changes emit the same outbox events."""
        if self._services is None:
            if self._wire is None:
                raise RuntimeError("this command line was built without its wiring")
            self._services = self._wire(self.settings, self.db)
        return self._services


pass_ctx = click.make_pass_decorator(Context, ensure=True)


def fail(message: str) -> None:
    """One line on stderr, exit status 2: the contract for every caller mistake."""
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def emit(data: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    click.echo(json.dumps(data, indent=2, default=str) if as_json else text(data))


def require_migrated(ctx: Context) -> None:
    try:
        pending = ctx.db.pending_migrations()
    except Exception as exc:
        fail(f"cannot reach the database ({type(exc).__name__}); check CAMVOICE_DATABASE_URL")
    if pending:
        fail("the database is not migrated; run: camvoice db upgrade")
