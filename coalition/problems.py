"""RFC 9457 problems as plain values: the slug table, Problem and Refusal, validation errors.

No Flask here: domain modules raise a Problem, and coalition/errors.py turns it into the HTTP
answer (problem+json, its headers, the request id).
"""
from __future__ import annotations

PROBLEM_JSON = "application/problem+json"

# slug -> (status, title). The slugs are part of the partner contract (docs/partner-api.md).
SLUGS: dict[str, tuple[int, str]] = {
    "malformed-request": (400, "Malformed request"),
    # Authentication (partners/tokens.py). Until a token's signature verifies, every refusal is
    # `invalid-token`; once it does, the caller holds a registered key and is told exactly what
    # is wrong.
    "invalid-token": (401, "Invalid token"),
    "key-revoked": (401, "Key revoked"),
    "partner-suspended": (401, "Partner suspended"),
    "token-claims-invalid": (401, "Token claims invalid"),
    "token-expired": (401, "Token expired"),
    "token-not-yet-valid": (401, "Token not yet valid"),
    "token-lifetime-too-long": (401, "Token lifetime too long"),
    "token-wrong-issuer": (401, "Token issuer wrong"),
    "token-wrong-audience": (401, "Token audience wrong"),
    "token-htm-mismatch": (401, "Token method mismatch"),
    "token-htu-mismatch": (401, "Token URL mismatch"),
    "token-bsh-mismatch": (401, "Token body hash mismatch"),
    "token-replayed": (401, "Token replayed"),
    "forbidden": (403, "Forbidden"),
    "member-locked": (403, "Member locked"),
    "member-auth-required": (403, "Member authentication required"),
    "member-auth-invalid": (403, "Member authentication invalid"),
    "not-found": (404, "Not found"),
    "method-not-allowed": (405, "Method not allowed"),
    "claim-id-conflict": (409, "Claim id conflict"),
    "period-open": (409, "Period open"),
    "period-closed": (409, "Period closed"),
    "hold-closed": (409, "Hold closed"),
    "coupon-ended": (409, "Coupon ended"),
    "payload-too-large": (413, "Payload too large"),
    "unsupported-media-type": (415, "Unsupported media type"),
    "validation-error": (422, "Validation error"),
    "insufficient-points": (422, "Insufficient points"),
    "reversal-exceeds-claim": (422, "Reversal exceeds claim"),
    "limit-exceeded": (422, "Limit exceeded"),
    "rate-limited": (429, "Rate limited"),
    "internal-error": (500, "Internal error"),
    "unavailable": (503, "Service unavailable"),
    # Answered by the serving edge (deploy/: nginx, gunicorn), never by the app itself.
    "uri-too-long": (414, "URI too long"),
    "headers-too-large": (431, "Request headers too large"),
    "bad-gateway": (502, "Bad gateway"),
    "gateway-timeout": (504, "Gateway timeout"),
}


# A problem's size is bounded whatever the input: a 300 KB upload of empty records once
# answered a 25 MB list. At most MAX_LISTED_ERRORS errors are listed, `errors_total` counts them
# all, and no text taken from the input (a pointer naming a 500 KB key, say) runs longer than
# MAX_TEXT characters.
MAX_LISTED_ERRORS = 100
MAX_TEXT = 200
_CLIPPED = "..."


def problem_type(slug: str) -> str:
    return f"/problems/{slug}"


def clip(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[:limit - len(_CLIPPED)] + _CLIPPED


class Problem(Exception):
    """A domain or request error that maps to one problem+json response."""

    def __init__(self, slug: str, detail: str, *, errors: list[dict] | None = None,
                 headers: dict[str, str] | None = None, extensions: dict | None = None) -> None:
        super().__init__(detail)
        self.slug = slug
        self.extensions = extensions or {}  # RFC 9457 extension members (hold_status, ...)
        self.status, self.title = SLUGS[slug]
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}

    def body(self) -> dict:
        doc = {"type": problem_type(self.slug), "title": self.title,
               "status": self.status, "detail": clip(self.detail, 4 * MAX_TEXT),
               **self.extensions}
        if self.errors is not None:
            doc["errors"] = [{name: clip(str(value)) for name, value in error.items()}
                             for error in self.errors[:MAX_LISTED_ERRORS]]
            doc["errors_total"] = len(self.errors)
            if len(self.errors) > MAX_LISTED_ERRORS:
                doc["detail"] += f" The first {MAX_LISTED_ERRORS} of {len(self.errors)} errors are listed."
        return doc


class Refusal(Problem):
    """A refusal that leaves a record: a wrong PIN counted under the member's row lock, the lock
    that the fifth one sets, the day's first hit of a redemption limit (with its audit event).
    It is raised before anything is booked, so the request's transaction holds that record and
    nothing else: the partner API commits it, with the token's jti, where any other Problem is
    rolled back."""


def validation_problem(messages, detail: str = "The request has invalid fields.") -> Problem:
    return Problem("validation-error", detail, errors=pointers(messages))


def pointers(messages, prefix: str = "") -> list[dict]:
    """Flatten marshmallow's nested error dict into RFC 6901 pointers."""
    out: list[dict] = []
    if isinstance(messages, dict):
        for key, value in messages.items():
            if key == "_schema":
                out.extend(pointers(value, prefix))
            else:
                token = str(key).replace("~", "~0").replace("/", "~1")
                out.extend(pointers(value, f"{prefix}/{token}"))
    elif isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        out.extend({"pointer": prefix or "/", "detail": m} for m in messages)
    elif isinstance(messages, list):
        for m in messages:
            out.extend(pointers(m, prefix))
    else:
        out.append({"pointer": prefix or "/", "detail": str(messages)})
    return out
