"""Every time says its zone: the admin, pages and emails render datetimes as
`2026-12-05 19:44 UTC` (TIME_ZONE is UTC; `T` names the zone they are shown in)."""

DATETIME_FORMAT = "Y-m-d H:i T"
SHORT_DATETIME_FORMAT = "Y-m-d H:i T"
