"""Secrets at rest: Fernet encryption for model fields (cluster API keys, kubeconfigs).

Keys come from FIELD_ENCRYPTION_KEYS (comma-separated Fernet keys, newest first), not from
SECRET_KEY, so rotating one never touches the other. The newest key encrypts; every listed
key decrypts, so a key can be rotated in by putting it first, running
`manage.py rotate_encryption_keys`, and then dropping the old one.

A field's value is a `Secret`: it decrypts only when `.reveal()` is called, and prints as
"<secret>", so a secret cannot end up in a list page, a log line or an error by accident.
A wrong or missing key is a `SecretDecryptionError` at `.reveal()`, never ciphertext passed
on as if it were the value.
"""

from __future__ import annotations

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.db.models.query_utils import DeferredAttribute


class SecretDecryptionError(Exception):
    """A stored secret cannot be decrypted with any key in FIELD_ENCRYPTION_KEYS."""


@lru_cache(maxsize=8)
def _fernet_for(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise ImproperlyConfigured(
            "FIELD_ENCRYPTION_KEYS is empty: secrets cannot be encrypted or read. Generate a "
            "key with `python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())'`."
        )
    try:
        return MultiFernet([Fernet(key.encode()) for key in keys])
    except ValueError as error:
        raise ImproperlyConfigured(
            f"FIELD_ENCRYPTION_KEYS holds a value that is not a Fernet key ({error}). "
            "Each key is 32 url-safe base64-encoded bytes."
        ) from None


def fernet() -> MultiFernet:
    return _fernet_for(tuple(settings.FIELD_ENCRYPTION_KEYS))


def encrypt(plaintext: str) -> str:
    return fernet().encrypt(plaintext.encode()).decode()


def decrypt(ciphertext: str) -> str:
    try:
        return fernet().decrypt(ciphertext.encode()).decode()
    except InvalidToken:
        raise SecretDecryptionError(
            "A stored secret cannot be decrypted with any key in FIELD_ENCRYPTION_KEYS: the "
            "key it was encrypted with is missing (or the value was never encrypted). Restore "
            "the old key in FIELD_ENCRYPTION_KEYS, or set the secret again."
        ) from None


def rotate(ciphertext: str) -> str:
    """Re-encrypt under the newest key (decrypting with any listed key)."""
    try:
        return fernet().rotate(ciphertext.encode()).decode()
    except InvalidToken:
        raise SecretDecryptionError(
            "A stored secret cannot be decrypted with any key in FIELD_ENCRYPTION_KEYS, so it "
            "cannot be rotated."
        ) from None


def looks_encrypted(value: str) -> bool:
    """Fernet tokens are url-safe base64 of a version byte 0x80: they start with 'gAAAAA'."""
    return value.startswith("gAAAAA")


class Secret:
    """A secret value: ciphertext from the database, or plaintext just set by an operator."""

    __slots__ = ("_ciphertext", "_plaintext")

    def __init__(self, *, ciphertext: str | None = None, plaintext: str | None = None):
        self._ciphertext = ciphertext
        self._plaintext = plaintext

    def reveal(self) -> str:
        if self._plaintext is None:
            self._plaintext = decrypt(self._ciphertext)
        return self._plaintext

    def ciphertext(self) -> str:
        if self._ciphertext is None:
            self._ciphertext = encrypt(self._plaintext)
        return self._ciphertext

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__

    def __eq__(self, other):
        return isinstance(other, Secret) and self.reveal() == other.reveal()

    __hash__ = None


class _SecretAttribute(DeferredAttribute):
    """Whatever is assigned (plaintext str, Secret, None) is held as a Secret or None."""

    def __set__(self, instance, value):
        if isinstance(value, str):
            value = Secret(plaintext=value) if value != "" else None
        instance.__dict__[self.field.attname] = value


class EncryptedTextField(models.TextField):
    """A TEXT column holding a Fernet token; the Python value is a `Secret`."""

    descriptor_class = _SecretAttribute

    def from_db_value(self, value, expression, connection):
        return None if value is None else Secret(ciphertext=value)

    def to_python(self, value):
        if value is None or isinstance(value, Secret):
            return value
        return Secret(plaintext=str(value))

    def get_prep_value(self, value):
        if value is None:
            return None
        if isinstance(value, str):
            value = Secret(plaintext=value)
        return value.ciphertext()

    def value_to_string(self, obj):  # serialization (dumpdata) never writes plaintext
        value = self.value_from_object(obj)
        return None if value is None else value.ciphertext()

    def get_lookup(self, lookup_name):
        if lookup_name == "isnull":
            return super().get_lookup(lookup_name)
        return None  # ciphertext differs every time: comparing it means nothing


def encrypted_fields():
    """Every (model, field) pair in the project that holds an encrypted secret."""
    from django.apps import apps

    for model in apps.get_models():
        for field in model._meta.concrete_fields:
            if isinstance(field, EncryptedTextField):
                yield model, field


class RotationReport:
    def __init__(self):
        self.rotated = 0
        self.plaintext = 0
        self.per_field: dict[str, int] = {}

    def lines(self) -> list[str]:
        return [f"{name}: {count} re-encrypted" for name, count in self.per_field.items()]


def rotate_all_secrets(*, encrypt_plaintext: bool = False) -> RotationReport:
    """Re-encrypt every secret under the newest key, all or nothing (one transaction)."""
    from django.db import transaction

    report = RotationReport()
    with transaction.atomic():
        for model, field in encrypted_fields():
            label = f"{model._meta.db_table}.{field.column}"
            count = 0
            rows = model.objects.select_for_update().exclude(**{f"{field.attname}__isnull": True})
            for pk, secret in rows.values_list("pk", field.attname).order_by("pk").iterator():
                stored = secret._ciphertext
                if looks_encrypted(stored):
                    new = rotate(stored)
                elif encrypt_plaintext:
                    new = encrypt(stored)
                else:
                    report.plaintext += 1
                    continue
                model.objects.filter(pk=pk).update(**{field.attname: Secret(ciphertext=new)})
                count += 1
            report.per_field[label] = count
            report.rotated += count
    return report
