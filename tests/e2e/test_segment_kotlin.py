"""Segment's Kotlin library (com.segment.analytics.kotlin:core 1.27.0, from Maven Central) on the JVM,
pointed at a real collector and worker (issue 19).

tests/compat/analytics-kotlin/Send.java uses the library as an app does, through its Java API. The
library speaks only HTTPS (``https://{cdnHost}/projects/{key}/settings``, ``https://{apiHost}/b``), so
the test puts a TLS front with a certificate of its own before the collector, and the JVM trusts that
certificate: the library's code runs unchanged. Its configured apiHost, and the default settings it
uses until a fetch succeeds, name a dead port: the events can only arrive if the library took Spoor's
apiHost from Spoor's settings document.
"""

import asyncio
import datetime
import ipaddress
import os
import re
import shutil
import ssl
import subprocess
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import text

from tests.support.local_stack import REPO, free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

PROJECT = REPO / "tests" / "compat" / "analytics-kotlin"
REQUEST = re.compile(rb"(GET|POST) (/\S*) HTTP/1\.1\r\n((?:[^\r\n]+\r\n)*)\r\n")


class TlsFront:
    """TLS on 127.0.0.1:port in front of a plain-HTTP server; keeps what clients sent, decrypted."""

    def __init__(self, target_port: int, cert: Path, key: Path):
        self.target_port = target_port
        self.port = free_port()
        self.streams: list[bytearray] = []
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.context.set_alpn_protocols(["http/1.1"])
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        threading.Thread(target=self._run, args=(started,), daemon=True).start()
        started.wait(10)

    def _run(self, started):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self.context))
        started.set()
        self.loop.run_forever()

    async def _serve(self, reader, writer):
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        seen = bytearray()
        self.streams.append(seen)

        async def pipe(source, sink, record=None):
            try:
                while data := await source.read(65536):
                    if record is not None:
                        record.extend(data)
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, ssl.SSLError, TimeoutError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, upstream_writer, seen), pipe(upstream_reader, writer))

    def requests(self) -> list[tuple[str, str, dict]]:
        """(method, path, headers) of every request, in order per connection."""
        found = []
        for stream in list(self.streams):
            for method, path, head in REQUEST.findall(bytes(stream)):
                headers = dict(line.split(": ", 1) for line in head.decode("latin-1").splitlines())
                found.append((method.decode(), path.decode(), {k.lower(): v for k, v in headers.items()}))
        return found

    def close(self):
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)


def self_signed(directory: Path) -> tuple[Path, Path, Path]:
    """A certificate for 127.0.0.1, its key, and a PKCS12 trust store holding it for the JVM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path, trust = directory / "cert.pem", directory / "key.pem", directory / "trust.p12"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    subprocess.run(["keytool", "-importcert", "-noprompt", "-alias", "spoor", "-file", str(cert_path),
                    "-keystore", str(trust), "-storetype", "PKCS12", "-storepass", "changeit"],
                   check=True, capture_output=True)
    return cert_path, key_path, trust


@pytest.fixture(scope="module")
def kotlin_classpath(tmp_path_factory) -> str:
    if shutil.which("javac") is None:
        pytest.fail("no JDK: apt-get install default-jdk-headless (deploy/kafka.sh needs Java too)")
    libs = subprocess.run([str(REPO / "deploy" / "segment_compat.sh"), "kotlin"], check=True,
                          capture_output=True, text=True).stdout.strip()
    classes = tmp_path_factory.mktemp("kotlin-classes")
    subprocess.run(["javac", "-cp", f"{libs}/*", "-d", str(classes), str(PROJECT / "Send.java")], check=True)
    return f"{libs}/*:{classes}"


@pytest.fixture(scope="module")
def front(start_process, test_settings, tmp_path_factory, write_key):  # the key exists before the collector starts
    start_process("collector")
    start_process("worker")
    cert, key, trust = self_signed(tmp_path_factory.mktemp("tls"))
    tls = TlsFront(test_settings.collector_port, cert, key)
    tls.trust_store = trust
    yield tls
    tls.close()


def events_of(engine, user_key):
    with engine.connect() as conn:
        return conn.execute(text("SELECT name, kind, revenue, currency FROM events WHERE user_key = :u "
                                 "ORDER BY event_time"), {"u": user_key}).all()


def profile_of(engine, user_key):
    with engine.connect() as conn:
        return conn.execute(text("SELECT * FROM user_profiles WHERE user_key = :u"), {"u": user_key}).first()


def test_segment_kotlin_library_takes_spoors_settings_and_uploads_to_b(kotlin_classpath, front, write_key, engine):
    user = f"kt-user-{os.getpid()}"
    storage = Path("/tmp/analytics-kotlin") / write_key  # the library's own file queue on the JVM
    shutil.rmtree(storage, ignore_errors=True)
    env = {**os.environ, "SPOOR_CDN_HOST": f"127.0.0.1:{front.port}/v1", "SPOOR_API_HOST": "127.0.0.1:1/v1",
           "SPOOR_WRITE_KEY": write_key, "SPOOR_USER": user}
    process = subprocess.Popen(
        ["java", f"-Djavax.net.ssl.trustStore={front.trust_store}", "-Djavax.net.ssl.trustStorePassword=changeit",
         "-Djavax.net.ssl.trustStoreType=PKCS12", "-cp", kotlin_classpath, "Send"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    failure = None
    try:
        wait_until(lambda: (p := profile_of(engine, user)) and p.events >= 4, 60, "the Kotlin library's events")
        time.sleep(1.5)
    except AssertionError as err:
        failure = err
    finally:
        process.kill()
        output = process.communicate(timeout=20)[0]
        shutil.rmtree(storage, ignore_errors=True)
    assert failure is None, f"{failure}\nrequests at the TLS front: {front.requests()}\nthe JVM said:\n{output}"
    assert "queued 4 events" in output, output

    rows = events_of(engine, user)
    assert sorted((row.name, row.kind) for row in rows) == [
        ("Home", "page_view"), ("Order Completed", "purchase"), ("Product Viewed", "product_view"),
        ("identify", "identify")]
    [order] = [row for row in rows if row.kind == "purchase"]
    assert (order.revenue, order.currency) == (Decimal("15"), "EUR")  # the products' sum
    profile = profile_of(engine, user)
    assert (profile.events, profile.page_views, profile.product_views, profile.orders, profile.revenue) == (
        4, 1, 1, 1, Decimal("15"))

    # What the library asked, decrypted at the front: its settings, then gzipped text/plain batches to /b.
    requests = front.requests()
    assert requests[0][:2] == ("GET", f"/v1/projects/{write_key}/settings")
    uploads = [headers for method, path, headers in requests if method == "POST"]
    assert uploads and {path for method, path, _ in requests if method == "POST"} == {"/v1/b"}
    for headers in uploads:
        assert headers["content-type"] == "text/plain" and headers["content-encoding"] == "gzip"
        assert headers["user-agent"].startswith("analytics-kotlin/")
