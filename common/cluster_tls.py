"""Optional mutual TLS between the cluster's processes: the registry, the Worker API and the
gateway-to-worker hop. Certificates come from `llamaherd certs` (orchestrator.certs): one
cluster CA, one certificate per node whose common name is its node id.

With TLS on, each side presents its certificate and accepts only peers whose certificate the
cluster CA signed, so the traffic is encrypted and no process without a cluster certificate
gets a connection at all; the join token is still required on top (common.cluster_auth).
The registry binds a worker's node id to its certificate's common name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from grpc import aio

from common.cluster_secrets import TlsFiles

__all__ = ["TlsFiles", "aio_channel", "listen", "peer_common_name", "sync_channel"]

COMMON_NAME_KEY = "x509_common_name"


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    """Presents this process's certificate; requires one the cluster CA signed."""
    return grpc.ssl_server_credentials(
        [(tls.key, tls.cert)], root_certificates=tls.ca, require_client_auth=True
    )


def channel_credentials(tls: TlsFiles) -> grpc.ChannelCredentials:
    """Trusts only the cluster CA; presents this process's certificate."""
    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca, private_key=tls.key, certificate_chain=tls.cert
    )


def listen(server: aio.Server, address: str, tls: TlsFiles | None) -> int:
    """Binds `address` (TLS when given); the port, 0 when it could not bind."""
    if tls is None:
        return int(server.add_insecure_port(address))
    return int(server.add_secure_port(address, server_credentials(tls)))


def aio_channel(
    address: str,
    tls: TlsFiles | None,
    options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[aio.ClientInterceptor] | None = None,
) -> aio.Channel:
    """An async channel to `address`, with mutual TLS when `tls` is given."""
    if tls is None:
        return aio.insecure_channel(address, options=list(options), interceptors=interceptors)
    return aio.secure_channel(
        address, channel_credentials(tls), options=list(options), interceptors=interceptors
    )


def sync_channel(
    address: str, tls: TlsFiles | None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(address, options=list(options))
    return grpc.secure_channel(address, channel_credentials(tls), options=list(options))


def peer_common_name(context: aio.ServicerContext) -> str | None:
    """The common name of the certificate the peer presented, None without one."""
    names = (context.auth_context() or {}).get(COMMON_NAME_KEY) or []
    return names[0].decode(errors="replace") if names else None
