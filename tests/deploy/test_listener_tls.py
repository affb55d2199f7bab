"""DICOM TLS for the listener (issue 20): the listener's server context (TLS only, client certificates of one CA
required), and the plain-DICOM rule off loopback. pynetdicom peers on 127.0.0.1 in this process; certificates made
here (conftest.pki). Nothing leaves the machine: the refused remote hosts are only parsed, never contacted."""

from __future__ import annotations

import logging
import socket
import ssl
from pathlib import Path

import pytest

from sdmad_monai.deploy.listener_config import ListenerConfig
from sdmad_monai.deploy.security import PacsSecurityError, ServerTls

pynetdicom = pytest.importorskip("pynetdicom", reason='pip install -e ".[pacs]"')


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _server(tls: ServerTls, port: int):
    ae = pynetdicom.AE(ae_title="SDMAD")
    ae.add_supported_context(pynetdicom.sop_class.Verification)
    return ae.start_server(("127.0.0.1", port), block=False, ssl_context=tls.ssl_context(5.0))


def _echo(port: int, context: ssl.SSLContext | None) -> bool:
    ae = pynetdicom.AE(ae_title="SDMADPACS")
    ae.add_requested_context(pynetdicom.sop_class.Verification)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 5
    assoc = ae.associate("127.0.0.1", port, ae_title="SDMAD", tls_args=(context, "127.0.0.1") if context else None)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return int(status.Status) == 0


def _client(ca: Path, cert: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert))
    return context


def test_tls_listener_accepts_only_verified_tls_peers(tmp_path, pki, caplog):
    ca_key, ca_cert, ca = pki.make_ca(tmp_path, "sdmad-dicom-ca")
    other_key, other_cert, _ = pki.make_ca(tmp_path, "unrelated-ca")
    server_pem, _ = pki.issue(tmp_path, ca_key, ca_cert, "listener", server=True, client=True)
    client_pem, _ = pki.issue(tmp_path, ca_key, ca_cert, "pacs", server=False)
    stranger_pem, _ = pki.issue(tmp_path, other_key, other_cert, "stranger", server=False)
    tls = ServerTls.from_options(server_pem, None, ca)
    assert tls is not None
    port = free_port()
    server = _server(tls, port)
    try:
        with caplog.at_level(logging.WARNING):
            assert _echo(port, _client(ca, client_pem))  # the right client certificate
            assert not _echo(port, None)  # plain DICOM to a TLS listener
            assert not _echo(port, _client(ca, None))  # no client certificate
            assert not _echo(port, _client(ca, stranger_pem))  # a certificate of another CA
        refusals = [r.getMessage() for r in caplog.records if "TLS handshake from 127.0.0.1:" in r.getMessage()]
        assert len(refusals) >= 3
    finally:
        server.shutdown()


def test_server_tls_options_are_checked(tmp_path, pki):
    ca_key, ca_cert, ca = pki.make_ca(tmp_path, "ca")
    server_pem, key = pki.issue(tmp_path, ca_key, ca_cert, "listener", server=True)
    assert ServerTls.from_options() is None
    with pytest.raises(PacsSecurityError, match="--tls_key and --tls_client_ca need --tls_cert"):
        ServerTls.from_options(tls_key=key)
    with pytest.raises(FileNotFoundError, match="--tls_cert .*missing.pem does not exist"):
        ServerTls.from_options(tmp_path / "missing.pem")
    server_pem.chmod(0o644)
    with pytest.raises(PacsSecurityError, match="can be read or changed by other users"):
        ServerTls.from_options(server_pem)
    with pytest.raises(PacsSecurityError, match="--tls_cert .* cannot be used for TLS"):
        ServerTls.from_options(ca, key)  # a CA certificate that does not match the key


def test_plain_dicom_refused_off_loopback(tmp_path, caplog, monkeypatch):
    def no_dns(*args, **kwargs):
        raise AssertionError("a refusal must not resolve the host")

    monkeypatch.setattr("socket.getaddrinfo", no_dns)
    common = {"work_dir": tmp_path, "allowed_aets": ("PACS",)}
    with pytest.raises(PacsSecurityError, match=r"sending SRs to PACS@pacs.example.org:104 \(--destination\)"):
        ListenerConfig(destination="PACS@pacs.example.org:104", **common)
    with pytest.raises(PacsSecurityError, match=r"receiving studies on 0.0.0.0:11112 \(--host\)"):
        ListenerConfig(destination="PACS@127.0.0.1:104", host="0.0.0.0", **common)
    with caplog.at_level(logging.WARNING):
        ListenerConfig(destination="PACS@pacs.example.org:104", allow_insecure=True, **common)
        ListenerConfig(destination="PACS@pacs.example.org:104", allow_insecure=True, **common)
    warned = [
        r
        for r in caplog.records
        if "--allow_insecure: talking plain DICOM (no TLS) to pacs.example.org" in r.getMessage()
    ]
    assert len(warned) == 1
