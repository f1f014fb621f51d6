"""HTTP basic auth on every route when BASIC_AUTH_USER and BASIC_AUTH_PASS are set."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from fastapi import Depends, HTTPException
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from backend.settings import Settings


def basic_auth(settings: Settings) -> Callable[..., None]:
    """Return a FastAPI dependency answering 401 unless auth is off or the request has the right credentials."""
    basic = HTTPBasic(auto_error=False)

    def check_auth(credentials: HTTPBasicCredentials | None = Depends(basic)) -> None:
        if not settings.auth_enabled:
            return
        # Compare both fields in constant time and always both, so timing does not say which was wrong.
        ok_user = secrets.compare_digest(
            (credentials.username if credentials else "").encode(), settings.basic_auth_user.encode()
        )
        ok_pass = secrets.compare_digest(
            (credentials.password if credentials else "").encode(), settings.basic_auth_pass.encode()
        )
        if not (credentials and ok_user and ok_pass):
            raise HTTPException(401, "basic auth required", headers={"WWW-Authenticate": 'Basic realm="gem-labeler"'})

    return check_auth
