"""A private CA and the certificates it signs (server, client or both; valid or expired), written
as PEM, made with `cryptography` (Debian's python3-cryptography): the local cluster's TLS
(``python3 -m deploy.local --tls``) and the TLS tests (tests/server). Keys are ECDSA P-256,
unencrypted, readable by their owner only; certificates last `days` (a CA 3x as long)."""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from typing import Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_DAY = datetime.timedelta(days=1)


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str, organization: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key, path: str) -> None:
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))


def _write_cert(cert, path: str) -> None:
    with open(path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


@dataclass
class Leaf:
    cert: str  # PEM file paths
    key: str
    subject: str


class Ca:
    """A self-signed CA in `directory` (ca.pem; its key stays in memory, so once this object is
    gone nothing more can be signed); `issue` writes leaf certificates it signs, whose subjects
    are "O=<organization>,CN=<common name>"."""

    def __init__(self, directory: str, name: str = "mnemo test CA",
                 organization: str = "mnemo tests", days: int = 10):
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.organization = organization
        self.days = days
        self.key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        self.name = _name(name, organization)
        self.cert = (x509.CertificateBuilder()
                     .subject_name(self.name).issuer_name(self.name)
                     .public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number())
                     .not_valid_before(now - _DAY).not_valid_after(now + 3 * days * _DAY)
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                    critical=True)
                     .add_extension(x509.KeyUsage(
                         digital_signature=True, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=True, crl_sign=True, encipher_only=False,
                         decipher_only=False), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.pem = os.path.join(directory, "ca.pem")
        _write_cert(self.cert, self.pem)

    def issue(self, stem: str, common_name: str, *, server: bool = True, client: bool = False,
              expired: bool = False, hosts: Optional[list[str]] = None) -> Leaf:
        """A leaf certificate (stem.pem, stem-key.pem) for a server, a client (server=False) or
        both (client=True: a replica, which is both). Server ones name localhost and 127.0.0.1
        (or `hosts`); expired ones ended yesterday."""
        key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        start, end = ((now - 10 * _DAY, now - _DAY) if expired
                      else (now - _DAY, now + self.days * _DAY))
        builder = (x509.CertificateBuilder()
                   .subject_name(_name(common_name, self.organization)).issuer_name(self.name)
                   .public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage(
                       ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
                       + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client or not server else [])),
                       critical=False))
        if server:
            names = []
            for host in hosts or ["localhost", "127.0.0.1"]:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        leaf = Leaf(cert=os.path.join(self.directory, f"{stem}.pem"),
                    key=os.path.join(self.directory, f"{stem}-key.pem"),
                    subject=cert.subject.rfc4514_string())
        _write_cert(cert, leaf.cert)
        _write_key(key, leaf.key)
        return leaf


def not_after(cert_file: str) -> float:
    """When the certificate in `cert_file` expires, Unix time."""
    with open(cert_file, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    return cert.not_valid_after.replace(tzinfo=datetime.timezone.utc).timestamp()
