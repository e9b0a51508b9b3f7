"""The merchant backoffice, served under ``/portal`` by the same application as the API.

Server-rendered HTML (Jinja2) on top of the merchant API's own services and views, a few lines
of plain script for progressive enhancement, and no front-end build step.
"""

from fastapi import APIRouter

from viopay.portal import signin, views, webhooks

router = APIRouter()
router.include_router(signin.router)
router.include_router(webhooks.router)
router.include_router(views.router)  # last: its catch-all answers unknown portal paths

__all__ = ["router"]
