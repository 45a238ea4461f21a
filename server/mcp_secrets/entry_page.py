"""The entry page: one password field, served by our HTTP server, no JavaScript, no external assets.

GET shows the form for a live link; POST stores the value and uses the link up.
The value arrives only in a POST body and is never echoed, logged or put in a URL.
A double-submit token (an HttpOnly, SameSite=Strict cookie of the link's own path
plus a hidden field) guards against cross-site posts, on top of the Host/Origin check every request passes.
"""

from __future__ import annotations

import codecs
import functools
import hmac
import logging
import re
import secrets as _random
from collections.abc import Mapping
from datetime import timedelta
from html import escape
from urllib.parse import parse_qsl

import anyio
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from mcp_secrets.entry import ENTRY_PATH, ClaimOutcome, EntryLinks
from mcp_secrets.errors import EntryLinkError, InvalidInputError, SecretsError, StoreUnavailableError
from mcp_secrets.request_body import read_body, with_body
from mcp_secrets.store import LinkRecord

logger = logging.getLogger(__name__)

CSRF_COOKIE = "mcp_secrets_csrf"
MAX_FORM_BYTES = 256 * 1024
MAX_FORM_FIELDS = 4  # the form has two: a body of many more is not from it, and costs time to parse
# How long a post of a link used by another post waits for that one's value to be stored, looking every
# SENT_AGAIN_POLL_SECONDS: the two posts of a double click may reach two replicas, and the second one's
# answer, which the browser shows, should say "stored". A write that takes longer (one waiting out a longer
# MCP_SECRETS_SQLITE_BUSY_TIMEOUT) leaves the second post the page of a used link.
SENT_AGAIN_WAIT_SECONDS = 10.0
SENT_AGAIN_POLL_SECONDS = 0.05
_WAIT = timedelta(seconds=SENT_AGAIN_WAIT_SECONDS)
# A one-line field turns the line breaks of a pasted PEM key into spaces, or drops them: the key would be
# stored broken, and nobody would see it until it failed. A PEM armor line in a value of one line tells.
_PEM_ARMOR = re.compile(r"-----BEGIN [^\r\n-]*-----")
FLATTENED_PEM = (
    "Not stored: this key of several lines (PEM) lost its line breaks in the field, and would not work. "
    "Store it in a way that keeps them: mcp-secrets set, or the REST API (POST /secrets/set)."
)

_STYLE = """
body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1b1d21}
main{max-width:34rem;margin:3rem auto;background:#fff;border:1px solid #d8dbe0;
border-radius:8px;padding:2rem}
h1{font-size:1.35rem;margin-top:0}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem;margin:1rem 0 1.5rem}
dt{color:#555}dd{margin:0;font-family:ui-monospace,monospace}
label{display:block;font-weight:600;margin-bottom:.35rem}
input[type=password]{width:100%;box-sizing:border-box;font-size:1rem;padding:.6rem;
border:1px solid #8a9099;border-radius:6px}
input[type=password]:focus{outline:3px solid #2d6cdf;outline-offset:1px}
button{margin-top:1rem;font-size:1rem;padding:.6rem 1.2rem;border:0;border-radius:6px;
background:#2d6cdf;color:#fff}
.note{color:#555;font-size:.9rem}.error{color:#b00020;font-weight:600}
button,input{font:inherit}
"""


def _page(
    title: str,
    body: str,
    status: int,
    *,
    cookie: str | None = None,
    cookie_path: str = ENTRY_PATH,
    secure: bool = False,
) -> HTMLResponse:
    nonce = _random.token_urlsafe(16)
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<meta name="referrer" content="same-origin"><title>{escape(title)} · mcp-secrets</title>'
        f'<style nonce="{nonce}">{_STYLE}</style></head><body><main>{body}</main></body></html>'
    )
    response = HTMLResponse(html, status_code=status)
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; style-src 'nonce-{nonce}'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
    response.headers["Cache-Control"] = "no-store"
    # same-origin, not no-referrer: under no-referrer browsers post the form with "Origin: null",
    # which the Host/Origin guard refuses. Other sites still get no Referer, so the token stays here.
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    if cookie is not None:
        response.set_cookie(
            CSRF_COOKIE, cookie, path=cookie_path, httponly=True, samesite="strict", secure=secure
        )
    return response


def _record_list(record: LinkRecord) -> str:
    return (
        f"<dl><dt>Server</dt><dd>{escape(record.server)}</dd>"
        f"<dt>Key</dt><dd>{escape(record.key)}</dd>"
        f"<dt>For user</dt><dd>{escape(record.username)}</dd></dl>"
    )


