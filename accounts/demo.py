"""Demo data for the embedded run. Every function is idempotent: keyed on natural keys."""

from __future__ import annotations

from django.db import transaction

from accounts.models import User

DEMO_ADMIN_EMAIL = "admin@example.com"
DEMO_ADMIN_PASSWORD = "demo-admin-password"

DEMO_USERS = [
    ("auth0|64f1c2a9e4b0a1b2c3d4e5f6", "ada@example.com", "Ada Lovelace", "active"),
    ("google-oauth2|115161017478488946656", "grace@example.com", "Grace Hopper", "active"),
    ("auth0|64f1c2a9e4b0a1b2c3d4e5f7", "alan@example.com", "Alan Turing", "active"),
    ("google-oauth2|108271349872349872341", "edsger@example.com", "Edsger Dijkstra", "active"),
    ("auth0|64f1c2a9e4b0a1b2c3d4e5f8", "barbara@example.com", "Barbara Liskov", "active"),
    ("auth0|64f1c2a9e4b0a1b2c3d4e5f9", "mallory@example.com", "Mallory Suspended", "suspended"),
]


@transaction.atomic
def seed() -> list[str]:
    admin = User.objects.filter(email=DEMO_ADMIN_EMAIL).first()
    if admin is None:
        User.objects.create_superuser(DEMO_ADMIN_EMAIL, DEMO_ADMIN_PASSWORD, name="Demo Operator")
        admin_line = f"Created the demo operator {DEMO_ADMIN_EMAIL}."
    else:
        # Keep the printed login true even if someone changed it in the demo database.
        admin.set_password(DEMO_ADMIN_PASSWORD)
        admin.is_admin = admin.is_superuser = True
        admin.status = User.Status.ACTIVE
        admin.save(update_fields=["password", "is_admin", "is_superuser", "status"])
        admin_line = f"The demo operator {DEMO_ADMIN_EMAIL} exists; password reset."

    created = 0
    for user_id, email, name, status in DEMO_USERS:
        _, was_created = User.objects.get_or_create(
            id=user_id,
            defaults={"email": email, "name": name, "status": status, "password": "!"},
        )
        created += was_created
    return [admin_line, f"Demo users: {created} created, {len(DEMO_USERS) - created} existed."]
