"""`camvoice`: the operator's command line. Every listing has --json; mistakes exit 2."""

from __future__ import annotations

import gc
import hashlib
import hmac
import importlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

from camvoice.commands import Context, emit, fail, pass_ctx, require_migrated

if TYPE_CHECKING:  # the rest is imported by the command that needs it: `--help` stays quick
    from camvoice.db import Database
    from camvoice.models import Account, Camera
    from camvoice.services import Services
    from camvoice.settings import Settings


@click.group()
@click.pass_context
def main(click_ctx: click.Context) -> None:
    """camvoice: show security cameras on Alexa and Google Home."""
    from service import private_files

    private_files()
    click_ctx.obj = Context(wire=wire)


def wire(settings: Settings, db: Database) -> Services:
    """Changes made from the CLI emit the same outbox events as changes made in the app."""
    from service.wiring import build_services

    return build_services(settings, db)


@main.command()
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def config(ctx: Context, as_json: bool) -> None:
    """Print the effective settings (secrets masked)."""
    shown = ctx.settings.masked()
    emit(shown, as_json, lambda d: "\n".join(f"{k} = {v}" for k, v in d.items()))


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@pass_ctx
def db_upgrade(ctx: Context) -> None:
    """Apply every pending migration, then seal source credentials kept in the clear."""
    from camvoice.sealing import seal_plain_sources

    ctx.db.upgrade()
    with ctx.db.session() as session:
        sealed = seal_plain_sources(session, ctx.settings.sealer())
    click.echo("database is up to date" + (f"; sealed {sealed} camera sources" if sealed else ""))


@main.group()
def keys() -> None:
    """The key ring that seals stored secrets (CAMVOICE_SEAL_KEYS)."""


@keys.command("reseal")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def keys_reseal(ctx: Context, as_json: bool) -> None:
    """Re-encrypt every sealed secret with the ring's first key: after it, older keys can go."""
    from backends.ezviz.models import EzvizLink
    from camvoice.models import Camera
    from camvoice.sealing import reseal, seal_plain_sources
    from skills.events import AlexaLink

    require_migrated(ctx)
    sealer = ctx.settings.sealer()
    columns = (Camera.source_secret, EzvizLink.app_secret, EzvizLink.access_token,
               AlexaLink.access_token, AlexaLink.refresh_token)  # fmt: skip
    with ctx.db.session() as session:
        counts = {"cameras.source (newly sealed)": seal_plain_sources(session, sealer)}
        session.flush()
        for column in columns:
            counts[f"{column.class_.__tablename__}.{column.key}"] = reseal(session, sealer, column)
    emit(counts, as_json, lambda d: "\n".join(f"{k}: {v}" for k, v in d.items()))


def on_off(value: str | None) -> bool | None:
    return None if value is None else value in ("on", "yes")


# --- accounts -------------------------------------------------------------------------------


@main.group()
def accounts() -> None:
    """Camera owners."""