def _form(
    record: LinkRecord, csrf: str, *, path: str, secure: bool, error: str = "", status: int = 200
) -> HTMLResponse:
    """The form of a live link, its CSRF cookie scoped to the link's own ``path``.

    A cookie shared by all links would fail the forms already open: a page opened from another site
    (a web chat) gets no SameSite=Strict cookie with its request, so it sets a new one in their place.
    """
    problem = f'<p class="error" id="problem" role="alert">{escape(error)}</p>' if error else ""
    described = "hint problem" if error else "hint"
    body = (
        f"<h1>Enter a secret</h1>{_record_list(record)}{problem}"
        '<form method="post" autocomplete="off">'
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
        '<label for="value">Secret value</label>'
        f'<input type="password" id="value" name="value" required autofocus aria-describedby="{described}">'
        '<p class="note" id="hint">It is stored encrypted for this user only, and never shown again: '
        "not to you, not to the assistant.</p>"
        '<button type="submit">Store secret</button></form>'
        f'<p class="note">This link works once and expires at {record.expires_at:%H:%M} UTC.</p>'
    )
    return _page("Enter a secret", body, status, cookie=csrf, cookie_path=path, secure=secure)


def _gone(status: int) -> HTMLResponse:
    if status == 410:  # noqa: PLR2004 - HTTP status
        text = "This link has expired or has already been used. Ask the assistant for a new one."
        return _page("Link expired", f"<h1>Link expired</h1><p>{text}</p>", status)
    # Expired links are deleted soon after (MongoDB's TTL index, SQLite when the next link is made), so
    # an unknown link may be an old one: the page says so rather than call the link wrong.
    text = (
        "This entry link is not valid, or it expired a while ago and is forgotten. "
        "Check that the whole link was opened, or ask the assistant for a new one."
    )
    return _page("Link not valid", f"<h1>Link not valid</h1><p>{text}</p>", status)


def _unavailable() -> HTMLResponse:
    return _page("Unavailable", "<h1>Try again later</h1><p>The secret store is unavailable.</p>", 503)


def _other_user(request: Request, record: LinkRecord) -> bool:
    """A request that carries a verified token of someone other than the link's owner."""
    user = request.scope.get("user")
    return isinstance(user, AuthenticatedUser) and user.access_token.subject != record.username


async def _live_record(links: EntryLinks, request: Request) -> LinkRecord | Response:
    """The live link of this request's token, or the page that says why there is none."""
    token = str(request.path_params["token"])
    try:
        record, state = await anyio.to_thread.run_sync(links.find, token)
    except StoreUnavailableError:
        return _unavailable()
    if record is None or state != "live":
        return _gone(404 if record is None else 410)
    if _other_user(request, record):
        return _page("Not yours", "<h1>Not yours</h1><p>This link belongs to another user.</p>", 403)
    return record


def entry_routes(links: EntryLinks, *, secure_cookie: bool = False, path_prefix: str = "") -> list[Route]:
    """The GET and POST routes of the entry page.

    ``secure_cookie``: the page is served over HTTPS (the public URL says so), so the browser is told
    never to send its CSRF cookie over plain HTTP. A request that came in over HTTPS gets it anyway.
    ``path_prefix``: the path of the public URL (``/team-a``), which the proxy in front takes off; the
    browser's links, and so the paths its cookies must name, carry it.
    """

    def secure(request: Request) -> bool:
        return secure_cookie or request.url.scheme == "https"

    def link_path(request: Request) -> str:
        """The link's path as the browser sees it, for its CSRF cookie."""
        return f"{path_prefix}{ENTRY_PATH}/{request.path_params['token']}"

    async def show(request: Request) -> Response:
        record = await _live_record(links, request)
        if isinstance(record, Response):
            return record
        csrf = request.cookies.get(CSRF_COOKIE) or _random.token_urlsafe(32)
        return _form(record, csrf, path=link_path(request), secure=secure(request))

    # The posts of one link are answered one at a time (in this process): the second post of a double
    # click then finds the first one's value stored, instead of a link that is being used ("expired").
    posting: dict[str, anyio.Lock] = {}

    async def store(request: Request) -> Response:
        body = await read_body(request, MAX_FORM_BYTES)
        if body is None:
            return _page("Too large", "<h1>Too large</h1><p>That value is too large.</p>", 413)
        form = await _form_fields(request, body)
        sent_csrf = None if form is None else form.get("csrf")
        cookies = _csrf_cookies(request)
        # Compared as bytes: compare_digest raises TypeError for a str that is not ASCII.
        valid_form = isinstance(sent_csrf, str) and any(
            hmac.compare_digest(sent_csrf.encode(), cookie.encode()) for cookie in cookies
        )
        # What a form shown again carries: the token this post proved, else one the browser holds.
        cookie_csrf = sent_csrf if valid_form and isinstance(sent_csrf, str) else next(iter(cookies), "")
        token = str(request.path_params["token"])
        lock = posting.setdefault(token, anyio.Lock())
        try:
            async with lock:
                return await _answer(
                    links,
                    request,
                    form,
                    cookie_csrf,
                    valid_form=valid_form,
                    path=link_path(request),
                    secure=secure(request),
                )
        finally:
            if not lock.locked() and posting.get(token) is lock:
                del posting[token]

    async def page(request: Request) -> Response:
        return await (store(request) if request.method == "POST" else show(request))

    # One route: of two on one path, a 405 would name only the first one's methods in its Allow header.
    return [Route(ENTRY_PATH + "/{token}", page, methods=["GET", "POST"])]


