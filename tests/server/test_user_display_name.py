"""A user's display name (issue 23: the clinician's printed report is signed with it), through the
API on SQLite and PostgreSQL: given when the account is made, changed, removed, refused when it is
not one line of at most 120 characters."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

API = "/api/v1"
PASSWORD = "a long enough password"


def test_a_display_name_is_given_changed_and_removed(client: TestClient, world: Any) -> None:
    admin = world.admin.headers
    made = client.post(
        f"{API}/users",
        headers=admin,
        json={
            "email": "dr.byron@example.org",
            "password": PASSWORD,
            "role": "clinician",
            "display_name": "  Dr Ada Byron ",
        },
    )
    assert made.status_code == 201, made.text
    user = made.json()
    assert user["display_name"] == "Dr Ada Byron"  # the ends' spaces dropped
    url = f"{API}/users/{user['id']}"

    renamed = client.patch(url, headers=admin, json={"display_name": "Dr Ada King"})
    assert renamed.status_code == 200 and renamed.json()["display_name"] == "Dr Ada King"
    untouched = client.patch(url, headers=admin, json={"role": "clinician"})
    assert untouched.json()["display_name"] == "Dr Ada King"  # not named: not changed
    for bad, why in (("Dr\nAda", "one line"), ("x" * 121, "at most 120")):
        refused = client.patch(url, headers=admin, json={"display_name": bad})
        assert refused.status_code == 422 and why in refused.text, refused.text
    assert client.get(url, headers=admin).json()["display_name"] == "Dr Ada King"
    removed = client.patch(url, headers=admin, json={"display_name": " "})
    assert removed.status_code == 200 and removed.json()["display_name"] is None

    unnamed = client.post(
        f"{API}/users",
        headers=admin,
        json={"email": "nurse@example.org", "password": PASSWORD, "role": "clinician"},
    )
    assert unnamed.status_code == 201 and unnamed.json()["display_name"] is None
    assert (
        client.patch(url, headers=world.clinician.headers, json={"display_name": "Me"}).status_code
        == 403
    )
