"""TLS on loopback from a certificate authority of kiln's own, as `mkcert` does.

Some clients only speak https (fal's `fal_client` builds `https://{FAL_RUN_HOST}/…`). kiln makes
a CA once per KILN_HOME (its key stays there, 0600), signs a certificate for `localhost`,
`127.0.0.1` and `::1` with it, and writes a bundle — this machine's trusted roots plus kiln's CA —
that clients trust through `SSL_CERT_FILE` without turning verification off. Nothing is added to
the system's trust store. The loopback certificate is renewed when it nears its end.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

_CA_DAYS = 3650
_LEAF_DAYS = 365
_RENEW_BEFORE = datetime.timedelta(days=30)


@dataclass(frozen=True)
class LoopbackTLS:
    cert: Path  # the loopback certificate (then the CA's), for the server
    key: Path
    bundle: Path  # this machine's roots plus kiln's CA, for clients (SSL_CERT_FILE)

    @classmethod
    def load_or_create(cls, directory: Path) -> LoopbackTLS:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        ca_cert, ca_key = _ca(directory)
        tls = cls(directory / "loopback.pem", directory / "loopback-key.pem", directory / "bundle.pem")
        if not _fresh(tls.cert):
            _write_key(tls.key, key := ec.generate_private_key(ec.SECP256R1()))
            cert = _sign(
                key.public_key(),
                ca_cert.subject,
                ca_key,
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kiln loopback")]),
                _LEAF_DAYS,
                ca=False,
            )
            _write(tls.cert, cert.public_bytes(serialization.Encoding.PEM) + _pem(ca_cert), 0o600)
        roots = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
        system = roots.read_bytes() if roots.is_file() else b""
        _write(tls.bundle, system + b"\n" + _pem(ca_cert), 0o644)
        return tls


def _ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = directory / "ca.pem", directory / "ca-key.pem"
    if cert_path.exists() and key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return x509.load_pem_x509_certificate(cert_path.read_bytes()), key
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"kiln local CA ({os.uname().nodename})")])
    cert = _sign(key.public_key(), name, key, name, _CA_DAYS, ca=True)
    _write_key(key_path, key)
    _write(cert_path, _pem(cert), 0o644)
    return cert, key


def _sign(
    public_key: ec.EllipticCurvePublicKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    days: int,
    ca: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        names: list[x509.GeneralName] = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _fresh(cert_path: Path) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return False
    return cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc) > _RENEW_BEFORE


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write(path, data, 0o600)


def _write(path: Path, data: bytes, mode: int) -> None:
    staging = path.with_suffix(".tmp")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(staging, mode)
    os.replace(staging, path)
