"""Throw-away TLS material for tests: a CA, a server certificate for 127.0.0.1/localhost and a
client certificate, written as PEM files (generated with ``cryptography``, nothing downloaded).

The server key and chain are a PKCS#12 keystore protected by ``key_password`` (for the broker);
the client key is unencrypted PKCS#8 PEM (what the worker's settings point at).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization.pkcs12 import (
    PBES,
    serialize_key_and_certificates,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # the CA certificate
    server: Path  # server key + certificate chain, a PKCS#12 keystore (password key_password)
    key_password: str
    client_cert: Path
    client_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    signer: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(signer, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_ca(workdir: Path, name: str = "ca") -> tuple[Path, ec.EllipticCurvePrivateKey, x509.Name]:
    workdir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(f"kubefinops test {name}")
    cert = _cert(f"kubefinops test {name}", key, subject, key, ca=True)
    path = workdir / f"{name}.pem"
    path.write_bytes(_pem(cert))
    return path, key, subject


def make_tls(workdir: Path) -> TlsFiles:
    """A CA, a server certificate and a client certificate under ``workdir``."""
    ca_path, ca_key, ca_name = make_ca(workdir)
    password = secrets.token_hex(12)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _cert("127.0.0.1", server_key, ca_name, ca_key, server=True)
    # A PKCS#12 keystore with PBES1/3DES, which Java 17 reads (its PEM loader lacks PBES2).
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .key_cert_algorithm(PBES.PBESv1SHA1And3KeyTripleDESCBC)
        .hmac_hash(hashes.SHA1())
        .build(password.encode())
    )
    ca_cert = x509.load_pem_x509_certificate(ca_path.read_bytes())
    server = workdir / "server.p12"
    server.write_bytes(
        serialize_key_and_certificates(b"server", server_key, server_cert, [ca_cert], encryption)
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _cert("kubefinops-worker", client_key, ca_name, ca_key)
    cert_path, key_path = workdir / "client.crt", workdir / "client.key"
    cert_path.write_bytes(_pem(client_cert))
    key_path.write_bytes(
        client_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return TlsFiles(ca_path, server, password, cert_path, key_path)
