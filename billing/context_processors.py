"""What every page needs to label billed quantities."""

from billing.pricing import storage_unit


def units(request):
    return {"storage_unit": storage_unit()}