def read_password(from_stdin: bool, prompt: str) -> str:
    """A password from one line of standard input (scripts), or typed twice at a prompt."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    return str(click.prompt(prompt, hide_input=True, confirmation_prompt=True))


@accounts.command("create")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@pass_ctx
def accounts_create(ctx: Context, email: str, password_stdin: bool) -> None:
    """Create an account (password from --password-stdin or a prompt)."""
    from camvoice.accounts import AccountError, create_account

    require_migrated(ctx)
    password = read_password(password_stdin, "Password")
    try:
        with ctx.db.session() as session:
            account = create_account(session, email, password)
    except AccountError as exc:
        fail(str(exc))
    click.echo(f"created account {account.email} ({account.id})")


@accounts.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def accounts_list(ctx: Context, as_json: bool) -> None:
    """List accounts."""
    from sqlalchemy import select

    from camvoice.models import Account

    require_migrated(ctx)
    with ctx.db.reading() as session:
        rows = [
            {"id": a.id, "email": a.email, "cameras": len(a.cameras), "created_at": a.created_at}
            for a in session.scalars(select(Account).order_by(Account.email))
        ]
    emit(rows, as_json, lambda d: "\n".join(f"{r['email']}\t{r['cameras']} cameras" for r in d))


@accounts.command("password")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@pass_ctx
def accounts_password(ctx: Context, email: str, password_stdin: bool) -> None:
    """Set a new password; every session of the account is signed out."""
    from camvoice.accounts import AccountError, change_password

    require_migrated(ctx)
    password = read_password(password_stdin, "New password")
    try:
        with ctx.db.session() as session:
            ended = change_password(session, owner_or_fail(session, email), password)
    except AccountError as exc:
        fail(str(exc))
    click.echo(f"password changed for {email}; {ended} sessions signed out")


@accounts.command("disable")
@click.argument("email")
@pass_ctx
def accounts_disable(ctx: Context, email: str) -> None:
    """Refuse the account's sign-ins from now on, sign out every session of it and revoke its
    Alexa and Google links."""
    from camvoice.accounts import disable_account
    from oauth.tokens import revoke_account

    require_migrated(ctx)
    with ctx.db.session() as session:
        account = owner_or_fail(session, email)
        ended = disable_account(session, account)
        unlinked = revoke_account(session, account.id, "account_disabled", actor="operator")
    click.echo(f"disabled {email}; {ended} sessions signed out; {unlinked} links revoked")


@accounts.command("delete")
@click.argument("email")
@click.option("--yes", is_flag=True, help="Confirm: this cannot be undone.")
@pass_ctx
def accounts_delete(ctx: Context, email: str, yes: bool) -> None:
    """Delete an account for good: links, tokens and sessions end at once, Alexa and Google are
    told through the outbox, cameras and sealed secrets are erased; a tombstone stays."""
    from camvoice.owner_data import delete_account

    if not yes:
        fail(f"deleting {email} erases its cameras and links for good; add --yes to confirm")
    require_migrated(ctx)
    services = ctx.services
    with ctx.db.session() as session:
        account = owner_or_fail(session, email)
        counts = delete_account(session, services.owner_data, services.outbox, account,
                                key=ctx.settings.key(), actor="operator")  # fmt: skip
    click.echo(f"deleted {email}: {counts['cameras']} cameras, {counts.get('oauth', 0)} links; "
               "the worker tells Alexa and Google")  # fmt: skip


@accounts.command("export")
@click.argument("email")
@click.option("--output", type=click.Path(dir_okay=False), help="Write to a new file (0600).")
@pass_ctx
def accounts_export(ctx: Context, email: str, output: str | None) -> None:
    """The owner's data as JSON (account, cameras without secrets, links, audit)."""
    import json

    from camvoice.owner_data import export_account

    require_migrated(ctx)
    with ctx.db.reading() as session:
        data = export_account(session, ctx.services.owner_data, owner_or_fail(session, email))
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        fail(f"cannot create {output}: {exc.strerror}")
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(text)
    click.echo(f"exported {email} to {output}")


def owner_or_fail(session: Any, email: str) -> Account:
    from camvoice.accounts import find_account

    account = find_account(session, email)
    if account is None:
        fail(f"no account {email}")
    return account  # type: ignore[return-value]


# --- cameras --------------------------------------------------------------------------------


