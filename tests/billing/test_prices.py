"""price_save / price_delete: the price rules hold for every writer, not only the form."""

import datetime as dt
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from billing.models import Price
from billing.prices import price_delete, price_save

pytestmark = pytest.mark.django_db


def _day(offset: int) -> dt.date:
    return timezone.now().date() + dt.timedelta(days=offset)


def test_a_price_cannot_start_in_the_past_whoever_writes_it():
    with pytest.raises(ValidationError, match="cannot start in the past"):
        price_save(
            price=Price(resource="cpu_hour", unit_price=Decimal("0.2"), effective_from=_day(-1)),
            actor="test",
        )
    assert not Price.objects.filter(effective_from=_day(-1)).exists()


def test_a_negative_price_is_refused_with_what_to_fix():
    with pytest.raises(ValidationError, match="cannot be negative"):
        price_save(
            price=Price(resource="cpu_hour", unit_price=Decimal("-1"), effective_from=_day(1)),
            actor="test",
        )


def test_a_price_in_effect_is_neither_changed_nor_deleted():
    card = Price.objects.filter(user=None, resource="cpu_hour").first()
    assert card.is_in_effect
    stored_price = card.unit_price
    card.unit_price = Decimal("99")
    with pytest.raises(ValidationError, match="in effect"):
        price_save(price=card, actor="test")
    with pytest.raises(ValidationError, match="in effect"):
        price_delete(price=card, actor="test")
    card.refresh_from_db()
    assert card.unit_price == stored_price


def test_a_future_price_can_be_corrected_and_withdrawn():
    price = price_save(
        price=Price(resource="gpu_hour", unit_price=Decimal("2"), effective_from=_day(3)),
        actor="test",
    )
    price.unit_price = Decimal("2.50")
    price_save(price=price, actor="test")
    assert Price.objects.get(pk=price.pk).unit_price == Decimal("2.50")
    price_delete(price=price, actor="test")
    assert not Price.objects.filter(pk=price.pk).exists()


def test_the_rate_card_admin_offers_no_bulk_delete(operator_client):
    page = operator_client.get("/admin/billing/price/").content.decode()
    assert "delete_selected" not in page
