"""Checking a pasted kubeconfig: specific messages, TLS verification kept on, no secrets shown."""

from __future__ import annotations

import base64

import pytest
import yaml

from clusters.kubeconfig import (
    KubeconfigError,
    kubeconfig_summary,
    parse_kubeconfig,
    validate_kubeconfig,
)

TOKEN = "eyJhbGciOiJSUzI1NiJ9.secret-service-account-token"
PEM_DATA = base64.b64encode(
    b"-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"
).decode()
KEY_DATA = base64.b64encode(b"-----BEGIN PRIVATE KEY-----\nMIGfake\n-----END PRIVATE KEY-----\n")


def kubeconfig(**overrides) -> dict:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "prod",
                "cluster": {
                    "server": "https://1.2.3.4:6443",
                    "certificate-authority-data": PEM_DATA,
                },
            }
        ],
        "users": [{"name": "admin", "user": {"token": TOKEN}}],
        "contexts": [{"name": "prod-admin", "context": {"cluster": "prod", "user": "admin"}}],
        "current-context": "prod-admin",
    }
    config.update(overrides)
    return config


def as_text(config: object) -> str:
    return yaml.safe_dump(config, sort_keys=False)


def error_for(text: str) -> str:
    with pytest.raises(KubeconfigError) as caught:
        parse_kubeconfig(text)
    return str(caught.value)


def test_a_flattened_kubeconfig_parses_to_the_dict_the_client_loads():
    config = parse_kubeconfig(as_text(kubeconfig()))

    assert config["clusters"][0]["cluster"]["server"] == "https://1.2.3.4:6443"
    assert config["users"][0]["user"]["token"] == TOKEN
    assert config["current-context"] == "prod-admin"


def test_a_single_context_is_used_when_current_context_is_not_set():
    config = kubeconfig()
    del config["current-context"]

    assert parse_kubeconfig(as_text(config))["current-context"] == "prod-admin"


def test_text_that_is_not_yaml_is_refused_with_its_position_but_not_its_content():
    text = f"clusters: []\nusers:\n- name: admin\n  user: {{token: {TOKEN}\n  bad: [\n"

    message = error_for(text)

    assert message.startswith("The kubeconfig is not valid YAML: line ")
    assert "secret" not in message


def test_yaml_that_is_a_list_is_refused():
    assert "must be a YAML mapping" in error_for(as_text([kubeconfig()]))


def test_empty_text_is_refused():
    assert error_for("  \n") == "The kubeconfig is empty."


def test_a_kubeconfig_without_clusters_is_refused():
    assert error_for(as_text(kubeconfig(clusters=[]))) == (
        "The kubeconfig has no cluster with a server address."
    )


def test_a_cluster_without_a_server_is_refused():
    clusters = [{"name": "prod", "cluster": {"certificate-authority-data": PEM_DATA}}]

    assert "no cluster with a server address" in error_for(as_text(kubeconfig(clusters=clusters)))


def test_a_plain_http_server_is_refused():
    clusters = [{"name": "prod", "cluster": {"server": "http://1.2.3.4:8080"}}]

    assert "must be an https:// URL" in error_for(as_text(kubeconfig(clusters=clusters)))


def test_a_kubeconfig_without_users_is_refused():
    assert error_for(as_text(kubeconfig(users=[]))) == "The kubeconfig has no users."


def test_a_current_context_that_names_no_context_is_refused():
    message = error_for(as_text(kubeconfig(**{"current-context": "staging"})))

    assert "current-context 'staging' names no context" in message


def test_several_contexts_without_a_current_context_are_refused():
    config = kubeconfig()
    del config["current-context"]
    config["contexts"].append({"name": "other", "context": {"cluster": "prod", "user": "admin"}})

    assert "set current-context" in error_for(as_text(config))


def test_a_context_naming_a_missing_user_is_refused():
    contexts = [{"name": "prod-admin", "context": {"cluster": "prod", "user": "nobody"}}]

    assert "names user 'nobody'" in error_for(as_text(kubeconfig(contexts=contexts)))


@pytest.mark.parametrize("value", [True, "true", "false", 1])
def test_skipping_tls_verification_is_refused(value):
    clusters = [
        {
            "name": "prod",
            "cluster": {"server": "https://1.2.3.4:6443", "insecure-skip-tls-verify": value},
        }
    ]

    message = error_for(as_text(kubeconfig(clusters=clusters)))

    assert "insecure-skip-tls-verify" in message
    assert "TLS verification must stay on" in message


def test_an_explicit_insecure_skip_tls_verify_false_is_accepted():
    config = kubeconfig()
    config["clusters"][0]["cluster"]["insecure-skip-tls-verify"] = False

    parse_kubeconfig(as_text(config))