def setting_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The maker-app settings, shared by `cameras add` and `cameras set`."""
    options = [
        click.option("--room"),
        click.option("--source", help="demo, or an rtsp:// URL of a real camera"),
        click.option("--nickname", "nicknames", multiple=True, help="Another spoken name."),
        click.option("--model"),
        click.option("--firmware"),
        click.option("--serial"),
        click.option("--encryption", type=click.Choice(["on", "off"]), help="Image Encryption"),
        click.option("--audio", type=click.Choice(["on", "off"])),
        click.option("--online", type=click.Choice(["yes", "no"])),
        click.option("--sleep", type=click.Choice(["on", "off"]), help="Sleep (privacy) mode"),
        click.option("--status-light", type=click.Choice(["on", "off"])),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def collect(opts: dict[str, Any]) -> dict[str, Any]:
    """Map CLI options to camera fields, leaving out what was not given."""
    fields = {
        "room": opts.get("room"),
        "source": opts.get("source"),
        "model": opts.get("model"),
        "firmware": opts.get("firmware"),
        "serial": opts.get("serial"),
        "nicknames": list(opts["nicknames"]) if opts.get("nicknames") else None,
        "image_encryption": on_off(opts.get("encryption")),
        "audio": on_off(opts.get("audio")),
        "online": on_off(opts.get("online")),
        "sleep_mode": on_off(opts.get("sleep")),
        "status_light": on_off(opts.get("status_light")),
    }
    if "name" in opts and opts["name"] is not None:
        fields["name"] = opts["name"]
    return {k: v for k, v in fields.items() if v is not None}


def with_picture_size(ctx: Context, fields: dict[str, Any]) -> dict[str, Any]:
    """A new rtsp source is probed once for its picture size, which Alexa's Discovery states;
    until it is known (the camera unreachable now) Alexa is offered no stream for it."""
    source = fields.get("source")
    if not isinstance(source, str) or not source.startswith(("rtsp://", "rtsps://")):
        return fields
    from media.probe import picture_size

    size = picture_size(source, ctx.settings.ffmpeg, ctx.settings.address_policy())
    if size is None:
        note = "note: could not read the stream's picture size; Alexa gets no stream for this "
        click.echo(note + "camera until `camvoice cameras probe CAMERA_ID` reads it", err=True)
    width, height = size or (None, None)
    return {**fields, "width": width, "height": height}


def camera_or_fail(session: Any, camera_id: str) -> Camera:
    from camvoice.models import Camera

    camera = session.get(Camera, camera_id)
    if camera is None:
        fail(f"no camera {camera_id}")
    return camera  # type: ignore[no-any-return]


def camera_line(d: dict[str, Any]) -> str:
    def state(assistant: str) -> str:
        r = d["readiness"][assistant]
        return "ready" if r["ready"] else ",".join(b["code"] for b in r["blockers"])

    return f"{d['id']}\t{d['name']}\t{d['owner']}\talexa={state('alexa')}\tgoogle={state('google')}"


@main.group()
def cameras() -> None:
    """Cameras and their settings."""


@cameras.command("add")
@click.option("--owner", required=True, help="Owner's email.")
@click.option("--name", required=True)
@setting_options
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def cameras_add(ctx: Context, owner: str, as_json: bool, **opts: Any) -> None:
    """Add a camera to an owner's account."""
    from camvoice import cameras as registry

    require_migrated(ctx)
    fields = collect(opts)
    name = opts["name"]
    fields.pop("name", None)
    fields.setdefault("source", "demo")
    fields = with_picture_size(ctx, fields)
    try:
        with ctx.db.session() as session:
            account = owner_or_fail(session, owner)
            camera = ctx.services.registry.add(session, account, name, actor="cli", **fields)
            shown = registry.describe(camera)
    except registry.CameraError as exc:
        fail(str(exc))
    emit(shown, as_json, camera_line)


@cameras.command("set")
@click.argument("camera_id")
@click.option("--name")
@setting_options
@click.option(
    "--verification-code-stdin",
    "code_stdin",
    is_flag=True,
    help="Read the camera label's verification code (EZVIZ: --encryption off needs it).",
)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def cameras_set(ctx: Context, camera_id: str, as_json: bool, code_stdin: bool, **opts: Any) -> None:
    """Change a camera's settings (an EZVIZ camera's go to the EZVIZ platform)."""

    require_migrated(ctx)
    code = sys.stdin.readline().strip() if code_stdin else None
    change_and_show(ctx, camera_id, with_picture_size(ctx, collect(opts)), as_json, code)


def change_and_show(
    ctx: Context, camera_id: str, changes: dict[str, Any], as_json: bool, code: str | None = None
) -> None:
    """Change a camera through the registry (its backend first) and print it as it is now."""
    from camvoice import cameras as registry

    try:
        ctx.services.registry.change(ctx.db, camera_id, changes, actor="cli", code=code)
    except registry.CameraError as exc:
        fail(str(exc))
    with ctx.db.reading() as session:
        shown = registry.describe(camera_or_fail(session, camera_id))
    emit(shown, as_json, camera_line)


