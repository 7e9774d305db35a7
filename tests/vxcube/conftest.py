"""Fixtures for the vxCube tests: one emulator on 127.0.0.1 (any free port) for the whole
session, reset before every test; a client with quick retries; builders for PE images
and e-mail messages (test modules cannot import each other without an __init__.py)."""
import struct
from email.message import EmailMessage

import pytest

from salmon_app.vxcube.client import RetryPolicy, VxcubeClient
from salmon_app.vxcube.sim import VxcubeSim

API_KEY = "7c0ffee0-5ec2-4e7a-9b1d-0123456789ab"


@pytest.fixture(scope="session")
def api_key():
    return API_KEY


@pytest.fixture(scope="session")
def sim_server():
    with VxcubeSim("127.0.0.1", 0, api_key=API_KEY, analysis_time=0.0) as sim:
        yield sim


@pytest.fixture
def sim(sim_server):
    sim_server.reset()
    sim_server.configure(analysis_time=0.0, uploads_total=100000,
                         upload_max_size=128 * 1024 * 1024)
    yield sim_server
    sim_server.clear_faults()


@pytest.fixture
def quick_retry():
    return RetryPolicy(attempts=3, initial=0.02, maximum=2.0, max_elapsed=10.0)


@pytest.fixture
def client(sim, quick_retry):
    with VxcubeClient(sim.url, API_KEY, timeout=2.0, retry=quick_retry) as vx:
        yield vx


@pytest.fixture
def make_pe():
    """A minimal PE image that puremagic and our header check both recognise."""
    def build(dll=False, x64=False, extra=b""):
        image = bytearray(0x80)
        image[0:4] = b"MZ\x90\x00"
        struct.pack_into("<I", image, 0x3C, 0x80)  # e_lfanew: where "PE\0\0" is
        machine = 0x8664 if x64 else 0x014C
        characteristics = 0x0002 | (0x2000 if dll else 0)
        image += b"PE\0\0" + struct.pack("<HHIIIHH", machine, 1, 0, 0, 0, 0xF0, characteristics)
        return bytes(image + bytes(0xF0) + extra)
    return build


@pytest.fixture
def make_mail():
    """An RFC 822 message (bytes) with the given (filename, content, mime type) attachments."""
    def build(attachments, body="Hello, see attached.", subject="test"):
        message = EmailMessage()
        message["From"] = "alice@example.org"
        message["To"] = "bob@example.net"
        message["Subject"] = subject
        message["Date"] = "Sat, 29 Nov 2025 10:00:00 +0000"
        message.set_content(body)
        for filename, content, mime_type in attachments:
            maintype, subtype = mime_type.split("/")
            message.add_attachment(content, maintype=maintype, subtype=subtype,
                                   filename=filename)
        return message.as_bytes()
    return build
