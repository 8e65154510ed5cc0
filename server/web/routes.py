"""Dashboard pages (server-rendered, cookie sessions with CSRF protection)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)
