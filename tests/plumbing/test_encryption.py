"""Cluster secrets are encrypted at rest, rotate cleanly and fail loudly with a wrong key."""

import pytest
from cryptography.fernet import Fernet
from django.core.management import CommandError, call_command
from django.db import connection

from clusters.models import HopsworksCluster
from plumbing.encryption import Secret, SecretDecryptionError
from tests.factories import ClusterFactory

pytestmark = pytest.mark.django_db

KUBECONFIG = "apiVersion: v1\nkind: Config\nusers: [{name: u, user: {token: kube-token-xyz}}]\n"


def raw(column: str, cluster) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM hopsworks_clusters WHERE name = %s", [cluster.name])
        return cursor.fetchone()[0]


@pytest.fixture
def keys(settings):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [old]
    return old, new


def test_raw_sql_shows_no_plaintext(keys):
    cluster = ClusterFactory(api_key="hw-api-key-plaintext", kubeconfig=KUBECONFIG)

    assert "hw-api-key-plaintext" not in raw("api_key", cluster)
    assert "kube-token-xyz" not in raw("kubeconfig", cluster)
    assert raw("api_key", cluster).startswith("gAAAAA")
    reloaded = HopsworksCluster.objects.get(pk=cluster.pk)
    assert reloaded.api_key.reveal() == "hw-api-key-plaintext"
    assert reloaded.kubeconfig.reveal() == KUBECONFIG


def test_a_secret_never_prints_itself(keys):
    cluster = HopsworksCluster.objects.get(pk=ClusterFactory(api_key="visible?").pk)
    assert "visible?" not in repr(cluster.api_key)
    assert "visible?" not in str(cluster.api_key)
    assert "visible?" not in str(cluster.__dict__)


def test_rotation_reencrypts_everything_under_the_new_key(keys, settings):
    old, new = keys
    first = ClusterFactory(api_key="key-one", kubeconfig=KUBECONFIG)
    second = ClusterFactory(api_key="key-two")
    before = raw("api_key", first)

    settings.FIELD_ENCRYPTION_KEYS = [new, old]
    call_command("rotate_encryption_keys")
    settings.FIELD_ENCRYPTION_KEYS = [new]  # the old key is gone now

    assert raw("api_key", first) != before
    assert HopsworksCluster.objects.get(pk=first.pk).api_key.reveal() == "key-one"
    assert HopsworksCluster.objects.get(pk=first.pk).kubeconfig.reveal() == KUBECONFIG
    assert HopsworksCluster.objects.get(pk=second.pk).api_key.reveal() == "key-two"


def test_a_wrong_key_fails_loudly_instead_of_passing_ciphertext_on(keys, settings):
    cluster = ClusterFactory(api_key="the-key")
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]

    loaded = HopsworksCluster.objects.get(pk=cluster.pk)
    with pytest.raises(SecretDecryptionError, match="FIELD_ENCRYPTION_KEYS"):
        loaded.api_key.reveal()
    with pytest.raises(CommandError, match="Nothing was changed"):
        call_command("rotate_encryption_keys")


def test_plaintext_adopted_from_the_old_system_is_found_and_encrypted(keys):
    cluster = ClusterFactory(api_key="x")
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE hopsworks_clusters SET api_key = 'legacy-plain' WHERE name = %s", [cluster.name]
        )

    with pytest.raises(CommandError, match="--encrypt-plaintext"):
        call_command("rotate_encryption_keys")
    call_command("rotate_encryption_keys", "--encrypt-plaintext")

    assert raw("api_key", cluster).startswith("gAAAAA")
    assert HopsworksCluster.objects.get(pk=cluster.pk).api_key.reveal() == "legacy-plain"


def test_a_missing_key_is_a_clear_configuration_error(settings):
    from django.core.exceptions import ImproperlyConfigured

    settings.FIELD_ENCRYPTION_KEYS = []
    with pytest.raises(ImproperlyConfigured, match="FIELD_ENCRYPTION_KEYS is empty"):
        Secret(plaintext="x").ciphertext()
