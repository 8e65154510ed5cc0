"""Patient exports (FHIR R4 JSON, CSV) and program audio previews."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["exports"])
