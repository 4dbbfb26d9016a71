"""The JSON API under /api/v1/: apps listed, read, created, started, stopped and deleted.

Plain Django views, thin over apps.supervisor.services and selectors. Every request goes
through the same checks, in this order, each answered with JSON `{"error": ...}`:

  405  method not offered by the endpoint (with `Allow`)
  413  declared body larger than MAX_BODY_BYTES
  401  no credentials, or a token that is malformed, unknown, revoked or of an inactive user
       (`Authorization: Bearer <token>`; else a logged-in staff session of the supervisor)
  403  a session's unsafe request without a valid CSRF token; a user without the permission
       (apps.api.permissions: the same table as the CLI's --as-user and the Start button)
  400  bad query, bad JSON, wrong types, unknown fields, or what the model refuses (field
       errors under "errors", from Application.full_clean like the admin form); 415 a body
       that is not JSON
  404  unknown app (or unknown URL under /api/v1/)

Nothing stored changes when a request is refused: checks come before any write, and
application_create validates everything before it saves (in one transaction).
"""

from __future__ import annotations

import json
import math
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.utils import timezone
from django.utils.cache import add_never_cache_headers, patch_vary_headers
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt

from apps.api import permissions
from apps.api import services as api_services
from apps.gateway import routing
from apps.supervisor import selectors, services
from apps.supervisor.models import Application

MAX_BODY_BYTES = 64 * 1024
PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
SAFE_METHODS = frozenset({"GET", "HEAD"})
REALM = 'Bearer realm="App Supervisor API"'


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        errors: dict[str, list[str]] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.errors, self.headers = status, message, errors, headers


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None):
    response = JsonResponse(data, status=status, safe=False, json_dumps_params={"indent": None})
    for key, value in (headers or {}).items():
        response[key] = value
    add_never_cache_headers(response)
    patch_vary_headers(response, ["Authorization", "Cookie"])
    return response


def error_response(exc: ApiError) -> HttpResponse:
    data: dict[str, Any] = {"error": exc.message}
    if exc.errors:
        data["errors"] = exc.errors
    return json_response(data, exc.status, exc.headers)


# --- authentication and permissions ------------------------------------------------------
def _csrf_failed(request: HttpRequest) -> bool:
    """Django's own CSRF check, for a session's unsafe request to a csrf_exempt view."""
    check = CsrfViewMiddleware(lambda r: None)
    check.process_request(request)
    return check.process_view(request, None, (), {}) is not None