async def _answer(
    links: EntryLinks,
    request: Request,
    form: Mapping[str, object] | None,
    cookie_csrf: str,
    *,
    valid_form: bool,
    path: str,
    secure: bool,
) -> Response:
    """Store the value of a posted form, or say why not."""
    token = str(request.path_params["token"])
    # One wait in all, however many times the link is looked at again.
    deadline = anyio.current_time() + SENT_AGAIN_WAIT_SECONDS
    # Twice at most: a second time when a post of the same form to another replica gave the link back.
    for _ in range(2):
        record = await _live_record(links, request)
        if isinstance(record, Response):
            if record.status_code != 410 or not valid_form:  # noqa: PLR2004 - HTTP status
                return record
        elif form is None:
            error = "Not stored: the form could not be read; it must be sent as this page sends it, in UTF-8."
            csrf = cookie_csrf or _random.token_urlsafe(32)
            return _form(record, csrf, path=path, secure=secure, error=error, status=400)
        elif not valid_form:
            fresh = _random.token_urlsafe(32)
            error = "The form expired. Please enter the value again."
            return _form(record, fresh, path=path, secure=secure, error=error, status=403)
        else:
            submitted = await _submit(
                links, record, token, form.get("value"), cookie_csrf, path=path, secure=secure
            )
            if submitted is not None:
                return submitted
        # The link is used: by this form sent before (a double click), perhaps to another replica, or by
        # another form (someone else holds the link).
        again = await _sent_again(links, request, deadline, cookie_csrf)
        if again is not None:
            return again
    return _gone(410)


async def _form_fields(request: Request, body: bytes) -> Mapping[str, object] | None:
    """The posted form's fields; None for a form that is not UTF-8, cannot be read, or is not ours.

    Starlette reads a URL-encoded body's raw bytes as Latin-1 and replaces bad escapes with U+FFFD, and a
    multipart part that is not UTF-8 as Latin-1, or in the charset the request names: a value sent as
    unescaped UTF-8 (``curl --data``) or in another encoding would be stored garbled. A field given twice,
    which the page's form never sends, would be taken as its last: a proxy reading the first would check
    or log another value than is stored.
    """
    media_type, _, parameters = request.headers.get("content-type", "").partition(";")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    fields: list[tuple[str, object]]
    if media_type.strip().lower() == "application/x-www-form-urlencoded":
        try:
            fields = [
                *parse_qsl(text, keep_blank_values=True, errors="strict", max_num_fields=MAX_FORM_FIELDS)
            ]
        except ValueError:  # a bad escape (not UTF-8), or more fields than the form has
            return None
    else:
        if not _names_utf_8(parameters):
            return None
        try:
            form = await with_body(request, body).form(max_files=0, max_fields=MAX_FORM_FIELDS)
        except HTTPException:  # multipart without a boundary, with a file: answered by this page, headers too
            return None
        fields = [*form.multi_items()]
    if len({name for name, _ in fields}) < len(fields):
        return None
    return dict(fields)


_CHARSET = re.compile(r'(?:^|;)\s*charset\s*=\s*"?([^";\s]*)', re.IGNORECASE)


def _names_utf_8(parameters: str) -> bool:
    """Whether a Content-Type's ``parameters`` name no charset, or UTF-8 by any of its names."""
    named = _CHARSET.search(parameters)
    if named is None:
        return True
    try:
        return codecs.lookup(named.group(1)).name == "utf-8"
    except LookupError:
        return False


