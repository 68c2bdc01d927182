"""Billing's admins, by area. Importing the package registers them; the users and
clusters admins' billing parts (`users.UserBillingAdminMixin`,
`usage.ClusterUsageAdminMixin`) are composed in console/admin.py."""

from billing.admin import (  # noqa: F401
    closing,
    credits,
    prices,
    reconciliation,
    spending,
    stops,
    stripe,
    usage,
    users,
)
