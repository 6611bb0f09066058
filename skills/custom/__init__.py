"""The Alexa custom skill ("Alexa, ask Camera Voice to show the garage") on ask-sdk-core,
served by flask-ask-sdk's SkillAdapter at POST /alexa/custom."""

from __future__ import annotations

import logging

from ask_sdk_core.exceptions import SerializationException
from ask_sdk_core.skill import CustomSkill
from ask_sdk_core.skill_builder import SkillBuilder
from ask_sdk_model import IntentRequest, RequestEnvelope
from flask import Flask, Response, jsonify, request
from flask_ask_sdk.skill_adapter import (
    VERIFY_SIGNATURE_APP_CONFIG,
    VERIFY_TIMESTAMP_APP_CONFIG,
    SkillAdapter,
)

from camvoice.settings import Settings
from skills.custom.handlers import REQUEST_HANDLERS, ErrorHandler

log = logging.getLogger(__name__)


def build_skill(skill_id: str | None) -> CustomSkill:
    builder = SkillBuilder()
    builder.skill_id = skill_id
    for handler in REQUEST_HANDLERS:
        builder.add_request_handler(handler)
    builder.add_exception_handler(ErrorHandler())
    return builder.create()


def init_app(app: Flask, settings: Settings) -> None:
    """Mount the skill. Signature and timestamp checks stay on unless settings turn them off."""
    # SkillAdapter reads these when it is constructed: set them first.
    app.config[VERIFY_SIGNATURE_APP_CONFIG] = settings.alexa_verify_requests
    app.config[VERIFY_TIMESTAMP_APP_CONFIG] = settings.alexa_verify_requests
    if not settings.alexa_verify_requests:
        log.warning("Alexa request signature checks are OFF (CAMVOICE_ALEXA_VERIFY_REQUESTS): "
                    "only for local tests")  # fmt: skip
    skill = build_skill(settings.alexa_skill_id)
    app.extensions["camvoice.custom_skill"] = skill  # the console's simulator invokes it too
    adapter = SkillAdapter(skill=skill, skill_id=settings.alexa_skill_id or "camvoice", app=app)

    def custom_skill() -> Response:
        """Refuse what the SDK would turn into a 500 or a handler crash: bodies that are not
        JSON (or too deep, or unstorable: the app's JSON provider gives None), envelopes its
        models cannot hold or that lack what every handler reads, and foreign skills."""
        envelope = request.get_json(force=True, silent=True)
        try:
            application = envelope["context"]["System"]["application"]["applicationId"]
            parsed = skill.serializer.deserialize(
                payload=request.get_data(as_text=True), obj_type=RequestEnvelope
            )
        except (KeyError, TypeError, SerializationException):
            return refuse("body is not an Alexa request envelope")
        if not complete(parsed):
            return refuse("body is not an Alexa request envelope")
        if settings.alexa_skill_id and application != settings.alexa_skill_id:
            return refuse("request is for another skill")
        return adapter.dispatch_request()  # type: ignore[no-any-return]

    app.add_url_rule("/alexa/custom", "alexa_custom", custom_skill, methods=["POST"])


def complete(envelope: RequestEnvelope) -> bool:
    """What Alexa always sends and the handlers read: a request, the user, an intent's name."""
    req, context = envelope.request, envelope.context
    if req is None or context is None or context.system is None or context.system.user is None:
        return False
    return not isinstance(req, IntentRequest) or (
        req.intent is not None and isinstance(req.intent.name, str)
    )


def refuse(message: str) -> Response:
    response = jsonify(error="bad_request", message=message)
    response.status_code = 400
    return response
