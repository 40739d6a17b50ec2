"""`llamaherd certs`: the cluster CA and node certificates, real files and real X.509."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from common.settings import ConfigError
from orchestrator.certs import init_ca, issue
from orchestrator.cli import main


def test_init_then_issue_makes_private_keys_and_a_certificate_naming_the_node(
    tmp_path: Path,
) -> None:
    ca = init_ca(tmp_path / "tls")
    made = issue("worker-1", tmp_path / "tls", ("10.0.0.7", "jetson-1.lan"))
    for key in (ca.key, made.key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700
    cert = x509.load_pem_x509_certificate(made.cert.read_bytes())
    authority = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    cert.verify_directly_issued_by(authority)
    (name,) = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert name.value == "worker-1"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("10.0.0.7") in sans.get_values_for_type(x509.IPAddress)
    assert {"jetson-1.lan", "worker-1"} <= set(sans.get_values_for_type(x509.DNSName))


def test_nothing_is_overwritten_and_issue_needs_a_ca(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="run `llamaherd certs init` first"):
        issue("worker-1", tmp_path)
    init_ca(tmp_path)
    with pytest.raises(ConfigError, match="exists"):
        init_ca(tmp_path)
    issue("worker-1", tmp_path)
    with pytest.raises(ConfigError, match="exists"):
        issue("worker-1", tmp_path)
    with pytest.raises(ConfigError, match="node id"):
        issue("../evil", tmp_path)


def test_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "--dir", str(tmp_path), "init"]) == 0
    assert main(["certs", "--dir", str(tmp_path), "issue", "coordinator"]) == 0
    assert "coordinator.key (0600)" in capsys.readouterr().out
    assert main(["certs", "--dir", str(tmp_path), "issue", "coordinator"]) == 1
