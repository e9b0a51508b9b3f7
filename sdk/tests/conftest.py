"""Fixtures of the device SDK tests: a fake server and clients wired to it."""

from collections.abc import Iterator

import pytest

from device_fake import FakeServer, activate, make_client
from viopay_device import DeviceClient


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def client(server: FakeServer) -> Iterator[DeviceClient]:
    with make_client(server) as device_client:
        yield device_client


@pytest.fixture
def activated(server: FakeServer, client: DeviceClient) -> DeviceClient:
    activate(client, server)
    server.requests.clear()
    return client
