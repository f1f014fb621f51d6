"""A small Label Studio REST client: push predictions, page through tasks, build presign URLs.

Talks to Label Studio 1.23's API (the endpoints label-studio-sdk 2.x calls) with httpx, retrying
connection errors, 429 and 5xx with exponential backoff. Accepts both kinds of API key: a legacy
token (sent as ``Authorization: Token ...``) and a personal access token, a JWT refresh token that
is exchanged at ``/api/token/refresh/`` for a short-lived access token (``Authorization: Bearer``).
"""

from __future__ import annotations

import base64
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import httpx
import jwt

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# After these the server may or may not have acted on a POST; 429/503 and refused connections mean it did not.
AMBIGUOUS_STATUSES = frozenset({500, 502, 504})
UNSENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Refresh an access token this long before it expires, so a request never carries a stale one.
TOKEN_MARGIN_S = 30.0


class LabelStudioError(RuntimeError):
    """Label Studio refused a request or stayed unreachable after all retries."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable


class _AmbiguousFailure(Exception):
    """A non-idempotent request failed in a way that leaves open whether Label Studio applied it."""

    def __init__(self, description: str, delay: float) -> None:
        super().__init__(description)
        self.description = description
        self.delay = delay


def _jwt_claims(token: str) -> dict[str, Any] | None:
    try:
        claims = jwt.decode(token, options={"verify_signature": False, "verify_exp": False})
    except jwt.InvalidTokenError:
        return None
    return claims if isinstance(claims, dict) else None


class LabelStudioClient:
    """Label Studio REST client with retries and either legacy-token or personal-access-token auth."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout_s: float = 30.0,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not url or not url.startswith(("http://", "https://")):
            raise ValueError(f"Label Studio URL must start with http:// or https://, got {url!r}")
        if not api_key:
            raise ValueError("a Label Studio API key (legacy token or personal access token) is required")
        self.url = url.rstrip("/")
        self._api_key = api_key.strip()
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.url, timeout=timeout_s, transport=transport, trust_env=False, follow_redirects=False
        )
        claims = _jwt_claims(self._api_key)
        self.token_kind = "legacy" if claims is None else str(claims.get("token_type", "access"))
        self._access_token: str | None = None if self.token_kind == "refresh" else self._api_key
        self._access_expires_at = float("inf")
        if claims is not None and self.token_kind != "refresh" and claims.get("exp"):
            self._access_expires_at = float(claims["exp"])
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ auth

    def auth_headers(self) -> dict[str, str]:
        """Return the Authorization header for the next request, refreshing a personal access token if due."""
        if self.token_kind == "legacy":
            return {"Authorization": f"Token {self._api_key}"}
        return {"Authorization": f"Bearer {self._current_access_token()}"}

    def _current_access_token(self, *, force: bool = False) -> str:
        with self._lock:
            if self.token_kind != "refresh":
                assert self._access_token is not None
                return self._access_token
            if force or self._access_token is None or time.time() > self._access_expires_at - TOKEN_MARGIN_S:
                self._refresh_access_token()
            assert self._access_token is not None
            return self._access_token

    def _refresh_access_token(self) -> None:
        claims = _jwt_claims(self._api_key) or {}
        if claims.get("exp") and float(claims["exp"]) < time.time():
            raise LabelStudioError("the personal access token (LABEL_STUDIO_API_KEY) has expired; create a new one")
        response = self._send("POST", "/api/token/refresh/", json={"refresh": self._api_key}, authorize=False)
        if response.status_code != 200:
            raise LabelStudioError(
                f"exchanging the personal access token failed: {response.status_code} {_excerpt(response)}",
                status=response.status_code,
            )
        access = _json(response).get("access")
        if not isinstance(access, str) or not access:
            raise LabelStudioError("token refresh answered without an access token", status=response.status_code)
        self._access_token = access
        access_claims = _jwt_claims(access) or {}
        self._access_expires_at = float(access_claims.get("exp") or time.time() + 300)

    # ------------------------------------------------------------------ transport

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            retry_after = response.headers.get("retry-after", "")
            if retry_after.strip().isdigit():
                return min(float(retry_after), self.max_backoff_s)
        base = min(self.backoff_s * (2**attempt), self.max_backoff_s)
        # Jitter keeps many workers that lost Label Studio at once from retrying in lockstep.
        return base * random.uniform(0.5, 1.0)

    def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        authorize: bool = True,
        idempotent: bool = True,
    ) -> httpx.Response:
        """Return the response to one request, retrying connection errors, 429 and 5xx with backoff.

        With ``idempotent=False`` a failure after which the request may have been applied raises
        ``_AmbiguousFailure`` instead of resending blindly, so the caller can check what landed first.
        """
        refreshed = False
        attempt = 0
        while True:
            headers = self.auth_headers() if authorize else {}
            try:
                response = self._http.request(method, path, json=json, params=params, headers=headers)
            except httpx.TransportError as exc:
                if attempt >= self.max_retries:
                    raise LabelStudioError(
                        f"Label Studio at {self.url} unreachable after {attempt + 1} attempts: "
                        f"{type(exc).__name__}: {exc}",
                        retryable=True,
                    ) from exc
                delay = self._delay(attempt, None)
                if not idempotent and not isinstance(exc, UNSENT_ERRORS):
                    raise _AmbiguousFailure(f"{type(exc).__name__}: {exc}", delay) from exc
                log.warning("Label Studio %s %s failed (%s); retry in %.2f s", method, path, type(exc).__name__, delay)
            else:
                if response.status_code == 401 and authorize and self.token_kind == "refresh" and not refreshed:
                    # The access token may have been revoked or expired early; one fresh exchange, then give up.
                    refreshed = True
                    self._current_access_token(force=True)
                    continue
                if response.status_code not in RETRY_STATUSES:
                    return response
                if attempt >= self.max_retries:
                    raise LabelStudioError(
                        f"Label Studio {method} {path} answered {response.status_code} after {attempt + 1} "
                        f"attempts: {_excerpt(response)}",
                        status=response.status_code,
                        retryable=True,
                    )
                delay = self._delay(attempt, response)
                if not idempotent and response.status_code in AMBIGUOUS_STATUSES:
                    raise _AmbiguousFailure(f"{response.status_code} {_excerpt(response)}", delay)
                log.warning("Label Studio %s %s answered %s; retry in %.2f s", method, path,
                            response.status_code, delay)
            self._sleep(delay)
            attempt += 1

    def request_json(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        ok: Sequence[int] = (200, 201),
        idempotent: bool = True,
    ) -> Any:
        """Return the decoded JSON body of a successful request, or raise LabelStudioError."""
        response = self._send(method, path, json=json, params=params, idempotent=idempotent)
        if response.status_code not in ok:
            hint = " (check LABEL_STUDIO_API_KEY)" if response.status_code in (401, 403) else ""
            raise LabelStudioError(
                f"Label Studio {method} {path} answered {response.status_code}{hint}: {_excerpt(response)}",
                status=response.status_code,
            )
        return _json(response) if response.content else None

    # ------------------------------------------------------------------ API

    def import_predictions(self, project_id: int, predictions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Return Label Studio's answer (``{"created": n}``) after importing predictions, each naming its ``task``.

        Connection errors and 5xx are retried; when a failure leaves open whether Label Studio stored the
        batch (a lost response, a 502), the tasks that already hold an equal prediction are left out of the
        resend, so a retry never doubles a prediction.
        """
        payload = []
        for index, prediction in enumerate(predictions):
            if not isinstance(prediction, Mapping) or "task" not in prediction or "result" not in prediction:
                raise ValueError(f"prediction {index} needs 'task' and 'result' keys")
            payload.append(dict(prediction))
        if not payload:
            return {"created": 0}
        path = f"/api/projects/{int(project_id)}/import/predictions"
        pending = payload
        for attempt in range(self.max_retries + 1):
            try:
                body = self.request_json("POST", path, json=pending, idempotent=False)
            except _AmbiguousFailure as exc:
                if attempt >= self.max_retries:
                    raise LabelStudioError(
                        f"Label Studio POST {path} failed {attempt + 1} times: {exc.description}", retryable=True
                    ) from exc
                log.warning("Label Studio POST %s: %s; checking what landed before resending", path, exc.description)
                self._sleep(exc.delay)
                pending = [p for p in pending if not self._holds_prediction(p)]
                if not pending:
                    return {"created": len(payload)}
                continue
            created = body.get("created") if isinstance(body, dict) else None
            already = len(payload) - len(pending)
            return {"created": (created if isinstance(created, int) else len(pending)) + already}
        raise AssertionError("unreachable")

    def create_prediction(self, task_id: int, prediction: Mapping[str, Any]) -> dict[str, Any]:
        """Return the prediction Label Studio holds for one task after creating it (retries never double it)."""
        if "result" not in prediction:
            raise ValueError("prediction needs a 'result' key")
        body = {**prediction, "task": int(task_id)}
        for attempt in range(self.max_retries + 1):
            try:
                created = self.request_json("POST", "/api/predictions/", json=body, idempotent=False)
                return created if isinstance(created, dict) else {}
            except _AmbiguousFailure as exc:
                if attempt >= self.max_retries:
                    raise LabelStudioError(
                        f"Label Studio POST /api/predictions/ failed {attempt + 1} times: {exc.description}",
                        retryable=True,
                    ) from exc
                self._sleep(exc.delay)
                existing = self._holds_prediction(body)
                if existing is not None:
                    return existing
        raise AssertionError("unreachable")

    def _holds_prediction(self, prediction: Mapping[str, Any]) -> dict[str, Any] | None:
        """Return the task's stored prediction equal to this one (same model version and result), if any."""
        for stored in self.list_predictions(int(prediction["task"])):
            if stored.get("model_version") == prediction.get("model_version") and stored.get("result") == prediction.get(
                "result"
            ):
                return stored
        return None

    def list_predictions(self, task_id: int) -> list[dict[str, Any]]:
        """Return the predictions Label Studio holds for one task."""
        body = self.request_json("GET", "/api/predictions/", params={"task": int(task_id)})
        if isinstance(body, dict):  # paginated deployments wrap the list
            body = body.get("results", [])
        return list(body or [])

    def get_project(self, project_id: int) -> dict[str, Any]:
        """Return a project's fields (title, label_config, ...)."""
        return self.request_json("GET", f"/api/projects/{int(project_id)}/")

    def iter_tasks(self, project_id: int, page_size: int = 100, *, fields: str = "task_only") -> Iterator[dict[str, Any]]:
        """Yield every task of a project, one page at a time: task fields only, or with fields="all" also
        its annotations and predictions."""
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        page = 1
        seen = 0
        while True:
            params = {"project": int(project_id), "page": page, "page_size": page_size, "fields": fields}
            response = self._send("GET", "/api/tasks/", params=params)
            if response.status_code == 404 and page > 1:
                return  # Django REST's paginator answers 404 past the last page.
            if response.status_code != 200:
                raise LabelStudioError(
                    f"Label Studio GET /api/tasks/ answered {response.status_code}: {_excerpt(response)}",
                    status=response.status_code,
                )
            body = _json(response)
            tasks = body.get("tasks", body.get("results", [])) if isinstance(body, dict) else body
            total = body.get("total") if isinstance(body, dict) else None
            if not tasks:
                return
            yield from tasks
            seen += len(tasks)
            # Label Studio may cap page_size (TASK_API_PAGE_SIZE_MAX), so a short page ends the walk only
            # when no total is given.
            if seen >= total if isinstance(total, int) else len(tasks) < page_size:
                return
            page += 1

    def presign(self, url: str, *, task_id: int | None = None, project_id: int | None = None) -> str:
        """Return the Label Studio URL that redirects to (or proxies) a signed URL for a cloud object."""
        return self.presign_endpoint(self.url, url, task_id=task_id, project_id=project_id)

    @staticmethod
    def presign_endpoint(base_url: str, url: str, *, task_id: int | None = None, project_id: int | None = None) -> str:
        """Return ``{base}/tasks/{id}/presign/?fileuri=...`` (or the project variant) for a cloud URI."""
        # Label Studio expects the URI base64url-encoded, as its own resolve_uris produces it.
        fileuri = base64.urlsafe_b64encode(url.encode()).decode()
        if task_id is not None:
            return f"{base_url.rstrip('/')}/tasks/{int(task_id)}/presign/?fileuri={fileuri}"
        if project_id is not None:
            return f"{base_url.rstrip('/')}/projects/{int(project_id)}/presign/?fileuri={fileuri}"
        raise ValueError("presign needs a task_id or a project_id")

    def close(self) -> None:
        """Close the underlying connection pool."""
        self._http.close()

    def __enter__(self) -> LabelStudioClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise LabelStudioError(
            f"Label Studio answered {response.status_code} with a non-JSON body: {_excerpt(response)}",
            status=response.status_code,
        ) from exc


def _excerpt(response: httpx.Response, limit: int = 300) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:limit] + ("…" if len(text) > limit else "")
