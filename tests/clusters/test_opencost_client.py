"""The OpenCost client against a local Kubernetes API server over TLS, verification on."""

from __future__ import annotations

import datetime as dt
import socket
import time
from decimal import Decimal

import pytest

from clusters.opencost import (
    MetricsError,
    NamespaceUsage,
    fetch_day_allocations,
    gb_held_from_byte_hours,
    is_system_namespace,
)
from tests.fakes.kubernetes import (
    OPENCOST_PATH,
    TOKEN,
    FakeKubernetes,
    kubeconfig_for,
)
from tests.fakes.raw_servers import DripServer, RecordingListener, http_response
from tests.fakes.server import local_server
from tests.fakes.tls import make_test_ca

DAY = dt.date(2026, 11, 23)


@pytest.fixture(scope="module")
def kubernetes_server(test_ca):
    with local_server(test_ca) as server:
        yield server


@pytest.fixture
def fake(kubernetes_server):
    fake = FakeKubernetes.on(kubernetes_server)
    yield fake
    fake.release()


@pytest.fixture
def kubeconfig(fake, test_ca):
    return kubeconfig_for(fake, test_ca)


def fetch_error(**kwargs) -> str:
    with pytest.raises(MetricsError) as caught:
        fetch_day_allocations(day=DAY, **kwargs)
    return str(caught.value)


def test_asks_opencost_through_the_service_proxy_for_the_utc_day_per_namespace(fake, kubeconfig):
    fetch_day_allocations(kubeconfig=kubeconfig, day=DAY)

    [request] = fake.requests
    assert request.method == "GET"
    assert request.path == OPENCOST_PATH
    assert request.path == (
        "/api/v1/namespaces/opencost/services/opencost:9003/proxy/allocation/compute"
    )
    assert request.args == {
        "window": "2026-11-23T00:00:00Z,2026-11-24T00:00:00Z",
        "aggregate": "namespace",
        "accumulate": "true",
    }
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"


def test_figures_come_back_exactly_as_decimals(fake, kubeconfig):
    fake.set_allocations(
        DAY,
        {
            "team-a": {
                "cpuCoreHours": Decimal("12.34567"),
                "gpuHours": Decimal("0.5"),
                "pvByteHours": Decimal("257698037760"),
                "ramByteHours": Decimal("123456789012.12345"),
                "minutes": 1440,
            },
            "team-b": {"cpuCoreHours": 0.1, "minutes": 720},
        },
    )

    usage = fetch_day_allocations(kubeconfig=kubeconfig, day=DAY).namespaces

    assert usage == [
        NamespaceUsage(
            namespace="team-a",
            cpu_core_hours=Decimal("12.34567"),
            gpu_hours=Decimal("0.5"),
            pv_byte_hours=Decimal("257698037760"),
            ram_byte_hours=Decimal("123456789012.12345"),
            minutes=Decimal("1440"),
            notes=(),
        ),
        NamespaceUsage(
            namespace="team-b",
            cpu_core_hours=Decimal("0.1"),
            gpu_hours=Decimal("0"),
            pv_byte_hours=Decimal("0"),
            ram_byte_hours=Decimal("0"),
            minutes=Decimal("720"),
            notes=(),
        ),
    ]
    for figure in (usage[0].cpu_core_hours, usage[0].ram_byte_hours, usage[1].cpu_core_hours):
        assert type(figure) is Decimal


def test_null_nan_negative_and_missing_figures_count_as_zero_and_say_so(fake, kubeconfig):
    day = fake.allocation(DAY, "team-a", cpuCoreHours=None, pvByteHours=Decimal("-12.5"))
    day["ramByteHours"] = Decimal("NaN")
    del day["gpuHours"]
    fake.set_data(DAY, [{"team-a": day}])

    [usage] = fetch_day_allocations(kubeconfig=kubeconfig, day=DAY).namespaces

    assert (usage.cpu_core_hours, usage.gpu_hours, usage.pv_byte_hours, usage.ram_byte_hours) == (
        0,
        0,
        0,
        0,
    )
    assert usage.minutes == Decimal("1440")
    assert usage.notes == (
        "cpuCoreHours was null; counted as 0",
        "gpuHours was missing; counted as 0",
        "pvByteHours was -12.5; counted as 0",
        "ramByteHours was NaN; counted as 0",
    )


