"""`llamaherd certs`: a cluster certificate authority and per-node certificates for mutual
TLS between workers, the coordinator and its gateways (optional; the join token is always
required too).

`init` makes the CA (ca.key, 0600, never leaves this folder; ca.crt, public). `issue NODE`
makes NODE.key (0600) and NODE.crt, signed by the CA, whose common name is NODE: a worker's
certificate must name its node id (the registry binds the two), the coordinator's any name
(`coordinator` by convention). Each certificate serves both ends of a connection (server and
client authentication), and names the hosts it is reached at (--host; default localhost and
127.0.0.1). Keys are ECDSA P-256.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.model_settings import ALIAS_PATTERN
from common.settings import ConfigError

DEFAULT_DIR = Path("~/.config/llamaherd/tls")
DEFAULT_HOSTS = ("localhost", "127.0.0.1")
CA_DAYS = 3650
NODE_DAYS = 825


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _write_private(path: Path, data: bytes) -> None:
    """Creates `path` 0600 (refusing to overwrite: a key is replaced on purpose only)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} exists; remove it first to replace it") from None
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _write_public(path: Path, data: bytes) -> None:
    if path.exists():
        raise ConfigError(f"{path} exists; remove it first to replace it")
    path.write_bytes(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# fmt: off
_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False, content_commitment=False, key_encipherment=False,
    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
    encipher_only=False, decipher_only=False,
)
# fmt: on


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def init_ca(folder: Path = DEFAULT_DIR, name: str = "llamaherd cluster CA") -> Issued:
    """A new cluster CA in `folder` (created 0700)."""
    folder = folder.expanduser()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .sign(key, hashes.SHA256())
    )
    issued = Issued(folder / "ca.crt", folder / "ca.key")
    _write_private(issued.key, _key_pem(key))
    _write_public(issued.cert, cert.public_bytes(serialization.Encoding.PEM))
    return issued


def issue(node: str, folder: Path = DEFAULT_DIR, hosts: tuple[str, ...] = ()) -> Issued:
    """NODE.crt and NODE.key in `folder`, signed by its CA, common name `node`, valid for
    `hosts` (names or IP addresses; default localhost and 127.0.0.1)."""
    if not re.fullmatch(ALIAS_PATTERN, node):
        raise ConfigError(f"node name {node!r} must match {ALIAS_PATTERN} (a node id)")
    folder = folder.expanduser()
    try:
        ca_cert = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
        ca_key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), None)
    except OSError as exc:
        raise ConfigError(
            f"no cluster CA in {folder} ({exc.strerror}): run `llamaherd certs init` first"
        ) from exc
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{folder / 'ca.key'} is not an ECDSA key made by llamaherd certs")
    names: list[x509.GeneralName] = []
    for host in hosts or DEFAULT_HOSTS:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    names.append(x509.DNSName(node))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=NODE_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    issued = Issued(folder / f"{node}.crt", folder / f"{node}.key")
    _write_private(issued.key, _key_pem(key))
    _write_public(issued.cert, cert.public_bytes(serialization.Encoding.PEM))
    return issued