def _csrf_cookies(request: Request) -> list[str]:
    """Every non-empty CSRF cookie the request carries.

    The link's own, and maybe one of the whole entry path that an older version set, which
    Starlette's ``request.cookies`` (the last of a name) would pick instead.
    """
    found = []
    for header in request.headers.getlist("cookie"):
        for pair in header.split(";"):
            name, _, value = pair.partition("=")
            if name.strip() == CSRF_COOKIE and value.strip():
                found.append(value.strip())
    return found


async def _sent_again(links: EntryLinks, request: Request, deadline: float, csrf: str) -> Response | None:
    """The page for a valid form (CSRF token ``csrf``) of a used link; None when the link is live again.

    Sent again (a double click): a browser shows the answer to the last of the two posts, and without
    this page a user whose value was stored would read that the link expired, and ask for a new one.
    The first post may have reached another replica, and be storing the value still: this one waits for
    it (until ``deadline``, on anyio's clock), and when that post gives the link back (its write failed),
    the caller stores this post's value instead. A link whose value another form stored gets a page of
    its own: this user's value is not the one stored, and the other may be someone else's.
    """
    token = str(request.path_params["token"])
    try:
        outcome = await _settled_outcome(links, token, deadline)
        record = (await anyio.to_thread.run_sync(links.find, token))[0] if outcome == "stored" else None
    except StoreUnavailableError:  # the first post's value may be in: not "expired, ask for another"
        return _unavailable()
    except SecretsError:
        return _gone(410)
    if outcome == "live":
        return None
    if record is None or _other_user(request, record):
        return _gone(410)
    if not links.stored_by_form(record, csrf):
        logger.warning(
            "entry link %s: a post of another form came after the link stored its value", record.link_id
        )
        return _used_by_another(record)
    body = (
        f"<h1>Secret already stored</h1>{_record_list(record)}"
        "<p>This link has stored its value already; nothing more was stored from this page. "
        "If you sent the form twice, there is nothing more to do: return to the assistant. "
        "To change the value, ask the assistant for a new link.</p>"
    )
    return _page("Secret already stored", body, 410)


def _used_by_another(record: LinkRecord) -> HTMLResponse:
    """The answer to a form whose link another form's submission used: its value is not the one stored."""
    body = (
        f"<h1>Not stored: link used by another submission</h1>{_record_list(record)}"
        '<p class="error" role="alert">The value you entered was NOT stored. This link was used by another '
        "submission, from another browser or device, whose value was stored instead.</p>"
        "<p>If that was not you, someone else has this link: treat the secret as replaced by theirs. Ask "
        "the assistant for a new link, and enter your value there.</p>"
    )
    return _page("Not stored: link used by another submission", body, 409)


async def _settled_outcome(links: EntryLinks, token: str, deadline: float) -> ClaimOutcome:
    """What became of the link's claim: once it is no longer "storing", or at ``deadline``."""
    while True:
        # A claim older than the wait will not store any more (declined, or its submission died).
        outcome = await anyio.to_thread.run_sync(
            functools.partial(links.claim_outcome, token, stale_after=_WAIT)
        )
        if outcome != "storing" or anyio.current_time() >= deadline:
            return outcome
        await anyio.sleep(SENT_AGAIN_POLL_SECONDS)


async def _submit(
    links: EntryLinks,
    record: LinkRecord,
    token: str,
    value: object,
    csrf: str,
    *,
    path: str,
    secure: bool,
) -> Response | None:
    """Store the submitted value; the answer never contains it. None when the link was used meanwhile."""
    text = value if isinstance(value, str) else ""
    if _PEM_ARMOR.search(text) and "\n" not in text and "\r" not in text:
        return _form(record, csrf, path=path, secure=secure, error=FLATTENED_PEM, status=400)
    try:
        await anyio.to_thread.run_sync(functools.partial(links.submit, token, text, form=csrf))
    except InvalidInputError as exc:
        return _form(record, csrf, path=path, secure=secure, error=f"Not stored: {exc}.", status=400)
    except EntryLinkError as exc:
        if exc.gone:  # used meanwhile, perhaps by this form sent to another replica: the caller looks
            return None
        return _gone(404)
    except SecretsError:
        logger.warning("entry page: the secret could not be stored")
        error = "The secret store is unavailable; try again."
        return _form(record, csrf, path=path, secure=secure, error=error, status=503)
    logger.info(
        "entry link %s used: secret %s of server %s stored", record.link_id, record.key, record.server
    )
    body = (
        f"<h1>Secret stored</h1>{_record_list(record)}"
        "<p>You can close this page and return to the assistant. The value will not be shown again.</p>"
    )
    return _page("Secret stored", body, 200)