def test_system_namespaces_are_returned_and_flagged(fake, kubeconfig):
    fake.set_allocations(
        DAY,
        {
            "__idle__": {"cpuCoreHours": Decimal("40")},
            "__unallocated__": {},
            "kube-system": {"cpuCoreHours": Decimal("2")},
            "team-a": {"cpuCoreHours": Decimal("1")},
        },
    )

    usage = fetch_day_allocations(kubeconfig=kubeconfig, day=DAY).namespaces

    assert [(u.namespace, is_system_namespace(u.namespace)) for u in usage] == [
        ("__idle__", True),
        ("__unallocated__", True),
        ("kube-system", True),
        ("team-a", False),
    ]


@pytest.mark.parametrize(
    ("namespace", "system"),
    [
        ("kube-system", True),
        ("kube-public", True),
        ("kube-node-lease", True),
        ("kube-flannel", True),
        ("opencost", True),
        ("default", True),
        ("__idle__", True),
        ("__unallocated__", True),
        ("team-a", False),
        ("kubeflow", False),
        ("my-kube-project", False),
    ],
)
def test_is_system_namespace(namespace, system):
    assert is_system_namespace(namespace) is system


def test_several_allocation_sets_are_summed(fake, kubeconfig):
    fake.set_data(
        DAY,
        [
            {"team-a": fake.allocation(DAY, "team-a", cpuCoreHours=Decimal("1.5"), minutes=600)},
            {"team-a": fake.allocation(DAY, "team-a", cpuCoreHours=Decimal("2.25"), minutes=840)},
        ],
    )

    [usage] = fetch_day_allocations(kubeconfig=kubeconfig, day=DAY).namespaces

    assert usage.cpu_core_hours == Decimal("3.75")
    assert usage.minutes == Decimal("1440")


@pytest.mark.parametrize("data", [[], None, [{}]])
def test_no_allocations_is_an_empty_list_covering_no_minute_of_the_day(fake, kubeconfig, data):
    fake.set_data(DAY, data)

    answer = fetch_day_allocations(kubeconfig=kubeconfig, day=DAY)

    assert (answer.namespaces, answer.coverage_minutes) == ([], 0)


def test_a_day_opencost_has_nothing_for_is_an_empty_list(fake, kubeconfig):
    fake.set_allocations(DAY, {"team-a": {"cpuCoreHours": Decimal("1")}})

    answer = fetch_day_allocations(kubeconfig=kubeconfig, day=DAY + dt.timedelta(days=1))

    assert (answer.namespaces, answer.coverage_minutes) == ([], 0)


# How much of the day the answer covers


def at(hour: int, minute: int = 0, *, day: dt.date = DAY) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC) + dt.timedelta(
        hours=hour, minutes=minute
    )


def test_an_answer_for_the_whole_day_covers_its_1440_minutes(fake, kubeconfig):
    fake.set_allocations(DAY, {"team-a": {"cpuCoreHours": Decimal("1")}, "__idle__": {}})

    assert fetch_day_allocations(kubeconfig=kubeconfig, day=DAY).coverage_minutes == 1440


def test_an_answer_for_part_of_the_day_covers_only_that_part(fake, kubeconfig):
    fake.set_allocations(DAY, {"team-a": {"cpuCoreHours": Decimal("1")}}, covering=(at(12), at(24)))

    answer = fetch_day_allocations(kubeconfig=kubeconfig, day=DAY)

    assert answer.coverage_minutes == 720
    assert answer.namespaces[0].cpu_core_hours == Decimal("1")


def test_the_coverage_is_the_union_of_the_allocations_times_within_the_day(fake, kubeconfig):
    fake.set_data(
        DAY,
        [
            {
                "team-a": fake.allocation(DAY, "team-a", covering=(at(0), at(6))),
                "team-b": fake.allocation(DAY, "team-b", covering=(at(4), at(10, 30))),
            },
            # A set reaching past the day counts only inside it.
            {"team-a": fake.allocation(DAY, "team-a", covering=(at(20), at(26)))},
        ],
    )

    assert fetch_day_allocations(kubeconfig=kubeconfig, day=DAY).coverage_minutes == 630 + 240


def test_minutes_shorter_than_the_allocations_times_bound_the_coverage(fake, kubeconfig):
    allocation = fake.allocation(DAY, "team-a", minutes=90)
    del allocation["start"], allocation["end"]
    fake.set_data(DAY, [{"team-a": allocation}])

    assert fetch_day_allocations(kubeconfig=kubeconfig, day=DAY).coverage_minutes == 90


def test_a_wrong_token_says_check_the_credentials_without_showing_the_token(fake, test_ca):
    wrong = "wrong-token-d41d8cd98f00b204"

    message = fetch_error(kubeconfig=kubeconfig_for(fake, test_ca, token=wrong))

    assert fake.url in message
    assert "HTTP 401" in message
    assert "credentials" in message
    assert wrong not in message
    assert fake.requests[0].headers["Authorization"] == f"Bearer {wrong}"


