"""Device enrollment over HTTPS: one-time codes, CSR signing, renewal."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/enroll", tags=["enrollment"])
