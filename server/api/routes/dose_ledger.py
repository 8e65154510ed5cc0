"""Clinician reset of a device's corrupted dose ledger, carried by the signed desired state."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["dose"])
