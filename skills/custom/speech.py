"""Everything the custom skill says, in English (en-US) and Spanish (es-ES)."""

from __future__ import annotations

from xml.sax.saxutils import escape

SPEECH: dict[str, dict[str, str]] = {
    "en": {
        "welcome": "Welcome to Camera Voice. You can say: show the front door, or list my cameras.",
        "reprompt": "Which camera would you like to see?",
        "link": "To use Camera Voice, link your camera account in the Alexa app. I've sent a card.",
        "showing": "Here is the {name}.",
        "no_screen": "This device has no screen, so I can't show the {name}. {status}",
        "blocked": "I can't show the {name}. {reason}",
        "which": "Did you mean {options}?",
        "no_match": "I couldn't find a camera called {spoken}. Your cameras are: {names}.",
        "no_cameras": "You don't have any cameras yet.",
        "gone": "The {name} is no longer in your camera account.",
        "list": "You have {count} cameras: {names}. Ready to show now: {ready}.",
        "list_none_ready": "You have {count} cameras: {names}. None can be shown right now.",
        "status_ok": "The {name} is online and ready for Alexa and Google.",
        "status": "The {name}: {details}",
        "online": "it is online",
        "alexa_ready": "Alexa can show it",
        "google_ready": "Google can show it",
        "alexa_blocked": "For Alexa: {reasons}",
        "google_blocked": "For Google: {reasons}",
        "help": "Ask me to show a camera, for example: show the front door. Or ask: what's wrong "
        "with the garage camera, or list my cameras.",
        "bye": "Goodbye.",
        "fallback": "Sorry, I didn't get that. You can say: show the front door.",
        "error": "Sorry, something went wrong on my side. Please try again in a moment.",
        "and": "and",
        "or": "or",
        "title": "Camera Voice",
    },
    "es": {
        "welcome": "Bienvenido a Camera Voice. Puedes decir: muestra la puerta principal, o "
        "lista mis cámaras.",
        "reprompt": "¿Qué cámara quieres ver?",
        "link": "Para usar Camera Voice, vincula tu cuenta de cámaras en la aplicación Alexa. Te "
        "he enviado una tarjeta.",
        "showing": "Aquí tienes la cámara {name}.",
        "no_screen": "Este dispositivo no tiene pantalla, así que no puedo mostrar la cámara "
        "{name}. {status}",
        "blocked": "No puedo mostrar la cámara {name}. {reason}",
        "which": "¿Te refieres a {options}?",
        "no_match": "No encuentro ninguna cámara llamada {spoken}. Tus cámaras son: {names}.",
        "no_cameras": "Todavía no tienes cámaras.",
        "gone": "La cámara {name} ya no está en tu cuenta de cámaras.",
        "list": "Tienes {count} cámaras: {names}. Se pueden mostrar ahora: {ready}.",
        "list_none_ready": "Tienes {count} cámaras: {names}. Ninguna se puede mostrar ahora.",
        "status_ok": "La cámara {name} está en línea y lista para Alexa y Google.",
        "status": "La cámara {name}: {details}",
        "online": "está en línea",
        "alexa_ready": "Alexa puede mostrarla",
        "google_ready": "Google puede mostrarla",
        "alexa_blocked": "Para Alexa: {reasons}",
        "google_blocked": "Para Google: {reasons}",
        "help": "Pídeme que muestre una cámara, por ejemplo: muestra la puerta principal. O "
        "pregunta: qué le pasa a la cámara del garaje, o lista mis cámaras.",
        "bye": "Adiós.",
        "fallback": "Perdona, no te he entendido. Puedes decir: muestra la puerta principal.",
        "error": "Lo siento, algo ha fallado por mi parte. Inténtalo de nuevo en un momento.",
        "and": "y",
        "or": "o",
        "title": "Camera Voice",
    },
}


def ssml(text: str) -> str:
    """Speech as SSML text: camera names, spoken words and reasons are the owner's or the
    caller's, so `&`, `<` and `>` are escaped (a name like `<audio src=...>` stays words).
    Every speak() and ask() of the skill passes through here, after the sentence is built."""
    return escape(text, {'"': "&quot;"})


def language(locale: str | None) -> str:
    return "es" if (locale or "").lower().startswith("es") else "en"


def say(lang: str, key: str, **values: object) -> str:
    return SPEECH[lang][key].format(**values)


def join(lang: str, items: list[str], word: str = "and") -> str:
    """'a, b and c' / 'a, b y c'."""
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} {SPEECH[lang][word]} {items[-1]}"
