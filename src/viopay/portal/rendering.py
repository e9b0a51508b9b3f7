"""Jinja2 templates of the portal, their filters (money, times) and the static files."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from viopay.money import money

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
# Versioned URLs let browsers keep static files for long: a change changes the URL.
STATIC_FILES = {
    path.name: hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    for path in sorted(STATIC_DIR.iterdir())
    if path.suffix in STATIC_TYPES
}


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def _parse(value: str | datetime | None) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def when(value: str | datetime | None, tz: str = "UTC") -> str:
    moment = _parse(value)
    if moment is None:
        return "—"
    return moment.astimezone(zone(tz)).strftime("%d %b %Y, %H:%M")


def when_full(value: str | datetime | None, tz: str = "UTC") -> str:
    moment = _parse(value)
    if moment is None:
        return ""
    return moment.astimezone(zone(tz)).strftime("%Y-%m-%d %H:%M:%S %Z")


def ago(value: str | datetime | None, now: datetime | None = None) -> str:
    moment = _parse(value)
    if moment is None:
        return "never"
    seconds = int(((now or datetime.now(UTC)) - moment).total_seconds())
    if seconds < 60:
        return "just now"
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if unit == 'day' and count > 1 else ''} ago"
    return "just now"


def humanize(code: str) -> str:
    """``partially_refunded`` → ``Partially refunded``; ``device.claimed`` → ``Device claimed``."""
    text = code.replace(".", " ").replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def sentence(text: str) -> str:
    """A validation message as a sentence: ``must be an https URL`` → ``Must be an https URL.``"""
    text = text.strip()
    if not text:
        return text
    return text[:1].upper() + text[1:] + ("" if text[-1] in ".!?" else ".")


def static_url(name: str) -> str:
    return f"/portal/static/{name}?v={STATIC_FILES[name]}"


def with_query(path: str, params: dict[str, str], **extra: str) -> str:
    query = urlencode({**params, **extra})
    return f"{path}?{query}" if query else path


def details(data: dict[str, Any]) -> list[tuple[str, str]]:
    """An event's data as short ``(name, value)`` pairs for one table cell."""
    pairs = []
    for key, value in data.items():
        if isinstance(value, dict | list):
            text = orjson.dumps(value).decode()
        else:
            text = "—" if value is None else str(value)
        pairs.append((key, text if len(text) <= 120 else text[:117] + "…"))
    return pairs


def swatch(color: str) -> str:
    """A data: URI of a small square in ``color`` (no inline style: the CSP forbids it)."""
    svg = f"<svg xmlns='http://www.w3.org/2000/svg' width='16' height='16'><rect width='16' height='16' rx='3' fill='{color}'/></svg>"
    return "data:image/svg+xml," + svg.replace("#", "%23").replace("<", "%3C").replace(">", "%3E")


@dataclass(frozen=True)
class Section:
    """One entry of the portal's menu (``base.html``)."""

    key: str  # the page's ``section``, and the menu icon's name
    href: str
    label: str
    managers_only: bool = False  # shown to owners and admins only


# The menu, in order: a new page adds its section here.
NAV_SECTIONS: list[Section] = [
    Section("devices", "/portal/devices", "Devices"),
    Section("claim", "/portal/claim", "Claim a device", managers_only=True),
    Section("charges", "/portal/charges", "Charges"),
    Section("config", "/portal/config", "Settings"),
    Section("events", "/portal/events", "Activity"),
    Section("webhooks", "/portal/webhooks", "Webhooks"),
]


env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(default=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
env.filters.update(
    money=money,
    when=when,
    when_full=when_full,
    ago=ago,
    humanize=humanize,
    swatch=swatch,
    details=details,
    sentence=sentence,
)
env.globals.update(static=static_url, with_query=with_query, nav_sections=NAV_SECTIONS)


def compile_templates() -> None:
    """Compile every template now (at start-up; ~80 ms for all), not at each page's first view
    on the event loop, where every request in flight would wait for it."""
    for name in env.list_templates(extensions=["html"]):  # not an editor's backup file
        env.get_template(name)


def render(
    request: Request, name: str, context: dict[str, Any], *, status: int = 200
) -> HTMLResponse:
    state = getattr(request.state, "portal_state", None)
    portal = getattr(request.state, "portal", None)
    values: dict[str, Any] = {
        "csrf_token": state.csrf if state is not None else "",
        "flashes": state.take_flashes() if state is not None else [],
        "portal": portal,
        "who": getattr(request.state, "portal_who", None),
        "tz": portal.merchant.timezone if portal is not None else "UTC",
        "section": "",
        "path": request.url.path,
    }
    values.update(context)
    return HTMLResponse(env.get_template(name).render(values), status_code=status)
