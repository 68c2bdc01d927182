"""sql_array: one array literal per parameter, read back by PostgreSQL exactly."""

import datetime as dt
import uuid
from decimal import Decimal

import pytest
from django.db import connection

from plumbing.db import sql_array

pytestmark = pytest.mark.django_db


def read_back(literal: str, sql_type: str) -> list:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT unnest(%s::{sql_type}[])", [literal])
        return [value for (value,) in cursor]


def test_text_elements_come_back_exactly_whatever_they_contain():
    values = [
        "auth0|abc",
        'quote " inside',
        "back\\slash",
        "",
        "NULL",
        "comma, {brace}",
        "  spaces  ",
        "ünïcödé",
        "it's",
        None,
    ]
    assert read_back(sql_array(values, text=True), "text") == values


def test_decimals_keep_their_value_and_scale():
    values = [
        Decimal("1.0200000000"),
        Decimal("0E-10"),
        Decimal("1E+3"),
        Decimal("123456789.0123456789"),
        None,
    ]
    back = read_back(sql_array(values), "numeric")
    assert back == values
    assert [str(v) for v in back[:2]] == ["1.0200000000", "0E-10"]


def test_uuids_dates_and_integers():
    ids = [uuid.uuid4(), None, uuid.uuid4()]
    assert read_back(sql_array(ids), "uuid") == ids
    days = [dt.date(2026, 1, 31), dt.date(1999, 12, 1)]
    assert read_back(sql_array(days), "date") == days
    assert read_back(sql_array([0, 2**31 - 1, None]), "integer") == [0, 2**31 - 1, None]


def test_an_empty_list_is_an_empty_array():
    assert read_back(sql_array([]), "text") == []
    assert read_back(sql_array([], text=True), "text") == []
