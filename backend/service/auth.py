"""Who may call the API: HTTP basic auth on every route, a shared secret on /webhook, and the start-up rule.

The API holds no Label Studio token itself, but with LABEL_STUDIO_API_KEY set its workers write what it
asks for into Label Studio; an open API would let anyone who reaches it do that through them (a confused
deputy). So an API with that key refuses to start unless callers must prove who they are:
- BASIC_AUTH_USER/BASIC_AUTH_PASS: every route needs them (Label Studio sends them from the model
  connection's auth fields);
- WEBHOOK_SECRET: /webhook and /train (both change what the workers do for a project: pre-label new tasks,
  replace its calibration) need the header X-Webhook-Secret (Label Studio sends a webhook's custom
  headers); basic auth, when also set, is accepted there too;
or the operator opts out with ALLOW_UNAUTHENTICATED=true.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from backend.settings import Settings, SettingsError

WEBHOOK_SECRET_HEADER = "X-Webhook-Secret"
# Routes that change a project's state: under WEBHOOK_SECRET alone they need the secret.
SECRET_PATHS = ("/webhook", "/train")


def check_protection(settings: Settings) -> None:
    """Raise SettingsError when the API could be used to write into Label Studio by anyone who reaches it."""
    if settings.label_studio_api_key and not settings.api_protected and not settings.allow_unauthenticated:
        raise SettingsError(
            "LABEL_STUDIO_API_KEY is set, so anyone who reaches this API could make it write predictions into "
            "Label Studio: set BASIC_AUTH_USER and BASIC_AUTH_PASS (and the same user and password in Label "
            f"Studio's model connection), or WEBHOOK_SECRET (and the header {WEBHOOK_SECRET_HEADER} in Label "
            "Studio's webhook), or ALLOW_UNAUTHENTICATED=true to accept the risk"
        )


def predict_may_push(settings: Settings) -> bool:
    """Return whether a /predict caller may make workers push late predictions (only a caller who proved
    who they are, unless the operator opted out)."""
    return settings.can_push and (settings.auth_enabled or settings.allow_unauthenticated)


def _same(given: str, expected: str) -> bool:
    return secrets.compare_digest(given.encode(), expected.encode())


def basic_auth(settings: Settings) -> Callable[..., None]:
    """Return a FastAPI dependency answering 401 unless the request may use the route it asks for."""
    basic = HTTPBasic(auto_error=False)
    challenge = {"WWW-Authenticate": 'Basic realm="gem-labeler"'}

    def check_auth(request: Request, credentials: HTTPBasicCredentials | None = Depends(basic)) -> None:
        if request.url.path in SECRET_PATHS and settings.webhook_secret:
            if _same(request.headers.get(WEBHOOK_SECRET_HEADER, ""), settings.webhook_secret):
                return
            if not settings.auth_enabled:
                raise HTTPException(401, f"webhook secret required in the {WEBHOOK_SECRET_HEADER} header")
        if not settings.auth_enabled:
            return
        # Compare both fields in constant time and always both, so timing does not say which was wrong.
        ok_user = _same(credentials.username if credentials else "", settings.basic_auth_user)
        ok_pass = _same(credentials.password if credentials else "", settings.basic_auth_pass)
        if not (credentials and ok_user and ok_pass):
            raise HTTPException(401, "basic auth required", headers=challenge)

    return check_auth
