"""The custom skill's request handlers, in ask-sdk style: one class per intent or request type.

They resolve the owner from the linked account's access token, cameras from spoken names, and
readiness from the core's rules; a ready camera on a screen device gets VideoApp.Launch with an
HLS URL minted for Alexa. A URL is never spoken or shown on a card.
"""

from __future__ import annotations

import logging
from typing import Any

from ask_sdk_core.dispatch_components import AbstractExceptionHandler, AbstractRequestHandler
from ask_sdk_core.handler_input import HandlerInput
from ask_sdk_core.utils import (
    get_locale,
    get_slot,
    get_supported_interfaces,
    is_intent_name,
    is_request_type,
)
from ask_sdk_model import Response
from ask_sdk_model.dialog import ElicitSlotDirective
from ask_sdk_model.interfaces.videoapp import LaunchDirective, Metadata, VideoItem
from ask_sdk_model.ui import LinkAccountCard
from flask import current_app

from camvoice.cameras import CameraGone
from camvoice.models import Camera
from camvoice.names import resolve
from camvoice.readiness import Assistant, explain, readiness
from camvoice.services import Services
from camvoice.streams import StreamRefused, blockers_for
from camvoice.tickets import Audience, Protocol
from oauth.tokens import Principal, authenticate_bearer
from skills.custom.speech import join, language, say, say_count, ssml

log = logging.getLogger(__name__)


def lang_of(handler_input: HandlerInput) -> str:
    return language(get_locale(handler_input))


def services() -> Services:
    """The wiring of the app serving this request (the skill runs inside a Flask request)."""
    return Services.of(current_app)


def owner(handler_input: HandlerInput) -> Principal | None:
    token = handler_input.request_envelope.context.system.user.access_token
    with services().db.session() as session:
        result = authenticate_bearer(session, token, "alexa")
    return result if isinstance(result, Principal) else None


def cameras_of(principal: Principal) -> list[Camera]:
    with services().db.reading() as session:
        return services().registry.owned_cameras(session, principal.account_id)


def ask_to_link(handler_input: HandlerInput) -> Response:
    text = say(lang_of(handler_input), "link")
    return handler_input.response_builder.speak(ssml(text)).set_card(LinkAccountCard()).response


def status_sentence(lang: str, camera: Camera) -> str:
    """Online, sleep mode, and each prerequisite for Alexa and for Google."""
    alexa, google = readiness(camera, Assistant.ALEXA), readiness(camera, Assistant.GOOGLE)
    if not alexa and not google:
        return say(lang, "status_ok", name=camera.name)
    details = []
    if camera.online:
        details.append(say(lang, "online"))
    details.append(say(lang, "alexa_blocked", reasons=" ".join(explain(b, lang) for b in alexa))
                   if alexa else say(lang, "alexa_ready"))  # fmt: skip
    google_only = [b for b in google if b not in alexa]
    if google_only:
        details.append(say(lang, "google_blocked",
                           reasons=" ".join(explain(b, lang) for b in google_only)))  # fmt: skip
    elif not google:
        details.append(say(lang, "google_ready"))
    return say(lang, "status", name=camera.name, details=say(lang, "details").join(details))


def pick_camera(handler_input: HandlerInput, principal: Principal) -> Camera | Response:
    """The camera the owner named, or the response that asks which one / lists the options."""
    lang = lang_of(handler_input)
    slot = get_slot(handler_input, "camera")
    spoken = (slot.value if slot is not None else None) or ""
    cameras = cameras_of(principal)
    if not cameras:
        return handler_input.response_builder.speak(ssml(say(lang, "no_cameras"))).response
    matches = resolve(spoken, cameras)
    if len(matches) == 1:
        return matches[0]
    builder = handler_input.response_builder
    if matches:
        question = say(lang, "which", options=join(lang, [c.name for c in matches], "or"))
        return (
            builder.speak(ssml(question))
            .ask(ssml(question))
            .add_directive(ElicitSlotDirective(slot_to_elicit="camera"))
            .response
        )
    names = join(lang, [c.name for c in cameras])
    return builder.speak(ssml(say(lang, "no_match", spoken=spoken or "?", names=names))).response


def speak_and_ask(handler_input: HandlerInput, key: str) -> Response:
    """Say `key`, then keep the session open with the usual reprompt."""
    lang = lang_of(handler_input)
    return (
        handler_input.response_builder.speak(ssml(say(lang, key)))
        .ask(ssml(say(lang, "reprompt")))
        .response
    )


class LaunchHandler(AbstractRequestHandler):
    def can_handle(self, handler_input: HandlerInput) -> bool:
        return is_request_type("LaunchRequest")(handler_input)

    def handle(self, handler_input: HandlerInput) -> Response:
        if owner(handler_input) is None:
            return ask_to_link(handler_input)
        return speak_and_ask(handler_input, "welcome")


