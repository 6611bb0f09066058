"""The sign-in and consent pages' words, in English and Spanish (both first-class)."""

from __future__ import annotations

TEXT: dict[str, dict[str, str]] = {
    "en": {
        "sign_in": "Sign in",
        "sign_in_to_link": "Sign in to link your cameras with {client}",
        "email": "Email",
        "password": "Password",
        "bad_credentials": "That email and password do not match an account.",
        "too_many": "Too many failed attempts. Try again in {minutes} minutes.",
        "consent_title": "Link {client}?",
        "consent_intro": "{client} is asking to act for {email}. It will be able to:",
        "cameras_heading": "Your cameras on {assistant}",
        "ready": "Ready",
        "blocked_note": "You can link now; the cameras marked below will not show until fixed.",
        "no_cameras": "You have no cameras yet.",
        "approve": "Allow",
        "deny": "Deny",
        "not_you": "Not you? Sign out",
        "error_title": "This link request cannot be completed",
        "error_help": "Go back to the Alexa or Google Home app and start linking again.",
        "other": "this assistant",
    },
    "es": {
        "sign_in": "Iniciar sesión",
        "sign_in_to_link": "Inicia sesión para vincular tus cámaras con {client}",
        "email": "Correo electrónico",
        "password": "Contraseña",
        "bad_credentials": "Ese correo y esa contraseña no coinciden con ninguna cuenta.",
        "too_many": "Demasiados intentos fallidos. Vuelve a intentarlo en {minutes} minutos.",
        "consent_title": "¿Vincular {client}?",
        "consent_intro": "{client} solicita actuar en nombre de {email}. Podrá:",
        "cameras_heading": "Tus cámaras en {assistant}",
        "ready": "Lista",
        "blocked_note": "Puedes vincular ahora; las cámaras marcadas no se mostrarán hasta que "
        "las corrijas.",
        "no_cameras": "Todavía no tienes cámaras.",
        "approve": "Permitir",
        "deny": "Denegar",
        "not_you": "¿No eres tú? Cerrar sesión",
        "error_title": "No se puede completar esta solicitud de vinculación",
        "error_help": "Vuelve a la aplicación de Alexa o de Google Home y empieza de nuevo.",
        "other": "este asistente",
    },
}

SCOPE_TEXT: dict[str, dict[str, str]] = {
    "en": {"cameras": "See your cameras and their settings, and play their live video."},
    "es": {"cameras": "Ver tus cámaras y su configuración, y reproducir su vídeo en directo."},
}

ASSISTANT_NAMES = {"alexa": "Alexa", "google": "Google Assistant"}
