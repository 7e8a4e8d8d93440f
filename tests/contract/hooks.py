"""schemathesis hooks for tests/contract/run.py.

Authentication: every token is a real one, obtained as an app obtains it: register a new
address, read the code from the server's log (the `log` mail transport prints each
mail), verify-otp. Whenever a request answers 401 (the fuzzer logs sessions out, ends
every session, or locks the address with wrong passwords), schemathesis drops the token
and asks again: a fresh user is signed up.

Generation: a few rules no JSON Schema can state (they depend on the server's clock, on
earlier requests or on UTF-8 byte counts) are respected by moving generated values of
positive cases inside them; negative cases are left alone.
"""

import json
import os
import time
import unicodedata
import urllib.request
import uuid

import schemathesis

BASE = os.environ["INTROGY_CONTRACT_BASE"]
LOG = os.environ["INTROGY_CONTRACT_LOG"]
PASSWORD = os.environ["INTROGY_CONTRACT_PASSWORD"]
METRICS_TOKEN = os.environ["INTROGY_CONTRACT_METRICS_TOKEN"]


def post(path, body):
    request = urllib.request.Request(
        BASE + path,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def code_for(email):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(LOG) as log:
            for line in log:
                if email in line and '"subject"' in line:
                    return json.loads(line)["fields"]["subject"].split()[0]
        time.sleep(0.02)
    raise RuntimeError(f"no code was mailed to {email}")


def signup():
    email = f"fuzz-{uuid.uuid4().hex[:12]}@example.com"
    post("/auth/register", {"email": email, "password": PASSWORD})
    return post("/auth/verify-otp", {"email": email, "code": code_for(email)})["access_token"]


@schemathesis.auth()
class FreshVerifiedUser:
    first = os.environ.get("INTROGY_CONTRACT_TOKEN")

    def get(self, case, context):
        token, FreshVerifiedUser.first = FreshVerifiedUser.first, None
        return token or signup()

    def set(self, case, data, context):
        case.headers = case.headers or {}
        # /metrics takes the operator's METRICS_TOKEN, not a user's token.
        if case.operation.path == "/metrics":
            data = METRICS_TOKEN
        case.headers["Authorization"] = f"Bearer {data}"


def _positive(case):
    return not case.meta or not case.meta.generation.mode.is_negative


# bcrypt reads 72 bytes; the schema can only count characters.
PASSWORD_FIELDS = ("password", "new_password", "newPassword")


def _visible_display_name(value):
    """DisplayName's rules a pattern cannot state: no unassigned code points, and at
    least one letter, digit, punctuation mark or symbol."""
    text = value.strip()
    if any(unicodedata.category(c) == "Cn" for c in text):
        return False
    blanks = "\u115f\u1160\u3164\uffa0\u2800"
    return any(unicodedata.category(c)[0] in "LNPS" and c not in blanks for c in text)


def _clean_preferences(value, depth=1):
    """Preferences below the top level: keys and strings without control characters
    (tab, LF, CR allowed in strings), at most 10 levels deep (the schema states the top
    level only)."""
    if isinstance(value, dict):
        if depth > 10:
            return {}
        clean = {}
        for key, item in value.items():
            key = "".join(c for c in key if unicodedata.category(c) != "Cc")
            if key and not key.startswith("$") and "." not in key and len(key) <= 64:
                clean[key] = _clean_preferences(item, depth + 1)
        return clean
    if isinstance(value, list):
        return [] if depth > 10 else [_clean_preferences(item, depth + 1) for item in value]
    if isinstance(value, str):
        return "".join(c for c in value if unicodedata.category(c) != "Cc" or c in "\t\n\r")
    return value


def _common_passwords():
    """`COMMON_PASSWORDS` of src/domain/password.rs: the server refuses them although the
    schema (which only states lengths) allows them."""
    source = os.path.join(os.path.dirname(__file__), "..", "..", "src", "domain", "password.rs")
    with open(source) as f:
        text = f.read()
    block = text.split("pub const COMMON_PASSWORDS", 1)[1].split("];", 1)[0]
    return {line.strip().strip(",").strip('"') for line in block.splitlines() if line.strip().startswith('"')}


COMMON_PASSWORDS = _common_passwords()


def _fit_utf8(text, limit=72):
    while len(text.encode()) > limit:
        text = text[:-1]
    return text


@schemathesis.hook
def map_case(context, case):
    if not _positive(case):
        return case
    path, method = case.operation.path, case.operation.method.upper()
    if isinstance(case.body, dict) and path in ("/auth/register", "/auth/reset-password", "/auth/change-password"):
        for name in PASSWORD_FIELDS:
            if isinstance(case.body.get(name), str):
                case.body[name] = _fit_utf8(case.body[name])
                if case.body[name].lower() in COMMON_PASSWORDS:
                    case.body[name] = "correct horse battery"
    if isinstance(case.body, dict) and path == "/users/me/email" and "password" in case.body:
        # Every fuzzed user has PASSWORD: with it the request reaches the code and the mail
        # (a random one only ever meets the 403, and ten of them the 429).
        case.body["password"] = PASSWORD
    if isinstance(case.body, dict) and path in ("/auth/register", "/users/me"):
        for name in ("display_name", "displayName"):
            value = case.body.get(name)
            if isinstance(value, str) and not _visible_display_name(value):
                case.body[name] = "Ada"
        # A name of the right form is also looked up in the zone database (422 if not
        # a zone there), which a pattern cannot say.
        value = case.body.get("timezone")
        if isinstance(value, str) and value.strip():
            case.body["timezone"] = "Europe/Berlin"
        if isinstance(case.body.get("preferences"), dict):
            case.body["preferences"] = {
                key: _clean_preferences(item, 2) for key, item in case.body["preferences"].items()
            }
    if path.endswith("/record") and method == "POST":
        # A key names one request: the same key with another body is refused (422).
        for name in list(case.headers or {}):
            if name.lower() == "idempotency-key":
                case.headers[name] = uuid.uuid4().hex
        # "Not in the future" is relative to the server's clock.
        if isinstance(case.body, dict):
            for name in ("occurred_at", "occurredAt"):
                if isinstance(case.body.get(name), str):
                    case.body[name] = "2026-01-01T08:00:00Z"
    if path.endswith("/activity") and isinstance(case.query, dict):
        # A cursor is valid only as a previous page's `next_cursor`.
        case.query.pop("cursor", None)
        # `from` must not be after `to`: a rule on two fields together.
        if case.query.get("from") is not None and case.query.get("to") is not None:
            case.query.pop("from")
    return case