def authenticate(request: HttpRequest):
    """The user making the request: by bearer token, else by a staff session."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401, "send Authorization: Bearer <token>", headers={"WWW-Authenticate": REALM}
            )
        user = api_services.api_token_authenticate(token.strip())
        if user is None:
            raise ApiError(
                401,
                "invalid or revoked token",
                headers={"WWW-Authenticate": REALM + ', error="invalid_token"'},
            )
        return user
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated and user.is_active and user.is_staff:
        if request.method not in SAFE_METHODS and _csrf_failed(request):
            raise ApiError(403, "CSRF check failed: send the X-CSRFToken header with a session")
        return user
    raise ApiError(
        401,
        "authentication required: Authorization: Bearer <token> (manage.py api_token create)",
        headers={"WWW-Authenticate": REALM},
    )


def require(user, operation: str, *, drop_database: bool = False) -> None:
    lacking = permissions.missing(user, operation, drop_database=drop_database)
    if lacking:
        raise ApiError(403, f"permission denied: {operation} needs {', '.join(lacking)}")


# --- input -------------------------------------------------------------------------------
def query(request: HttpRequest, allowed: set[str]) -> dict[str, str]:
    """The query parameters, each at most once and all known."""
    unknown = sorted(set(request.GET) - allowed)
    if unknown:
        shown = ", ".join(repr(k[:40]) for k in unknown[:5])
        raise ApiError(400, f"unknown query parameter(s): {shown}")
    repeated = [k for k in request.GET if len(request.GET.getlist(k)) > 1]
    if repeated:
        raise ApiError(400, f"query parameter {repeated[0]!r} given more than once")
    return {k: request.GET[k] for k in request.GET}


def positive_int(params: dict[str, str], key: str, default: int, maximum: int) -> int:
    raw = params.get(key)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 6) or not 1 <= int(raw) <= maximum:
        raise ApiError(400, f"{key} must be a whole number from 1 to {maximum}")
    return int(raw)


def _declared_length(request: HttpRequest) -> int:
    raw = request.META.get("CONTENT_LENGTH") or "0"
    if not (raw.isascii() and raw.isdigit()):
        raise ApiError(400, "bad Content-Length")
    return int(raw)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        raise ValueError("a key appears twice in one object")
    return data


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _text_problem(value: Any, where: str = "body") -> str | None:
    """Strings PostgreSQL cannot store (NUL, lone surrogates) are refused everywhere."""
    if isinstance(value, str):
        if "\x00" in value:
            return f"{where}: text may not contain NUL characters"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{where}: text is not valid Unicode"
    elif isinstance(value, dict):
        for key, item in value.items():
            if problem := _text_problem(key, where) or _text_problem(item, f"{where}.{key}"):
                return problem
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if problem := _text_problem(item, f"{where}[{index}]"):
                return problem
    return None


def read_json(request: HttpRequest) -> dict[str, Any]:
    """The request body as a JSON object ({} when empty)."""
    if _declared_length(request) > MAX_BODY_BYTES:
        raise ApiError(413, f"body larger than {MAX_BODY_BYTES} bytes")
    body = request.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        raise ApiError(413, f"body larger than {MAX_BODY_BYTES} bytes")
    if not body.strip():
        return {}
    content_type = request.content_type or ""
    charset = (request.content_params or {}).get("charset", "utf-8").lower()
    if content_type not in ("", "application/json") or charset not in ("utf-8", "utf8"):
        raise ApiError(415, "send the body as application/json (UTF-8)")
    try:
        data = json.loads(
            body.decode("utf-8"),
            object_pairs_hook=_no_duplicate_keys,
            parse_constant=_refuse_constant,
        )
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    if problem := _text_problem(data):
        raise ApiError(400, problem)
    return data


def no_body(request: HttpRequest) -> None:
    """Endpoints that take no fields refuse any (an empty object is fine)."""
    data = read_json(request)
    if data:
        raise ApiError(
            400, "this endpoint takes no fields", errors={k[:48]: ["unknown field"] for k in data}
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


# field: (what it must be, check); everything else is refused as an unknown field.
CREATE_FIELDS: dict[str, tuple[str, Any]] = {
    "name": ("a string", lambda v: isinstance(v, str)),
    "title": ("a string", lambda v: isinstance(v, str)),
    "environments": ("a list of environment names", _is_str_list),
    "db_type": ("a string or null", lambda v: v is None or isinstance(v, str)),
    "start_mode": ("a string", lambda v: isinstance(v, str)),
    "icon": ("a string", lambda v: isinstance(v, str)),
    "pinned": ("true or false", lambda v: isinstance(v, bool)),
    "custom_domain": ("a string or null", lambda v: v is None or isinstance(v, str)),
    "db_host": ("a string", lambda v: isinstance(v, str)),
    "db_port": ("an integer or null", lambda v: v is None or _is_int(v)),
    "db_user": ("a string", lambda v: isinstance(v, str)),
    "db_password": ("a string", lambda v: isinstance(v, str)),
    "db_database": ("a string", lambda v: isinstance(v, str)),
    "options": ("a JSON object", lambda v: isinstance(v, dict)),
}
REQUIRED_FIELDS = ("name", "title")


def create_arguments(data: dict[str, Any]) -> dict[str, Any]:
    """Types and field names checked; the values are judged by the model (full_clean)."""
    errors: dict[str, list[str]] = {}
    for key in data:
        if key not in CREATE_FIELDS:
            errors[key[:48]] = ["unknown field"]
    for key, (what, check) in CREATE_FIELDS.items():
        if key in data and not check(data[key]):
            errors[key] = [f"must be {what}"]
    for key in REQUIRED_FIELDS:
        if key not in data:
            errors[key] = ["this field is required"]
    if errors:
        raise ApiError(400, "invalid fields", errors=errors)
    return dict(data)


def validation_errors(exc: ValidationError) -> dict[str, list[str]]:
    if hasattr(exc, "error_dict"):
        return {k: [str(m) for m in v] for k, v in exc.message_dict.items()}
    return {"__all__": [str(m) for m in exc.messages]}


# --- output ------------------------------------------------------------------------------
SECRET_OPTIONS = frozenset({"admin_password"})


def app_json(application: Application, now=None) -> dict[str, Any]:
    """An app as the API shows it (never a password). Reads only prefetched deployments."""
    now = now or timezone.now()
    deployments = list(application.deployments.all())
    statuses = selectors.application_statuses(application, now)  # one display status each
    return {
        "name": application.name,
        "title": application.title,
        "icon": application.icon,
        "pinned": application.pinned,
        "custom_domain": application.custom_domain,
        "start_mode": application.start_mode,
        "db_type": application.db_type,
        "db_host": application.db_host,
        "db_port": application.db_port,
        "db_user": application.db_user,
        "db_database": application.db_database,
        "options": {
            k: ("********" if k in SECRET_OPTIONS else v) for k, v in application.options.items()
        },
        "environments": list(statuses),
        "statuses": statuses,
        "deployments": [
            {
                "environment": d.environment.name,
                "status": statuses[d.environment.name],
                "desired": d.desired,
                "step": d.detail,
                "error": d.error,
                "status_at": d.status_at.isoformat(),
                "last_command": d.command_action or None,
                "last_command_by": d.command_actor or None,
            }
            for d in deployments
        ],
        "url": f"/apps/{application.name}/",
        "created_at": application.created_at.isoformat(),
        "updated_at": application.updated_at.isoformat(),
    }


def get_app(name: str) -> Application:
    application = selectors.application_by_name(name)
    if application is None:
        raise ApiError(404, f"no app named {name[:60]!r}")
    return application


# --- endpoints ---------------------------------------------------------------------------
@method_decorator(csrf_exempt, name="dispatch")
class ApiView(View):
    """Method (405), declared size (413) and authentication (401) for every endpoint.

    csrf_exempt because a bearer token cannot be forged cross-site; a session's unsafe
    request is checked for CSRF in authenticate().
    """

    methods: tuple[str, ...] = ()

    def dispatch(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        method = "GET" if request.method == "HEAD" else request.method
        if method not in self.methods:
            allow = ", ".join(self.methods + (("HEAD",) if "GET" in self.methods else ()))
            return error_response(
                ApiError(405, f"{request.method} is not allowed here", headers={"Allow": allow})
            )
        try:
            if _declared_length(request) > MAX_BODY_BYTES:
                raise ApiError(413, f"body larger than {MAX_BODY_BYTES} bytes")
            user = authenticate(request)
            response = getattr(self, method.lower())(request, user, *args, **kwargs)
        except ApiError as exc:
            response = error_response(exc)
        if request.method == "HEAD":
            response.content = b""
        return response


class AppsView(ApiView):
    """GET: the apps with their status per environment, a page at a time. POST: create."""

    methods = ("GET", "POST")

    def get(self, request: HttpRequest, user) -> HttpResponse:
        require(user, "list")
        params = query(request, {"page", "page_size"})
        page = positive_int(params, "page", 1, 10**6)
        size = positive_int(params, "page_size", PAGE_SIZE, MAX_PAGE_SIZE)
        apps = selectors.application_list_with_status()
        count = apps.count()
        pages = max(1, math.ceil(count / size))
        if page > pages:
            raise ApiError(404, f"no page {page}: there are {pages}")
        now = timezone.now()
        # Three queries whatever the page size: count, the page, its deployments (prefetch).
        rows = [app_json(a, now) for a in apps[(page - 1) * size : page * size]]

        def link(number: int) -> str:
            return f"{request.path}?page={number}&page_size={size}"

        return json_response(
            {
                "count": count,
                "page": page,
                "pages": pages,
                "page_size": size,
                "next": link(page + 1) if page < pages else None,
                "previous": link(page - 1) if page > 1 else None,
                "results": rows,
            }
        )

    def post(self, request: HttpRequest, user) -> HttpResponse:
        require(user, "create")
        query(request, set())
        arguments = create_arguments(read_json(request))
        try:
            created = services.application_create(**arguments)
        except ValidationError as exc:
            raise ApiError(400, "invalid fields", errors=validation_errors(exc)) from None
        except IntegrityError:  # a concurrent create took the name or domain first
            raise ApiError(409, "an app with that name or domain already exists") from None
        application = selectors.application_list_with_status().get(pk=created.pk)
        return json_response(
            app_json(application),
            201,
            headers={"Location": f"/api/v1/apps/{application.name}/"},
        )


BOOLEANS = {"true": True, "false": False}


class AppView(ApiView):
    """GET: one app. DELETE ?drop_database=true|false: stop it everywhere and delete it."""

    methods = ("GET", "DELETE")

    def get(self, request: HttpRequest, user, name: str) -> HttpResponse:
        require(user, "view")
        query(request, set())
        return json_response(app_json(get_app(name)))

    def delete(self, request: HttpRequest, user, name: str) -> HttpResponse:
        params = query(request, {"drop_database"})
        raw = params.get("drop_database", "false")
        if raw not in BOOLEANS:
            raise ApiError(400, "drop_database must be true or false")
        drop = BOOLEANS[raw]
        require(user, "delete", drop_database=drop)
        no_body(request)
        application = get_app(name)
        try:
            services.application_delete(
                application=application, drop_database=drop, actor=user.get_username()
            )
        except ValidationError as exc:
            raise ApiError(409, "; ".join(exc.messages)) from None
        routing.forget_route(name)
        return json_response({"name": name, "deleted": True, "database_dropped": drop})


class AppCommandView(ApiView):
    """POST start|stop|restart: 202 with the command's outcome (starts run in the background:
    follow them with GET /api/v1/apps/<name>/)."""

    methods = ("POST",)

    def post(self, request: HttpRequest, user, name: str, action: str) -> HttpResponse:
        require(user, action)
        query(request, set())
        no_body(request)
        application = get_app(name)
        actor = user.get_username()
        if action == "start":
            outcome = services.application_start(application=application, actor=actor, wait=False)
        elif action == "stop":
            outcome = services.application_stop(application=application, actor=actor)
        else:
            outcome = services.application_restart(application=application, actor=actor, wait=False)
        routing.forget_route(name)  # the gateway's next answer reflects the command
        current = selectors.application_list_with_status().filter(pk=application.pk).first()
        return json_response(
            {
                "name": name,
                "action": action,
                "ok": outcome.ok,
                "sent_to": outcome.started,
                "already_in_progress": outcome.skipped,
                "failed": outcome.failed,
                "statuses": selectors.application_statuses(current) if current else {},
            },
            202,
        )


def not_found(request: HttpRequest, rest: str = "") -> HttpResponse:
    return error_response(ApiError(404, "no such endpoint (see /api/v1/apps/)"))