def test_certificate_authority_data_that_is_not_a_certificate_is_refused():
    config = kubeconfig()
    config["clusters"][0]["cluster"]["certificate-authority-data"] = "bm90IGEgY2VydA=="

    assert "not a base64 PEM certificate" in error_for(as_text(config))


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ({"exec": {"command": "aws", "args": ["eks", "get-token"]}}, "running a command"),
        ({"auth-provider": {"name": "gcp"}}, "running a command"),
        ({"tokenFile": "/var/run/secrets/token"}, "paste the contents as token"),
        ({"token": TOKEN, "client-key": "/etc/key.pem"}, "as client-key-data"),
        ({"username": "admin", "password": "hunter2"}, "username and password"),
        ({}, "has no credentials"),
        ({"client-certificate-data": PEM_DATA}, "has no client-key-data"),
    ],
)
def test_credentials_this_server_cannot_or_will_not_use_are_refused(user, expected):
    message = error_for(as_text(kubeconfig(users=[{"name": "admin", "user": user}])))

    assert expected in message
    assert "hunter2" not in message


def test_the_summary_names_server_user_and_kind_of_credentials_but_no_secret():
    summary = kubeconfig_summary(as_text(kubeconfig()))

    assert summary == "cluster https://1.2.3.4:6443, user admin (token)"
    assert TOKEN not in summary


def test_the_summary_of_a_client_certificate_user():
    user = {"client-certificate-data": PEM_DATA, "client-key-data": KEY_DATA.decode()}
    text = as_text(kubeconfig(users=[{"name": "admin", "user": user}]))

    assert (
        kubeconfig_summary(text) == "cluster https://1.2.3.4:6443, user admin (client certificate)"
    )


# The server is a scheme, a host and a port; nothing reroutes the connection


@pytest.mark.parametrize(
    "server",
    [
        "https://1.2.3.4:6443/internal/x?y=",
        "https://1.2.3.4:6443/api",
        "https://1.2.3.4:6443?y=1",
        "https://1.2.3.4:6443/#frag",
    ],
)
def test_a_server_url_with_a_path_query_or_fragment_is_refused(server):
    config = kubeconfig()
    config["clusters"][0]["cluster"]["server"] = server

    assert "without a path, query or fragment" in error_for(as_text(config))


def test_a_server_url_with_only_a_trailing_slash_is_fine():
    config = kubeconfig()
    config["clusters"][0]["cluster"]["server"] = "https://1.2.3.4:6443/"

    parse_kubeconfig(as_text(config))


@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        ("proxy-url", "http://proxy.internal:3128", "proxy-url"),
        ("proxy-url", "socks5://127.0.0.1:1080", "proxy-url"),
        ("tls-server-name", "kubernetes.default.svc", "tls-server-name"),
        ("certificate-authority", "/etc/kubernetes/ca.crt", "refers to a file"),
        ("some-future-setting", "x", "settings this server does not use"),
    ],
)
def test_cluster_settings_that_reroute_or_relax_the_connection_are_refused(
    setting, value, expected
):
    config = kubeconfig()
    config["clusters"][0]["cluster"][setting] = value

    message = error_for(as_text(config))

    assert expected in message
    assert value not in message


def test_a_deeply_nested_kubeconfig_is_refused_not_a_crash():
    assert "nested too deeply" in error_for("a: " + "[" * 5000 + "]" * 5000)


def test_a_huge_kubeconfig_is_refused_before_it_is_parsed():
    assert "longer than" in error_for("# " + "x" * 300_000)


def test_nul_characters_are_refused():
    assert "not valid YAML" in error_for(as_text(kubeconfig()).replace("prod", "pr\x00od", 1))


def test_when_saved_in_production_a_private_server_is_refused(settings):
    settings.OUTBOUND_ALLOW_LOCAL = False
    settings.OUTBOUND_ALLOWED_HOSTS = []
    config = kubeconfig()
    config["clusters"][0]["cluster"]["server"] = "https://169.254.169.254:6443"

    with pytest.raises(KubeconfigError) as caught:
        validate_kubeconfig(as_text(config))

    assert "metadata" in str(caught.value)
    assert TOKEN not in str(caught.value)
    # Parsing alone does not resolve: the fetch checks again when it connects.
    parse_kubeconfig(as_text(config))


def test_when_saved_in_production_a_named_internal_host_is_accepted(settings):
    settings.OUTBOUND_ALLOW_LOCAL = False
    settings.OUTBOUND_ALLOWED_HOSTS = ["localhost"]
    config = kubeconfig()
    config["clusters"][0]["cluster"]["server"] = "https://localhost:6443"

    validate_kubeconfig(as_text(config))


@pytest.mark.parametrize(
    "token", [TOKEN + "\n", "abc\r\ndef-secret", "abc def-secret", "abc\tdef-secret"]
)
def test_a_token_that_cannot_go_in_a_header_is_refused_without_quoting_it(token):
    # A `token: |` block keeps its last line break: every request would fail, in an error
    # that quotes the Authorization header, token and all.
    message = error_for(as_text(kubeconfig(users=[{"name": "admin", "user": {"token": token}}])))

    assert "one unbroken line" in message
    assert "secret" not in message and TOKEN not in message


def test_a_server_url_with_a_password_is_refused_without_showing_it():
    cluster = {"server": "http://u:hunter2@1.2.3.4:6443", "certificate-authority-data": PEM_DATA}

    message = error_for(as_text(kubeconfig(clusters=[{"name": "prod", "cluster": cluster}])))

    assert "must not carry a user or password" in message
    assert "hunter2" not in message
