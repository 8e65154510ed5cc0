"""Paged lists: every list the API answers takes ``limit`` and ``offset`` and says, in headers, how
many there are in all (``X-Total-Count``) and where the next and previous pages are (``Link``,
RFC 8288: ``rel="next"``, ``rel="prev"``). The body stays the array it always was, so a client
that reads only the body is unchanged.

A route takes ``page: PageDep`` and ``response: Response``, reads its rows with ``page.limit`` and
``page.offset``, and calls ``page.describe(request, response, total)``; ``slice_of`` pages a list
the route holds in full (the program library is filtered in Python).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, TypeVar

from fastapi import Depends, Query, Request, Response

#: The size of a page when none is asked for, and the largest one may ask for.
DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
MAX_OFFSET: Final = 10**9
TOTAL_HEADER: Final = "X-Total-Count"

#: What every paged list documents for its 200 answer (``responses=`` of its route).
PAGED_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    200: {
        "headers": {
            TOTAL_HEADER: {
                "description": "how many items there are in all, over every page",
                "schema": {"type": "integer", "minimum": 0},
            },
            "Link": {
                "description": (
                    'RFC 8288 links to the other pages: rel="next" while there are more, '
                    'rel="prev" after the first page (relative to this request\'s address)'
                ),
                "schema": {"type": "string"},
            },
        }
    }
}

T = TypeVar("T")


@dataclass(frozen=True)
class Page:
    """Which part of a list a request asks for."""

    limit: int
    offset: int

    def slice_of(self, items: Sequence[T]) -> list[T]:
        return list(items[self.offset : self.offset + self.limit])

    def describe(self, request: Request, response: Response, total: int) -> None:
        """Set ``X-Total-Count`` and, when there are other pages, ``Link`` on ``response``."""
        response.headers[TOTAL_HEADER] = str(total)
        links = []
        if self.offset + self.limit < total:
            links.append(f'<{self._address(request, self.offset + self.limit)}>; rel="next"')
        if self.offset > 0:
            earlier = max(0, min(self.offset, total) - self.limit)
            links.append(f'<{self._address(request, earlier)}>; rel="prev"')
        if links:
            response.headers["Link"] = ", ".join(links)

    def _address(self, request: Request, offset: int) -> str:
        """This request's path and query with another ``offset`` (and the same ``limit``)."""
        url = request.url.include_query_params(limit=self.limit, offset=offset)
        return f"{url.path}?{url.query}"


def page_params(
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description=f"items per page (≤ {MAX_LIMIT})")
    ] = DEFAULT_LIMIT,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="items to skip")] = 0,
) -> Page:
    return Page(limit=limit, offset=offset)


PageDep = Annotated[Page, Depends(page_params)]
