"""Device enrollment over HTTPS: one-time codes, CSR signing, renewal.

No login: a device proves itself with its enrollment code (``POST /enroll``) or, to renew, with a
signature by its current certificate's key (``POST /enroll/renew``). See ``server/enrollment.py``.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request

from resonera.server.api.deps import SessionDep, StateDep, enroller
from resonera.server.api.errors import ApiError
from resonera.server.audit import client_of
from resonera.server.enrollment import EnrollmentError, Issued
from resonera.server.schemas import EnrolledPublic, EnrollIn, ErrorResponse, RenewIn

router = APIRouter(prefix="/enroll", tags=["enrollment"])
#: The issuing CA is configured but cannot be used (missing files, wrong passphrase).
_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorResponse, "description": "the issuing CA cannot be used"}
}


def _answer(issued: Issued) -> EnrolledPublic:
    values = asdict(issued)
    return EnrolledPublic(
        certificate=values.pop("certificate_pem"), chain=values.pop("chain_pem"), **values
    )


def _refused(exc: EnrollmentError) -> ApiError:
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
    return ApiError(exc.status, str(exc), headers=headers)


@router.post("", response_model=EnrolledPublic, responses=_UNAVAILABLE)
def enroll(
    body: EnrollIn, state: StateDep, session: SessionDep, request: Request
) -> EnrolledPublic:
    """Exchange a one-time code and a CSR for a device certificate, the CA chain, the server's
    signing key and the broker address. 403 for a wrong, used or expired code; 429 (with
    ``Retry-After``) after too many failures for the serial or from the address."""
    try:
        issued = enroller(state).enroll(
            session,
            serial=body.serial,
            code=body.code,
            csr_pem=body.csr.encode(),
            client=client_of(request),
            device_time=body.time,
        )
    except EnrollmentError as exc:
        raise _refused(exc) from None
    return _answer(issued)


@router.post("/renew", response_model=EnrolledPublic, responses=_UNAVAILABLE)
def renew(body: RenewIn, state: StateDep, session: SessionDep) -> EnrolledPublic:
    """A new certificate for a new key, signed for by the current, unrevoked certificate's key."""
    try:
        issued = enroller(state).renew(
            session,
            certificate_pem=body.certificate.encode(),
            csr_pem=body.csr.encode(),
            time=body.time,
            signature=body.signature,
        )
    except EnrollmentError as exc:
        raise _refused(exc) from None
    return _answer(issued)