def test_a_rejected_token_is_not_shown_either(fake, kubeconfig):
    fake.status = 401

    message = fetch_error(kubeconfig=kubeconfig)

    assert "credentials" in message
    assert TOKEN not in message


def test_a_user_without_access_to_the_proxy_is_told_which_permission_it_needs(fake, kubeconfig):
    fake.status = 403

    assert "services/proxy" in fetch_error(kubeconfig=kubeconfig)


@pytest.mark.parametrize("status", [503, 404])
def test_a_missing_opencost_service_is_named(fake, kubeconfig, status):
    fake.status = status

    message = fetch_error(kubeconfig=kubeconfig)

    assert f"OpenCost was not found behind the Kubernetes API server at {fake.url}" in message
    assert f"HTTP {status}" in message


def test_a_closed_port_is_reported_as_unreachable(fake, test_ca):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = f"https://127.0.0.1:{port}"

    message = fetch_error(kubeconfig=kubeconfig_for(fake, test_ca, server=server))

    assert message.startswith(f"The Kubernetes API server at {server} is unreachable")


def test_a_slow_answer_is_a_timeout(fake, kubeconfig):
    fake.delay = 5
    started = time.monotonic()

    message = fetch_error(kubeconfig=kubeconfig, timeout=0.3)

    assert time.monotonic() - started < 2
    assert "did not answer within 0.3 seconds" in message


def test_a_server_certificate_not_signed_by_the_kubeconfigs_ca_is_refused(fake, tmp_path):
    other_ca = make_test_ca(tmp_path)

    message = fetch_error(kubeconfig=kubeconfig_for(fake, other_ca))

    assert "TLS verification" in message
    assert "certificate-authority-data" in message
    assert fake.requests == []


def test_a_body_that_is_not_json_is_a_bad_answer(fake, kubeconfig):
    fake.raw_body = "<html>502 Bad Gateway</html>"

    assert "sent a bad answer: not JSON" in fetch_error(kubeconfig=kubeconfig)


def test_an_opencost_error_code_is_a_bad_answer_whose_message_is_logged(fake, kubeconfig, caplog):
    fake.raw_body = '{"code": 400, "status": "error", "message": "invalid window"}'
    fake.raw_content_type = "application/json"

    message = fetch_error(kubeconfig=kubeconfig)

    assert "sent a bad answer: code 400" in message
    # What a server answered is never shown on a page; the operator finds it in the log.
    assert "invalid window" not in message
    assert "invalid window" in caplog.text


def test_an_opencost_http_error_names_the_status_and_logs_the_message(fake, kubeconfig, caplog):
    fake.raw_body = '{"code": 500, "status": "error", "message": "prometheus unreachable"}'
    fake.raw_status = 500

    message = fetch_error(kubeconfig=kubeconfig)

    assert "HTTP 500" in message
    assert "prometheus unreachable" not in message
    assert "prometheus unreachable" in caplog.text


def test_a_figure_that_is_not_a_number_leaves_out_only_its_namespace(fake, kubeconfig):
    fake.set_allocations(
        DAY,
        {"team-a": {"cpuCoreHours": "12.5"}, "team-b": {"cpuCoreHours": Decimal("2")}},
    )

    answer = fetch_day_allocations(kubeconfig=kubeconfig, day=DAY)

    assert [u.namespace for u in answer.namespaces] == ["team-b"]
    assert answer.rejected == {"team-a": "cpuCoreHours is not a number: '12.5'"}
    assert answer.coverage_minutes == 1440


def test_true_or_false_as_a_figure_is_not_a_number(fake, kubeconfig):
    """Whole numbers are parsed as ints (not Decimals) and made Decimal when read: JSON's
    true and false, which Python's json makes bools (ints), are not numbers."""
    fake.set_allocations(
        DAY,
        {"team-a": {"cpuCoreHours": True}, "team-b": {"gpuHours": False, "minutes": True}},
    )

    answer = fetch_day_allocations(kubeconfig=kubeconfig, day=DAY)

    assert answer.namespaces == []
    assert answer.rejected == {
        "team-a": "cpuCoreHours is not a number: True",
        "team-b": "gpuHours is not a number: False",
    }


def test_a_whole_number_beyond_a_floats_precision_stays_exact(fake, kubeconfig):
    fake.set_allocations(DAY, {"team-a": {"pvByteHours": 123456789012345678901234567}})

    [usage] = fetch_day_allocations(kubeconfig=kubeconfig, day=DAY).namespaces

    assert usage.pv_byte_hours == Decimal("123456789012345678901234567")
    assert type(usage.pv_byte_hours) is Decimal


