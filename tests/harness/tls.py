"""Throwaway TLS for tests: a private CA, certificates, and RabbitMQ/Redis with TLS listeners.

* :func:`make_pki` writes a CA, a server certificate for ``127.0.0.1``/``localhost``, a client
  certificate signed by the same CA, and an unrelated CA (to prove verification fails), with
  ``cryptography``.
* :class:`TLSRabbitMQ` is :class:`~tests.harness.servers.PrivateRabbitMQ` with an extra TLS
  listener that requires a client certificate (``verify_peer``, ``fail_if_no_peer_cert``).
* :class:`TLSRedis` is a private ``redis-server`` listening only on a TLS port
  (``--port 0 --tls-port``) that requires client certificates (``--tls-auth-clients yes``).

Both are context managers that stop their process tree on exit; every wait is bounded.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import signal
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.harness.servers import (
    PrivateRabbitMQ,
    _exited,
    _kill_group,
    _reap,
    _tail,
    free_port,
    unavailable,
)


@dataclass(frozen=True)
class PKI:
    """Paths of the PEM files :func:`make_pki` wrote."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    """A CA that signed nothing here: verifying the server against it must fail."""


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    common_name: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    *,
    server: bool,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return key, builder.sign(ca_key, hashes.SHA256())


def make_pki(directory: Path) -> PKI:
    """Write a CA, server and client certificates (and an unrelated CA) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca("flowmesh test CA")
    server_key, server_cert = _leaf("localhost", ca_key, ca_cert, server=True)
    client_key, client_cert = _leaf("flowmesh-test-client", ca_key, ca_cert, server=False)
    _, other_cert = _ca("some other CA")
    pki = PKI(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        other_ca=directory / "other-ca.pem",
    )
    _write_cert(ca_cert, pki.ca)
    _write_cert(server_cert, pki.server_cert)
    _write_key(server_key, pki.server_key)
    _write_cert(client_cert, pki.client_cert)
    _write_key(client_key, pki.client_key)
    _write_cert(other_cert, pki.other_ca)
    return pki


class TLSRabbitMQ(PrivateRabbitMQ):
    """A private RabbitMQ node with a TLS listener (client certificate required) besides the
    plain one the readiness check uses."""

    def __init__(self, directory: Path, pki: PKI, *, startup_timeout: float = 120.0) -> None:
        super().__init__(directory, startup_timeout=startup_timeout)
        self.tls_port = free_port(11000, 20000, {self.port, self.dist_port})
        with (directory / "rabbitmq.conf").open("a") as conf:
            conf.write(
                f"listeners.ssl.default = 127.0.0.1:{self.tls_port}\n"
                f"ssl_options.cacertfile = {pki.ca}\n"
                f"ssl_options.certfile = {pki.server_cert}\n"
                f"ssl_options.keyfile = {pki.server_key}\n"
                "ssl_options.verify = verify_peer\n"
                "ssl_options.fail_if_no_peer_cert = true\n"
            )

    @property
    def tls_url(self) -> str:
        """``amqps://guest:guest@127.0.0.1:<tls port>/`` (guest may log in from loopback)."""
        return f"amqps://guest:guest@127.0.0.1:{self.tls_port}/"

    def start(self) -> None:
        """Start the node and wait until the TLS port accepts connections too."""
        super().start()
        deadline = time.monotonic() + 30
        while not _port_open(self.tls_port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"TLS listener not up:\n{self.log_tail()}")
            time.sleep(0.1)


def _port_open(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class TLSRedis:
    """``redis-server`` on a TLS-only loopback port; clients must present a certificate."""

    def __init__(self, directory: Path, pki: PKI, *, startup_timeout: float = 30.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server is needed for a private TLS Redis")
        self.binary = binary or "redis-server"
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.pki = pki
        self.port = free_port(10000, 20000)
        self.startup_timeout = startup_timeout
        self.log_path = directory / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``rediss://127.0.0.1:<port>/0`` (TLS settings go separately)."""
        return f"rediss://127.0.0.1:{self.port}/0"

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Start the server and wait (bounded) until it answers PING over TLS."""
        pki = self.pki
        command = [
            self.binary,
            "--port", "0",
            "--tls-port", str(self.port),
            "--bind", "127.0.0.1",
            "--tls-cert-file", str(pki.server_cert),
            "--tls-key-file", str(pki.server_key),
            "--tls-ca-cert-file", str(pki.ca),
            "--tls-auth-clients", "yes",
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.startup_timeout
        client = self.admin()
        try:
            while True:
                if _exited(self.process):
                    _reap(self.process, timeout=1)
                    if "TLS" in _tail(self.log_path) and "not" in _tail(self.log_path).lower():
                        unavailable(f"redis-server built without TLS:\n{_tail(self.log_path)}")
                    raise RuntimeError(f"TLS Redis exited:\n{_tail(self.log_path)}")
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"TLS Redis not answering:\n{_tail(self.log_path)}")
                time.sleep(0.05)
        finally:
            client.close()

    def admin(self) -> redis.Redis:
        """A synchronous client with the test client certificate."""
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            ssl=True,
            ssl_ca_certs=str(self.pki.ca),
            ssl_certfile=str(self.pki.client_cert),
            ssl_keyfile=str(self.pki.client_key),
            ssl_cert_reqs=ssl.CERT_REQUIRED,
            socket_timeout=2.0,
        )

    def close(self) -> None:
        """Stop the server (idempotent)."""
        if self.process is not None:
            _kill_group(self.process, signal.SIGTERM)
            _reap(self.process, timeout=10)