@cameras.command("probe")
@click.argument("camera_id")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def cameras_probe(ctx: Context, camera_id: str, as_json: bool) -> None:
    """Read a camera's picture size from its stream again (Alexa's Discovery states it)."""
    require_migrated(ctx)
    from camvoice.sealing import Unsealable

    with ctx.db.reading() as session:
        camera = camera_or_fail(session, camera_id)
        try:
            source = ctx.services.registry.source_url(camera)
        except Unsealable as exc:
            fail(f"{exc}: set its source again")
    size = with_picture_size(ctx, {"source": source})
    if size.get("width") is None:
        fail(f"could not read a picture from camera {camera_id}'s source")
    change_and_show(ctx, camera_id, {"width": size["width"], "height": size["height"]}, as_json)


@cameras.command("remove")
@click.argument("camera_id")
@pass_ctx
def cameras_remove(ctx: Context, camera_id: str) -> None:
    """Remove a camera."""
    require_migrated(ctx)
    with ctx.db.session() as session:
        camera = camera_or_fail(session, camera_id)
        ctx.services.registry.remove(session, camera, actor="cli")
    click.echo(f"removed camera {camera_id}")


@cameras.command("list")
@click.option("--owner", help="Only this owner's cameras.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def cameras_list(ctx: Context, owner: str | None, as_json: bool) -> None:
    """List cameras with their readiness for Alexa and Google."""
    from camvoice import cameras as registry

    require_migrated(ctx)
    with ctx.db.reading() as session:
        owner_id = owner_or_fail(session, owner).id if owner else None
        rows = [registry.describe(c) for c in registry.all_cameras(session, owner_id)]
    emit(rows, as_json, lambda d: "\n".join(camera_line(r) for r in d))


# --- backends -------------------------------------------------------------------------------


@main.group()
def backends() -> None:
    """Camera clouds an owner's cameras come from (EZVIZ Open Platform)."""


@backends.command("add")
@click.argument("kind", type=click.Choice(["ezviz"]))
@click.option("--owner", required=True, help="Owner's email.")
@click.option("--app-key", required=True, help="The Open Platform application's AppKey.")
@click.option("--app-secret-stdin", is_flag=True, required=True, help="Read the AppSecret.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def backends_add(
    ctx: Context, kind: str, owner: str, app_key: str, app_secret_stdin: bool, as_json: bool
) -> None:
    """Link an owner's EZVIZ account and import its cameras (the secret is read from stdin)."""
    from backends.ezviz import sync as ezviz
    from camvoice.cameras import CameraError

    require_migrated(ctx)
    secret = sys.stdin.readline().strip()
    with ctx.db.session() as session:
        account = owner_or_fail(session, owner)
    try:
        ezviz.link_account(ctx.services, account, app_key, secret, actor="cli")
        report = ezviz.sync_now(ctx.services, account.id)
    except ezviz.SyncFailed as exc:
        fail(f"keys saved, but the first sync failed: {exc}; the worker retries")
    except CameraError as exc:
        fail(str(exc))
    shown = {"owner": owner, "backend": kind, **vars(report)}
    emit(shown, as_json, lambda d: f"linked EZVIZ for {owner}: {d['added']} cameras imported")


@backends.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def backends_list(ctx: Context, as_json: bool) -> None:
    """Linked camera-cloud accounts and how their sync goes (never the secret)."""
    from sqlalchemy import select

    from backends.ezviz.models import EzvizLink
    from camvoice.models import Account

    require_migrated(ctx)
    with ctx.db.reading() as session:
        rows = [
            {
                "owner": account.email,
                "backend": "ezviz",
                "app_key": link.app_key,
                "region": link.area_domain,
                "last_sync_at": link.last_sync_at,
                "next_sync_at": link.next_sync_at,
                "last_error": link.last_error,
            }
            for link, account in session.execute(
                select(EzvizLink, Account).join(Account, Account.id == EzvizLink.account_id)
            )
        ]
    emit(rows, as_json, lambda d: "\n".join(
        f"{r['owner']}\tezviz\t{r['app_key']}\t{r['last_error'] or 'ok'}" for r in d))  # fmt: skip


@backends.command("sync")
@click.option("--owner", required=True, help="Owner's email.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def backends_sync(ctx: Context, owner: str, as_json: bool) -> None:
    """Sync an owner's EZVIZ cameras now instead of waiting for the worker."""
    from backends.ezviz import sync as ezviz
    from backends.ezviz.models import EzvizLink

    require_migrated(ctx)
    with ctx.db.session() as session:
        account = owner_or_fail(session, owner)
        if session.get(EzvizLink, account.id) is None:
            fail(f"{owner} has no EZVIZ account linked")
    try:
        report = ezviz.sync_now(ctx.services, account.id)
    except ezviz.SyncFailed as exc:
        fail(f"sync failed: {exc}")
    emit(vars(report), as_json, lambda d: ", ".join(f"{k} {v}" for k, v in d.items()))


@backends.command("remove")
@click.argument("kind", type=click.Choice(["ezviz"]))
@click.option("--owner", required=True, help="Owner's email.")
@pass_ctx
def backends_remove(ctx: Context, kind: str, owner: str) -> None:
    """Forget an owner's EZVIZ keys and remove the cameras that came from it."""
    from backends.ezviz import sync as ezviz
    from camvoice.cameras import CameraError

    require_migrated(ctx)
    try:
        with ctx.db.session() as session:
            account = owner_or_fail(session, owner)
            removed = ezviz.unlink_account(session, ctx.services.registry, account, actor="cli")
    except CameraError as exc:
        fail(str(exc))
    click.echo(f"unlinked EZVIZ for {owner}; removed {removed} cameras")


# --- processes ------------------------------------------------------------------------------


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int)
@click.option("--threads", default=4, show_default=True, type=int, help="threads per worker")
@pass_ctx
def serve(ctx: Context, host: str, port: int, workers: int, threads: int) -> None:
    """Serve the web app under gunicorn (and the RTSPS relay when enabled)."""
    from service.app import WORKER_IMPORTS

    require_migrated(ctx)
    shared_metrics(ctx.settings)
    with rtsps_relay(ctx.settings, port), media_node(ctx.settings):
        run_gunicorn(host, port, workers, threads=threads, log_format=ctx.settings.log_format,
                     shared=WORKER_IMPORTS)  # fmt: skip


def shared_metrics(settings: Settings) -> None:
    """With /metrics on, gunicorn's workers (and the media node) share an emptied
    PROMETHEUS_MULTIPROC_DIR (the operator's, or one under the data dir) before any starts."""
    from service.metrics import MULTIPROC_ENV, share_between_workers

    if settings.metrics_token is not None:
        folder = os.environ.get(MULTIPROC_ENV) or str(settings.data_dir / "prometheus")
        share_between_workers(Path(folder))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@pass_ctx
def demo(ctx: Context, host: str, port: int) -> None:
    """Migrate, create the demo account and cameras, and serve."""
    from camvoice.settings import load_settings
    from media.rtsps import gstreamer_available, self_signed
    from service.app import WORKER_IMPORTS
    from service.demo import DEMO_EMAIL, DEMO_PASSWORD, seed

    ctx.db.upgrade()
    with ctx.db.session() as session:
        account = seed(session, ctx.services.registry)
        count = len(account.cameras)
    ctx.db.dispose()
    # The demo works end to end out of the box: the simulator signs smart-home directives like
    # the Lambda forwarder (a secret derived from the key), and the RTSPS relay runs when
    # GStreamer is installed (with a self-signed certificate made once).
    base = ctx.settings
    derived = hmac.new(base.key().encode(), b"demo forwarder", hashlib.sha256).hexdigest()
    os.environ.setdefault("CAMVOICE_ALEXA_FORWARDER_SECRET", derived)
    if gstreamer_available():
        os.environ.setdefault("CAMVOICE_RELAY_ENABLED", "true")
    settings = load_settings()
    if settings.relay_enabled and not settings.rtsps_cert:
        cert, key = settings.data_dir / "rtsps-cert.pem", settings.data_dir / "rtsps-key.pem"
        if not cert.exists():
            self_signed(cert, key, urlsplit(settings.public_url).hostname or "127.0.0.1")
        os.environ["CAMVOICE_RTSPS_CERT"], os.environ["CAMVOICE_RTSPS_KEY"] = str(cert), str(key)
        settings = load_settings()
    click.echo(f"camvoice demo on http://{host}:{port}")
    click.echo(f"  sign in as {DEMO_EMAIL} / {DEMO_PASSWORD} ({count} cameras)")
    click.echo(f"  then open http://{host}:{port}/simulator and say: show the front door camera")
    shared_metrics(settings)
    with rtsps_relay(settings, port), media_node(settings):
        run_gunicorn(host, port, workers=2, log_format=settings.log_format, shared=WORKER_IMPORTS)


@contextmanager
def rtsps_relay(settings: Settings, port: int) -> Iterator[None]:
    """Run the RTSPS relay beside the web app when enabled; the app runs either way."""
    from media.rtsps import relay_problem, start_relay
    from service.app import configure_logging

    if not settings.relay_enabled:
        yield
        return
    configure_logging(
        settings.log_level, settings.log_format
    )  # the relay's output is logged by this process
    problem = relay_problem(settings)
    if problem:
        click.echo(f"warning: RTSPS relay not started: {problem}", err=True)
        yield
        return
    process = start_relay(settings, f"http://127.0.0.1:{port}")
    try:
        yield
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def media_node(settings: Settings) -> Iterator[None]:
    """Without CAMVOICE_MEDIA_URLS, one `camvoice media` child on loopback holds every WebRTC
    session of this instance: gunicorn's workers each forward to it, so one camera watched
    through two workers is still pulled once. Its address reaches the workers through the
    environment they inherit."""
    if settings.media_urls:
        yield
        return
    from media.relay import die_with_parent

    port = free_port()
    child = subprocess.Popen(  # forked by the main thread, so it dies with `serve` (even killed)
        [sys.executable, "-m", "service.cli", "media", "--host", "127.0.0.1", "--port", str(port)],
        preexec_fn=die_with_parent,  # prctl must run in the child
    )
    os.environ["CAMVOICE_MEDIA_URLS"] = f"http://127.0.0.1:{port}"
    try:
        # Listening before gunicorn starts: once /readyz answers, an offer finds its node.
        wait_until_listening(child, port, MEDIA_NODE_START)
        yield
    finally:
        os.environ.pop("CAMVOICE_MEDIA_URLS", None)
        child.terminate()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


MEDIA_NODE_START = 60.0  # seconds a media child may take to listen (imports, migrations check)


def wait_until_listening(child: subprocess.Popen[bytes], port: int, seconds: float) -> None:
    """Until the child accepts connections on `port`; a child that exits or never listens
    stops `serve` with the reason rather than leaving every offer to fail."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise click.ClickException(f"the media node exited ({child.returncode}) at start")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise click.ClickException(f"the media node did not listen within {seconds:.0f} s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8090, show_default=True, type=int)
@click.option("--threads", default=16, show_default=True, type=int)
@pass_ctx
def media(ctx: Context, host: str, port: int, threads: int) -> None:
    """Run a media node: WebRTC sessions for web processes listing it in CAMVOICE_MEDIA_URLS.

    One process by design (its sessions live in memory); run more nodes to scale out."""
    require_migrated(ctx)
    run_gunicorn(host, port, 1, "service.media_node:create_media_app", threads,
                 ctx.settings.log_format)  # fmt: skip


@main.command()
@click.option(
    "--app-url",
    default="http://127.0.0.1:8080",
    show_default=True,
    help="Where the relay asks camvoice about tickets.",
)
@pass_ctx
def relay(ctx: Context, app_url: str) -> None:
    """Run the RTSPS relay (GStreamer) in the foreground."""
    from media.rtsps import relay_problem, start_relay
    from service.app import configure_logging

    problem = relay_problem(ctx.settings.model_copy(update={"relay_enabled": True}))
    if problem:
        fail(f"cannot run the RTSPS relay: {problem}")
    configure_logging(
        ctx.settings.log_level, ctx.settings.log_format
    )  # the relay's output is logged by this process
    process = start_relay(ctx.settings, app_url)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: process.terminate())
    sys.exit(process.wait())


@main.command()
@pass_ctx
def doctor(ctx: Context) -> None:
    """Check what this installation can do, and say what is missing."""
    from media.relay import find_ffmpeg
    from media.rtsps import relay_problem

    settings = ctx.settings
    checks: list[tuple[str, str | None]] = []
    try:
        pending = ctx.db.pending_migrations()
        checks.append(("database", "not migrated: run camvoice db upgrade" if pending else None))
    except Exception as exc:
        checks.append(("database", f"unreachable ({type(exc).__name__})"))
    ffmpeg = find_ffmpeg(settings.ffmpeg)
    checks.append(
        ("ffmpeg (HLS relay)", None if ffmpeg else "not found: pip install imageio-ffmpeg")
    )
    checks.append(("RTSPS relay (Alexa)", relay_problem(settings)))
    port = settings.rtsps_url_port()
    checks.append((
        "RTSPS port (Alexa)",
        None if port == 443 else f"stream URLs name port {port}; Alexa plays RTSPS on 443 only, "
        "so Discovery leaves the camera stream out: set CAMVOICE_RTSPS_PORT=443, or forward 443 "
        "to the relay and set CAMVOICE_RTSPS_PUBLIC_PORT=443",
    ))  # fmt: skip
    https = settings.public_url.startswith("https://")
    checks.append(("public URL", None if https else f"{settings.public_url} is not https"))
    for name, problem in checks:
        click.echo(
            f"{'ok  ' if problem is None else 'FAIL'}  {name}" + (f": {problem}" if problem else "")
        )


@main.command()
@pass_ctx
def worker(ctx: Context) -> None:
    """Deliver outbox events and sync EZVIZ accounts until stopped (SIGINT/SIGTERM)."""
    require_migrated(ctx)
    from backends.ezviz.sync import sync_due
    from camvoice.outbox import run_worker
    from camvoice.purge import PurgeSchedule
    from service.app import configure_logging

    configure_logging(ctx.settings.log_level, ctx.settings.log_format)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    services = ctx.services
    purge = PurgeSchedule(services.purger, ctx.db, ctx.settings.purge_interval)
    run_worker(
        ctx.db,
        services.outbox,
        ctx.settings.outbox_max_attempts,
        ctx.settings.worker_poll_interval,
        stop,
        periodic=lambda: purge() + sync_due(services),
    )


@main.command()
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def purge(ctx: Context, as_json: bool) -> None:
    """Remove expired codes, tokens, views, delivered events and old audit rows now (the worker
    does it every CAMVOICE_PURGE_INTERVAL seconds; this is for installations without one)."""
    require_migrated(ctx)
    removed = ctx.services.purger.run(ctx.db)
    emit(removed, as_json, lambda d: "\n".join(f"{k}\t{v}" for k, v in d.items()))


def run_gunicorn(
    host: str,
    port: int,
    workers: int,
    factory: str = "service.app:create_app",
    threads: int = 4,
    log_format: str = "text",
    shared: tuple[str, ...] = (),
) -> None:
    """Run an app (`module:function` building it) under gunicorn; each worker builds its own.

    Before gunicorn forks its workers, this process imports the factory's module and `shared`
    (modules only: no app, thread or connection exists before the fork) and freezes the garbage
    collector: the workers share those pages copy-on-write, and their collections never walk
    (so never write to, so never copy) the objects inherited. RSS counts shared pages in every
    worker; what a worker adds of its own (USS, bench/worker_memory.py) is what drops.
    """
    from gunicorn.app.base import BaseApplication

    from service.logs import gunicorn_logconfig
    from service.metrics import worker_exited

    logconfig = gunicorn_logconfig(log_format)

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", threads)
            self.cfg.set("timeout", 30)
            self.cfg.set("graceful_timeout", 10)
            self.cfg.set("accesslog", None)  # access lines would carry query strings (tickets)
            self.cfg.set("control_socket_disable", True)  # one per user: clashes side by side
            self.cfg.set("child_exit", worker_exited)  # its live gauges stop counting
            if logconfig:
                self.cfg.set("logconfig_dict", logconfig)

        def load(self) -> Any:
            module, function = factory.split(":")
            return getattr(importlib.import_module(module), function)()

    for module in (factory.split(":")[0], *shared):
        importlib.import_module(module)
    gc.freeze()
    Server().run()


def _register_adapter_commands() -> None:
    """The composition root adds the adapters' commands."""
    from oauth.cli import clients
    from skills.cli import alexa

    main.add_command(clients)
    main.add_command(alexa)


_register_adapter_commands()

if __name__ == "__main__":  # `python -m service.cli`: how `serve` starts its media node
    main()
