"""The owner's console: readiness matrix with fixes, live view, linked assistants, activity,
and the voice simulator. Server-rendered in the reader's language (gettext), CSRF on every
form, a strict CSP."""

from __future__ import annotations

import contextlib
import json
from datetime import timedelta
from typing import Any

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_babel import get_locale, gettext, ngettext
from sqlalchemy import select

from camvoice import audit
from camvoice.accounts import authenticate
from camvoice.cameras import CameraError, CameraGone, NoSuchCamera, protocols
from camvoice.languages import html_lang
from camvoice.models import Account, Camera, utcnow
from camvoice.owner_data import delete_account, export_account
from camvoice.ratelimit import attempt, sign_in_limits
from camvoice.readiness import Assistant, explain, readiness
from camvoice.services import Services
from camvoice.sessions import COOKIE
from camvoice.streams import StreamRefused
from camvoice.tickets import Audience, Protocol
from console import charts
from console.simulator import SESSION_EVENTS, alexa_session_event, local, simulate
from oauth.tokens import live_links, owns_link, revoke_grant

bp = Blueprint(
    "console",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/console/static",
)

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob:; connect-src 'self'; worker-src 'self' blob:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
FIXES: dict[str, dict[str, bool]] = {
    "encryption": {"image_encryption": False},
    "audio": {"audio": True},
    "wake": {"sleep_mode": False},
}
ASSISTANTS = ("alexa_smart_home", "alexa_custom", "google")
MAX_OFFER = 64 * 1024  # a browser's offer is a few kB
EXAMPLES = [
    "show the front door camera",
    "show the garage camera",
    "muestra la cámara del garaje",
    "show the nursery on the living room TV",
]
# What an owner would say in the page's language, offered first (the demo cameras' nicknames).
LOCAL_EXAMPLES: dict[str, list[str]] = {
    "de": ["zeige die Kamera Haustür", "zeige die Kamera Garage",
           "zeige das Kinderzimmer auf dem Fernseher"],
    "fr": ["montre la caméra porte d'entrée", "montre la caméra du garage",
           "montre la chambre de bébé sur la télé"],
    "it": ["mostra la telecamera porta d'ingresso", "mostra la telecamera del garage",
           "mostra la cameretta sulla TV"],
    "pt_BR": ["mostre a câmera porta da frente", "mostre a câmera da garagem",
              "mostre o quarto do bebê na TV"],
    "ja": ["玄関のカメラを見せて", "ガレージのカメラを見せて", "テレビで子供部屋を見せて"],
}  # fmt: skip


@bp.after_request
def headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def services() -> Services:
    return Services.of(current_app)


def language() -> str:
    """The locale Flask-Babel negotiated from Accept-Language ('es', 'pt_BR')."""
    return str(get_locale())


def assistant_labels() -> dict[str, str]:
    """The simulator's assistants, named in the owner's language."""
    return {
        "alexa_smart_home": gettext("Alexa (smart home)"),
        "alexa_custom": gettext("Alexa (custom skill)"),
        "google": gettext("Google Assistant"),
    }


def owner() -> Account:
    """The owner whose live server-side session the cookie names (its reference kept in `g`
    for the streams this request opens); anyone else is sent to sign in first."""
    signed_in = services().sessions.signed_in(services().db, request.cookies.get(COOKIE))
    account = None
    if signed_in is not None:
        g.session_ref = signed_in.ref
        with services().db.reading() as db_session:
            account = db_session.get(Account, signed_in.account_id)
    if account is None:
        abort(redirect(url_for("oauth.login_form", next=request.full_path.rstrip("?"))))
    return account  # type: ignore[return-value]


def page(template: str, **context: Any) -> str:
    return render_template(f"console/{template}", lang=html_lang(language()), **context)


@bp.get("/")
def home() -> Response:
    return redirect(url_for("console.cameras"))  # type: ignore[return-value]


@bp.get("/console")
def cameras(problem: str | None = None) -> str:
    account = owner()
    lang = language()
    cloud = services().registry.cloud("ezviz")
    link = cloud.link_of(account.id) if cloud is not None else None
    with services().db.reading() as db_session:
        rows = []
        for camera in services().registry.owned_cameras(db_session, account.id):
            row: dict[str, Any] = {"camera": camera}
            for assistant in Assistant:
                row[assistant.value] = [
                    (b.value, explain(b, lang)) for b in readiness(camera, assistant)
                ]
            rows.append(row)
    return page("cameras.html", account=account, rows=rows, ezviz=link, problem=problem)