def test_an_unusable_kubeconfig_is_a_metrics_error_naming_what_to_fix(fake, test_ca):
    text = kubeconfig_for(fake, test_ca).replace("certificate-authority-data", "insecure-x")
    text += "current-context: nowhere\n"

    message = fetch_error(kubeconfig=text)

    assert message.startswith("The cluster's kubeconfig cannot be used: ")
    assert fake.requests == []


def test_byte_hours_become_the_average_held_in_gib_by_default():
    # A 100Gi volume held all day is 100 GiB, not the 107.37 decimal GB it also is.
    assert gb_held_from_byte_hours(Decimal(24) * 100 * Decimal(2) ** 30) == Decimal(100)


def test_byte_hours_become_decimal_gb_when_storage_is_billed_in_gb(settings):
    settings.STORAGE_UNIT = "GB"
    assert gb_held_from_byte_hours(Decimal(24) * 5 * Decimal(10) ** 9) == Decimal(5)
    assert gb_held_from_byte_hours(Decimal(24) * 100 * Decimal(2) ** 30) == Decimal("107.3741824")


# Deadlines, size and where the connection goes


def allocation_answer(size: int = 0) -> bytes:
    body = b'{"code": 200, "status": "success", "data": [{}]' + b" " * size + b"}"
    return http_response(200, body)


def test_a_slow_drip_api_server_is_cut_off_at_the_deadline(test_ca, fake, settings):
    settings.OUTBOUND_DEADLINE_SECONDS = 1.0
    with DripServer(allocation_answer(400), interval=0.05, tls=test_ca) as slow:
        started = time.monotonic()
        message = fetch_error(kubeconfig=kubeconfig_for(fake, test_ca, server=slow.url))
        elapsed = time.monotonic() - started

    assert "did not answer within 1 seconds" in message
    assert elapsed < 1.0 + 1.0


def test_an_answer_larger_than_the_limit_is_refused(test_ca, fake, settings):
    settings.OPENCOST_MAX_RESPONSE_BYTES = 64 * 1024
    with DripServer(allocation_answer(1024 * 1024), interval=0, chunk=65536, tls=test_ca) as big:
        message = fetch_error(kubeconfig=kubeconfig_for(fake, test_ca, server=big.url))

    assert "larger than 65536 bytes" in message


def test_a_day_of_a_big_cluster_is_read_whatever_the_limit_of_other_answers(
    fake, kubeconfig, settings
):
    # About 1 KB per namespace: 20,000 namespaces are ~20 MB, more than the limit of the
    # other outside answers (OUTBOUND_MAX_RESPONSE_BYTES); OpenCost has a limit of its own.
    settings.OUTBOUND_MAX_RESPONSE_BYTES = 64 * 1024
    namespaces = {f"project-{n:04d}": {"cpuCoreHours": Decimal(n)} for n in range(200)}
    fake.set_allocations(DAY, namespaces)

    answer = fetch_day_allocations(kubeconfig=kubeconfig, day=DAY)

    assert len(answer.namespaces) == 200
    assert answer.namespaces[199].cpu_core_hours == Decimal(199)


def test_in_production_the_server_address_is_checked_when_connecting(fake, kubeconfig, settings):
    settings.OUTBOUND_ALLOW_LOCAL = False
    settings.OUTBOUND_ALLOWED_HOSTS = []

    message = fetch_error(kubeconfig=kubeconfig)

    assert "was not contacted" in message
    assert "this machine" in message
    assert fake.requests == []


def test_a_proxy_in_the_environment_is_not_used(fake, kubeconfig, monkeypatch):
    with RecordingListener() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        fetch_day_allocations(kubeconfig=kubeconfig, day=DAY)

    assert proxy.connections == 0
    assert len(fake.requests) == 1


def test_waiting_for_another_calls_client_files_counts_against_the_deadline(fake, kubeconfig):
    # One call at a time may own the client's file directory; a call that waits for it
    # must not wait past its own deadline (then find it spent).
    import threading

    from clusters import opencost

    taken, done = threading.Event(), threading.Event()

    def another_call():  # another collection's call, holding it for 2 s
        with opencost._CLIENT_FILES_LOCK:
            taken.set()
            done.wait(2)

    holder = threading.Thread(target=another_call)
    holder.start()
    taken.wait(5)
    try:
        started = time.monotonic()
        message = fetch_error(kubeconfig=kubeconfig, timeout=0.5)
        elapsed = time.monotonic() - started
    finally:
        done.set()
        holder.join()

    assert "did not answer within 0.5 seconds" in message
    assert elapsed < 0.5 + 0.5
    assert not fake.requests