class ShowCameraHandler(AbstractRequestHandler):
    def can_handle(self, handler_input: HandlerInput) -> bool:
        return is_intent_name("ShowCameraIntent")(handler_input)

    def handle(self, handler_input: HandlerInput) -> Response:
        lang = lang_of(handler_input)
        principal = owner(handler_input)
        if principal is None:
            return ask_to_link(handler_input)
        camera = pick_camera(handler_input, principal)
        if not isinstance(camera, Camera):
            return camera
        builder = handler_input.response_builder
        screen = get_supported_interfaces(handler_input).video_app is not None
        if not screen and not blockers_for(camera, Audience.ALEXA, Protocol.HLS):
            text = say(lang, "no_screen", name=camera.name, status=status_sentence(lang, camera))
            return builder.speak(ssml(text)).response
        try:
            opened = services().streams.open(
                services().db, camera, Audience.ALEXA, Protocol.HLS, principal.grant_id
            )
        except CameraGone:
            return builder.speak(ssml(say(lang, "gone", name=camera.name))).response
        except StreamRefused as refused:
            reason = " ".join(explain(b, lang) for b in refused.blockers)
            return builder.speak(
                ssml(say(lang, "blocked", name=camera.name, reason=reason))
            ).response
        camera = opened.camera
        if not screen:  # the backend's check cleared a blocker the last known state had
            text = say(lang, "no_screen", name=camera.name, status=status_sentence(lang, camera))
            return builder.speak(ssml(text)).response
        video = VideoItem(source=opened.url, metadata=Metadata(title=camera.name,
                                                        subtitle=say(lang, "title")))  # fmt: skip
        builder.speak(ssml(say(lang, "showing", name=camera.name)))
        return builder.add_directive(LaunchDirective(video_item=video)).response


class ListCamerasHandler(AbstractRequestHandler):
    def can_handle(self, handler_input: HandlerInput) -> bool:
        return is_intent_name("ListCamerasIntent")(handler_input)

    def handle(self, handler_input: HandlerInput) -> Response:
        lang = lang_of(handler_input)
        principal = owner(handler_input)
        if principal is None:
            return ask_to_link(handler_input)
        cameras = cameras_of(principal)
        builder = handler_input.response_builder
        if not cameras:
            return builder.speak(ssml(say(lang, "no_cameras"))).response
        names = join(lang, [c.name for c in cameras])
        ready = [c.name for c in cameras if not readiness(c, Assistant.ALEXA)]
        if not ready:
            text = say_count(lang, "list_none_ready", len(cameras), names=names)
        else:
            text = say_count(lang, "list", len(cameras), names=names, ready=join(lang, ready))
        return builder.speak(ssml(text)).response


class CameraStatusHandler(AbstractRequestHandler):
    def can_handle(self, handler_input: HandlerInput) -> bool:
        return is_intent_name("CameraStatusIntent")(handler_input)

    def handle(self, handler_input: HandlerInput) -> Response:
        principal = owner(handler_input)
        if principal is None:
            return ask_to_link(handler_input)
        camera = pick_camera(handler_input, principal)
        if not isinstance(camera, Camera):
            return camera
        text = status_sentence(lang_of(handler_input), camera)
        return handler_input.response_builder.speak(ssml(text)).response


class HelpHandler(AbstractRequestHandler):
    def can_handle(self, handler_input: HandlerInput) -> bool:
        return is_intent_name("AMAZON.HelpIntent")(handler_input)

    def handle(self, handler_input: HandlerInput) -> Response:
        return speak_and_ask(handler_input, "help")


class StopHandler(AbstractRequestHandler):
    def can_handle(self, handler_input: HandlerInput) -> bool:
        return is_intent_name("AMAZON.StopIntent")(handler_input) or is_intent_name(
            "AMAZON.CancelIntent"
        )(handler_input)

    def handle(self, handler_input: HandlerInput) -> Response:
        text = say(lang_of(handler_input), "bye")
        return (
            handler_input.response_builder.speak(ssml(text)).set_should_end_session(True).response
        )


class FallbackHandler(AbstractRequestHandler):
    """AMAZON.FallbackIntent, and (listed after every other intent) an intent this code does
    not know, such as one from a newer interaction model: the fallback prompt, not an apology
    for a failure of ours."""

    def can_handle(self, handler_input: HandlerInput) -> bool:
        return is_request_type("IntentRequest")(handler_input)

    def handle(self, handler_input: HandlerInput) -> Response:
        if not is_intent_name("AMAZON.FallbackIntent")(handler_input):
            name = handler_input.request_envelope.request.intent.name  # type: ignore[attr-defined]
            log.warning("no handler for intent %r: answered as a fallback", name[:80])
        return speak_and_ask(handler_input, "fallback")


class SessionEndedHandler(AbstractRequestHandler):
    def can_handle(self, handler_input: HandlerInput) -> bool:
        return is_request_type("SessionEndedRequest")(handler_input)

    def handle(self, handler_input: HandlerInput) -> Response:
        return handler_input.response_builder.response


class ErrorHandler(AbstractExceptionHandler):
    """A spoken apology and a log line (type only: no tokens, no URLs), never a crash."""

    def can_handle(self, handler_input: HandlerInput, exception: Exception) -> bool:
        return True

    def handle(self, handler_input: HandlerInput, exception: Exception) -> Response:
        log.error("custom skill failed: %s", type(exception).__name__)
        text = say(lang_of(handler_input), "error")
        return handler_input.response_builder.speak(ssml(text)).response


REQUEST_HANDLERS: list[Any] = [
    LaunchHandler(), ShowCameraHandler(), ListCamerasHandler(), CameraStatusHandler(),
    HelpHandler(), StopHandler(), FallbackHandler(), SessionEndedHandler(),
]  # fmt: skip