@bp.post("/console/cameras/<camera_id>/fix")
def fix(camera_id: str) -> Response:
    account = owner()
    action = request.form.get("fix", "")
    if action not in FIXES:
        abort(400, description="unknown fix")
    if action == "encryption" and request.form.get("confirm") != "yes":
        abort(400, description="turning off Image Encryption needs your explicit confirmation")
    try:
        services().registry.change(services().db, camera_id, dict(FIXES[action]),
                                   actor=f"owner:{account.id}", owner_id=account.id,
                                   code=request.form.get("code"))  # fmt: skip
    except NoSuchCamera:
        abort(404)
    except CameraError as exc:
        return Response(cameras(problem=str(exc)), status=400)
    return redirect(url_for("console.cameras"), code=303)  # type: ignore[return-value]


@bp.post("/console/ezviz")
def link_ezviz() -> Response:
    """The owner's own EZVIZ Open Platform keys: checked and kept sealed; the worker imports
    the cameras while the console shows the import in progress."""
    account = owner()
    cloud = services().registry.cloud("ezviz")
    if cloud is None:
        abort(404)
    keys = {name: request.form.get(name, "") for name in ("app_key", "app_secret")}
    try:
        cloud.link(account, keys, f"owner:{account.id}")
    except CameraError as exc:
        return Response(cameras(problem=str(exc)), status=400)
    return redirect(url_for("console.cameras"), code=303)  # type: ignore[return-value]


@bp.get("/console/cameras/<camera_id>/live")
def live(camera_id: str) -> str:
    """WebRTC first (sub-second), with an HLS URL minted beside it for the page to fall back
    on; HLS alone for a source that cannot be served over WebRTC (a camera cloud's HLS)."""
    account = owner()
    with services().db.reading() as db_session:
        camera = services().registry.owned_camera(db_session, account.id, camera_id)
    if camera is None:
        abort(404)
    streams, settings = services().streams, services().settings
    webrtc = hls = None
    reasons: list[str] = []
    try:
        if Protocol.WEBRTC in protocols(camera):
            opened = streams.open(services().db, camera, Audience.WEB, Protocol.WEBRTC,
                                  session_ref=g.session_ref, fallback="hls")  # fmt: skip
            webrtc = {"signal": local(opened.url, settings), "ticket": opened.token}
            hls_url = streams.mint(opened.camera, Protocol.HLS, Audience.WEB,
                                   session_ref=g.session_ref)  # fmt: skip
        else:
            opened = streams.open(services().db, camera, Audience.WEB, Protocol.HLS,
                                  session_ref=g.session_ref)  # fmt: skip
            hls_url = opened.url
        camera, hls = opened.camera, local(hls_url, settings)
    except CameraGone:  # removed by its backend
        abort(404)
    except StreamRefused as refused:  # the page says why
        reasons = [explain(blocker, language()) for blocker in refused.blockers]
    return page("live.html", account=account, camera=camera, webrtc=webrtc, hls=hls,
                reasons=reasons, ice_servers=browser_ice_servers())  # fmt: skip


def browser_ice_servers() -> list[dict[str, Any]]:
    """The STUN/TURN servers a page's peer connection uses, TURN credentials minted for it."""
    return services().settings.ice_server_list()


@bp.get("/console/links")
def links() -> str:
    account = owner()
    with services().db.reading() as db_session:
        grants = live_links(db_session, account.id)
    return page("links.html", account=account, grants=grants)


@bp.post("/console/links/<grant_id>/unlink")
def unlink(grant_id: str) -> Response:
    account = owner()
    with services().db.session() as db_session:
        if not owns_link(db_session, account.id, grant_id):
            abort(404)
        revoke_grant(db_session, grant_id, "unlinked_by_owner", actor=f"owner:{account.id}")
    return redirect(url_for("console.links"), code=303)  # type: ignore[return-value]


@bp.get("/console/activity")
def activity() -> str:
    account = owner()
    with services().db.reading() as db_session:
        events = audit.recent(db_session, account.id, limit=200)
        names = {
            c.id: c.name
            for c in db_session.scalars(
                select(Camera).where(Camera.owner_id == account.id).order_by(Camera.name)
            )
        }
        views = charts.view_charts(db_session, account.id, names, utcnow().date())
    return page("activity.html", account=account, events=events, names=names, charts=views,
                chart_width=charts.WIDTH, chart_height=charts.HEIGHT,
                bar_width=charts.BAR)  # fmt: skip


@bp.get("/console/account")
def account_page(problem: str | None = None) -> str:
    return page("account.html", account=owner(), problem=problem)


