"""The local fake servers behave on the wire like the real servers they stand for."""

from __future__ import annotations

import socket
import time

import requests

from tests.fakes.server import local_server


def test_the_fakes_send_an_answer_at_once_without_nagles_delay():
    # Real servers (the Kubernetes API server in Go, Hopsworks' Payara) set TCP_NODELAY on
    # their connections. Without it, an answer written as headers then body waits for the
    # client's delayed ACK of the headers (tens of ms on Linux) before the body's last
    # segment goes out: a collection's 100 pages of projects per cluster spent a second
    # there, time that a benchmark counted as ours.
    with local_server() as server:
        server.expect_request("/ping").respond_with_data("pong")
        with requests.Session() as session:
            assert session.get(server.url_for("/ping"), timeout=5).text == "pong"
            deadline = time.monotonic() + 5
            while not server.server.open_connections and time.monotonic() < deadline:
                time.sleep(0.01)
            with server.server.connections_lock:
                connections = list(server.server.open_connections)
            assert len(connections) == 1
            assert connections[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
