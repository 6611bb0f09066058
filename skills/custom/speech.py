"""Everything the custom skill says: English msgids, translated by the shared catalogs."""

from __future__ import annotations

from xml.sax.saxutils import escape

from camvoice.languages import DEFAULT, N_, NP_, catalog, locale_of, translate

# The skill's sentences in English: the msgids of its translations (camvoice/translations).
SPEECH: dict[str, str] = {
    "welcome": N_("Welcome to Camera Voice. You can say: show the front door, or list my cameras."),
    "reprompt": N_("Which camera would you like to see?"),
    "link": N_("To use Camera Voice, link your camera account in the Alexa app. I've sent a card."),
    "showing": N_("Here is the %(name)s."),
    "no_screen": N_("This device has no screen, so I can't show the %(name)s. %(status)s"),
    "blocked": N_("I can't show the %(name)s. %(reason)s"),
    "which": N_("Did you mean %(options)s?"),
    "no_match": N_("I couldn't find a camera called %(spoken)s. Your cameras are: %(names)s."),
    "no_cameras": N_("You don't have any cameras yet."),
    "gone": N_("The %(name)s is no longer in your camera account."),
    "status_ok": N_("The %(name)s is online and ready for Alexa and Google."),
    "status": N_("The %(name)s: %(details)s"),
    "online": N_("it is online"),
    "alexa_ready": N_("Alexa can show it"),
    "google_ready": N_("Google can show it"),
    "alexa_blocked": N_("For Alexa: %(reasons)s"),
    "google_blocked": N_("For Google: %(reasons)s"),
    "help": N_(
        "Ask me to show a camera, for example: show the front door. Or ask: what's wrong "
        "with the garage camera, or list my cameras."
    ),
    "bye": N_("Goodbye."),
    "fallback": N_("Sorry, I didn't get that. You can say: show the front door."),
    "error": N_("Sorry, something went wrong on my side. Please try again in a moment."),
    # TRANSLATORS: between the items of a spoken list, before the last one ("a, b and c").
    "separator": N_(", "),
    "and": N_("%(items)s and %(last)s"),
    "or": N_("%(items)s or %(last)s"),
    "title": N_("Camera Voice"),
    # TRANSLATORS: between the parts of a camera's status ("it is online. Alexa can show it").
    "details": N_(". "),
}
# Sentences that count cameras: (singular, plural) msgids, chosen by the language's plural rule.
COUNTED: dict[str, tuple[str, str]] = {
    "list": NP_(
        "You have %(count)d camera: %(names)s. Ready to show now: %(ready)s.",
        "You have %(count)d cameras: %(names)s. Ready to show now: %(ready)s.",
    ),
    "list_none_ready": NP_(
        "You have %(count)d camera: %(names)s. None can be shown right now.",
        "You have %(count)d cameras: %(names)s. None can be shown right now.",
    ),
}


def ssml(text: str) -> str:
    """Speech as SSML text: camera names, spoken words and reasons are the owner's or the
    caller's, so `&`, `<` and `>` are escaped (a name like `<audio src=...>` stays words).
    Every speak() and ask() of the skill passes through here, after the sentence is built."""
    return escape(text, {'"': "&quot;"})


def language(locale: str | None) -> str:
    """The catalog for a request's locale ('de-DE' -> 'de'); English when we lack its language."""
    return locale_of(locale) or DEFAULT


def say(lang: str, key: str, **values: object) -> str:
    """A sentence of the skill in `lang`, placeholders filled in."""
    return translate(lang, SPEECH[key], **values)


def say_count(lang: str, key: str, count: int, **values: object) -> str:
    """A sentence that counts, in the plural form `count` takes in `lang`."""
    singular, plural = COUNTED[key]
    return catalog(lang).ngettext(singular, plural, count) % {"count": count, **values}


def join(lang: str, items: list[str], word: str = "and") -> str:
    """'a, b and c' / 'a, b y c' / 'a、bとc'."""
    if len(items) <= 1:
        return "".join(items)
    head = say(lang, "separator").join(items[:-1])
    return say(lang, word, items=head, last=items[-1])