@bp.get("/console/account/export")
def account_export() -> Response:
    """The owner's data as a JSON download (camvoice/owner_data.py: no secret, token or hash)."""
    account = owner()
    with services().db.reading() as db_session:
        data = export_account(db_session, services().owner_data, account)
    body = json.dumps(data, indent=2, ensure_ascii=False)
    return Response(body, mimetype="application/json", headers={
        "Content-Disposition": 'attachment; filename="camvoice-export.json"'})  # fmt: skip


@bp.post("/console/account/delete")
def account_delete() -> Response | str:
    """Delete the signed-in owner's account, with their password again (counted against the
    sign-in limits, so this form is no way around them). Everything ends at once, this
    browser's session included; Alexa and Google are told by the worker."""
    account = owner()
    settings, limiter = services().settings, services().limiter
    keys = sign_in_limits(settings, account.email, request.remote_addr or "unknown")
    wait = attempt(limiter, keys, timedelta(seconds=settings.login_window))
    if wait:
        problem = ngettext(
            "Too many attempts; try again in %(num)d minute.",
            "Too many attempts; try again in %(num)d minutes.",
            max(1, round(wait / 60)),
        )
        return Response(account_page(problem), 429, headers={"Retry-After": str(wait)})
    checked = authenticate(services().db, account.email, request.form.get("password", ""))
    if checked is not None:
        with services().db.session() as db_session:
            gone = db_session.get(Account, checked)
            if gone is not None:  # not deleted meanwhile (by the CLI, or another tab)
                delete_account(db_session, services().owner_data, services().outbox, gone,
                               key=settings.key(), actor="owner")  # fmt: skip
    if checked is None:
        return Response(
            account_page(gettext("That password is not right; nothing was deleted.")), 400
        )
    for key, _ in keys:
        limiter.forgive(key)  # the password was right: this attempt counts against nothing
    response = Response(page("deleted.html"))
    response.delete_cookie(COOKIE, httponly=True, samesite="Lax",
                           secure=current_app.config["SESSION_COOKIE_SECURE"])  # fmt: skip
    return response


@bp.route("/simulator", methods=["GET", "POST"])
def simulator() -> str:
    account = owner()
    examples = LOCAL_EXAMPLES.get(language(), []) + EXAMPLES
    context: dict[str, Any] = {
        "account": account,
        "assistants": assistant_labels(),
        "examples": examples,
        "assistant": "alexa_smart_home",
        "utterance": examples[0],
        "ice_servers": browser_ice_servers(),  # the simulated Echo Show's own
    }
    if request.method == "POST":
        assistant = request.form.get("assistant", "")
        utterance = request.form.get("utterance", "")[:200]
        if assistant not in ASSISTANTS or not utterance.strip():
            abort(400, description="pick an assistant and type what you would say")
        offer = request.form.get("offer", "") or None
        if offer is not None and len(offer) > MAX_OFFER:
            abort(400, description="that offer is too long for an SDP offer")
        outcome, camera = simulate(services(), account.id, assistant, utterance, language(),
                                   offer)  # fmt: skip
        web_hls = None
        if assistant == "alexa_smart_home" and outcome.snapshot and camera is not None:
            # The page cannot play RTSPS: it shows the same camera over HLS for the web.
            with contextlib.suppress(StreamRefused, CameraGone):
                opened = services().streams.open(
                    services().db, camera, Audience.WEB, Protocol.HLS, session_ref=g.session_ref
                )
                web_hls = local(opened.url, services().settings)
        context |= {
            "assistant": assistant,
            "utterance": utterance,
            "outcome": outcome,
            "camera": camera,
            "request_json": json.dumps(outcome.request, indent=2, ensure_ascii=False),
            "response_json": json.dumps(outcome.response, indent=2, ensure_ascii=False),
            "web_hls": web_hls,
        }
    return page("simulator.html", **context)


@bp.post("/simulator/session")
def simulator_session() -> Response:
    """The simulated Echo Show's SessionConnected / SessionDisconnected (its page posts them,
    with the form's CSRF token), sent through the smart-home handler as Alexa sends them."""
    account = owner()
    event = request.form.get("event", "")
    camera_id, session_id = request.form.get("camera", ""), request.form.get("session", "")
    if (
        event not in SESSION_EVENTS
        or not 0 < len(camera_id) <= 64
        or not 0 < len(session_id) <= 256
    ):
        abort(400, description="name the event, the camera and the session")
    error = alexa_session_event(services(), account.id, camera_id, session_id, event)
    if error is not None:
        abort(400, description=f"Alexa's handler answered {error}")
    return Response(status=204)
