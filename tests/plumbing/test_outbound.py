"""plumbing.outbound: where a credential may be sent, and a deadline no server can stretch."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import requests

from plumbing import outbound
from tests.fakes.raw_servers import DripServer, RecordingListener, SilentListener, http_response


@pytest.fixture
def production_rules(settings):
    settings.OUTBOUND_ALLOW_LOCAL = False
    settings.OUTBOUND_ALLOWED_HOSTS = []
    return settings


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://hopsworks.example.com", None),
        ("http://127.0.0.1:8181", None),
        ("http://example.com", "https"),
        ("https://user:pw@example.com", "user name or password"),
        ("https://example.com/?key=1", "query string"),
        ("https://exa\x00mple.com", "control characters"),
        ("ftp://example.com", "https"),
    ],
)
def test_urls_in_development(url, problem):
    found = outbound.url_problem(url)
    assert (found is None) if problem is None else (problem in found)


def test_in_production_plain_http_is_refused_even_to_this_machine(production_rules):
    assert "https" in outbound.url_problem("http://127.0.0.1:8181")
    assert outbound.url_problem("https://hopsworks.example.com") is None


@pytest.mark.parametrize(
    ("address", "what"),
    [
        ("169.254.169.254", "metadata"),
        ("169.254.170.2", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("100.100.100.200", "metadata"),
        ("127.0.0.1", "this machine"),
        ("::1", "this machine"),
        ("::ffff:127.0.0.1", "this machine"),
        ("::ffff:10.0.0.1", "private"),
        ("2002:7f00:1::", "this machine"),  # 6to4 around 127.0.0.1
        ("169.254.1.1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("100.64.0.1", "not a public"),
        ("0.0.0.0", "not a public"),
        ("224.0.0.1", "not a public"),
    ],
)
def test_non_public_addresses_are_refused(address, what):
    assert what in outbound.address_problem(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700:4700::1111", "151.101.1.1"])
def test_public_addresses_are_fine(address):
    assert outbound.address_problem(address) is None


def test_in_production_a_name_is_resolved_and_every_address_checked(production_rules):
    problem = outbound.destination_problem("https://localhost:8443")
    assert "refused address" in problem
    assert "this machine" in problem


def test_in_production_a_named_host_may_be_private(production_rules):
    production_rules.OUTBOUND_ALLOWED_HOSTS = ["LocalHost"]
    assert outbound.destination_problem("https://localhost:8443") is None


def test_in_production_a_name_that_does_not_resolve_is_refused(production_rules):
    assert "does not resolve" in outbound.destination_problem("https://nothing.invalid")


def test_nested_deadlines_keep_the_earlier_end():
    with outbound.deadline(5) as outer:
        with outbound.deadline(60) as inner:
            assert inner.ends == outer.ends
            assert outbound.current_budget() is inner
        assert outbound.current_budget() is outer
    assert outbound.current_budget() is None


def test_limits_are_short_and_single_unless_in_background(settings):
    settings.OUTBOUND_DEADLINE_SECONDS = 7
    settings.OUTBOUND_BACKGROUND_DEADLINE_SECONDS = 70
    assert outbound.limits() == outbound.Limits(7, 1, settings.OUTBOUND_MAX_RESPONSE_BYTES)
    with outbound.background_work():
        assert outbound.limits().deadline == 70
        assert outbound.limits().attempts == 3
        assert outbound.limits(quick=True).attempts == 1


def test_reading_stops_as_soon_as_the_answer_passes_the_limit():
    read = []

    def chunks():
        for _ in range(100):
            read.append(1)
            yield b"x" * 1000

    with pytest.raises(outbound.ResponseTooLarge, match="larger than 2500 bytes"):
        outbound.read_capped(chunks(), limit=2500)
    assert len(read) == 3


def test_a_slow_drip_ends_at_the_deadline_not_at_the_server_s_pace():
    session = outbound.guarded_session()
    with DripServer(http_response(200, b"x" * 500), interval=0.05) as slow:
        started = time.monotonic()
        with (
            pytest.raises(requests.RequestException),
            outbound.deadline(1.0) as budget,
        ):
            # A per-read timeout of 5 s never fires: a byte comes every 50 ms.
            response = session.get(slow.url, timeout=(5, 5), stream=True)
            outbound.read_capped(response.iter_content(1024), limit=10_000)
        elapsed = time.monotonic() - started

    assert budget.expired
    assert elapsed < 1.0 + 0.5


def test_a_server_that_never_answers_the_tls_handshake_is_cut_off_at_the_deadline():
    session = outbound.guarded_session()
    with SilentListener() as mute:
        started = time.monotonic()
        with pytest.raises(requests.RequestException), outbound.deadline(1.0):
            session.get(mute.url.replace("http:", "https:"), timeout=(5, 5))
        elapsed = time.monotonic() - started

    assert elapsed < 1.0 + 0.5


def test_a_connection_outside_a_deadline_is_a_programming_error():
    with (
        RecordingListener() as stranger,
        pytest.raises(RuntimeError, match=r"outside outbound\.deadline"),
    ):
        outbound.guarded_session().get(stranger.url, timeout=2)
    assert stranger.connections == 0


def test_in_production_a_refused_address_is_not_even_connected_to(production_rules):
    with (
        RecordingListener() as stranger,
        outbound.deadline(2),
        pytest.raises(requests.ConnectionError) as caught,
    ):
        outbound.guarded_session().get(stranger.url.replace("http:", "https:"), timeout=2)

    refused = outbound.find_cause(caught.value, outbound.DestinationRefused)
    assert refused is not None
    assert "this machine" in refused.problem
    assert stranger.connections == 0


def test_proxies_from_the_environment_are_not_used(monkeypatch):
    with RecordingListener() as proxy, DripServer(http_response(200, b"ok"), interval=0) as site:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        with outbound.deadline(2):
            response = outbound.guarded_session().get(site.url, timeout=2)

    assert response.content == b"ok"
    assert proxy.connections == 0


def fake_dns(monkeypatch, answers: dict[str, list[str]]):
    """Host names answered from `answers` (a list per lookup: the last one repeats)."""
    real = outbound.socket.getaddrinfo
    calls: dict[str, int] = {}

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            return real(host, port, *args, **kwargs)
        calls[host] = calls.get(host, 0) + 1
        address = answers[host][min(calls[host], len(answers[host])) - 1]
        family = outbound.socket.AF_INET6 if ":" in address else outbound.socket.AF_INET
        return [(family, outbound.socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(outbound.socket, "getaddrinfo", getaddrinfo)
    return calls


def test_every_address_of_a_name_is_checked_not_just_the_first(production_rules, monkeypatch):
    real = outbound.socket.getaddrinfo

    def two_addresses(host, port, *args, **kwargs):
        if host != "mixed.example":
            return real(host, port, *args, **kwargs)
        return [
            (outbound.socket.AF_INET, outbound.socket.SOCK_STREAM, 6, "", ("8.8.8.8", port)),
            (outbound.socket.AF_INET, outbound.socket.SOCK_STREAM, 6, "", ("10.0.0.7", port)),
        ]

    monkeypatch.setattr(outbound.socket, "getaddrinfo", two_addresses)

    problem = outbound.destination_problem("https://mixed.example")

    assert "10.0.0.7" in problem
    assert "private" in problem


def test_a_name_that_resolves_elsewhere_at_connect_time_is_refused_then(
    production_rules, monkeypatch
):
    # Public when saved, this machine when connecting (DNS rebinding).
    fake_dns(monkeypatch, {"rebind.example": ["8.8.8.8", "127.0.0.1"]})
    assert outbound.destination_problem("https://rebind.example") is None

    with (
        RecordingListener() as stranger,
        outbound.deadline(2),
        pytest.raises(requests.ConnectionError) as caught,
    ):
        outbound.guarded_session().get(f"https://rebind.example:{stranger.port}/", timeout=2)

    assert "this machine" in outbound.find_cause(caught.value, outbound.DestinationRefused).problem
    assert stranger.connections == 0


def test_the_connection_goes_to_the_address_that_was_checked(monkeypatch):
    # One lookup per connection: the socket connects to the answer the rule saw.
    calls = fake_dns(monkeypatch, {"site.example": ["127.0.0.1"]})
    with DripServer(http_response(200, b"ok"), interval=0) as site, outbound.deadline(2):
        response = outbound.guarded_session().get(f"http://site.example:{site.port}/", timeout=2)

    assert response.content == b"ok"
    assert calls == {"site.example": 1}


def test_a_name_lookup_that_hangs_ends_at_the_deadline(monkeypatch):
    real = outbound.socket.getaddrinfo
    release = threading.Event()

    def hanging(host, port, *args, **kwargs):
        if host != "slow-dns.example":
            return real(host, port, *args, **kwargs)
        release.wait(12)  # a resolver retrying an unresponsive nameserver
        return real("127.0.0.1", port, *args, **kwargs)

    monkeypatch.setattr(outbound.socket, "getaddrinfo", hanging)
    started = time.monotonic()
    try:
        with (
            pytest.raises(requests.ConnectionError, match="no answer from DNS"),
            outbound.deadline(1.0),
        ):
            outbound.guarded_session().get("http://slow-dns.example:9/", timeout=(5, 5))
    finally:
        release.set()

    assert time.monotonic() - started < 1.0 + 0.5


def test_several_addresses_that_never_answer_share_one_deadline(monkeypatch):
    # A listener whose queue is full: the kernel drops further SYNs, so a connect hangs
    # until its timeout, as with a firewall that drops packets.
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    port = full.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.2)
    three = [(socket.AF_INET, 6, ("127.0.0.1", port))] * 3
    monkeypatch.setattr(outbound, "resolve", lambda host, port: three)

    started = time.monotonic()
    try:
        with pytest.raises(requests.ConnectionError), outbound.deadline(1.5):
            outbound.guarded_session().get(f"http://firewalled.example:{port}/", timeout=(5, 5))
        elapsed = time.monotonic() - started
    finally:
        for sock in (*fillers, full):
            sock.close()

    assert elapsed < 1.5 + 0.5  # not 3 x 1.5 s
