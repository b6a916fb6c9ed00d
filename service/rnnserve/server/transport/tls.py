"""TLS for the gRPC port: server credentials from Settings, and binding with a clear failure."""

from __future__ import annotations

from concurrent import futures
from typing import Any

import grpc
from rnnserve.server.security import SecurityConfigError, read_pem
from rnnserve.server.settings import Settings

CERTIFICATE = "CERTIFICATE-----"
PRIVATE_KEY = "PRIVATE KEY-----"


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials for the gRPC port (None: plaintext), requiring client certificates signed
    by `tls_client_ca_file` when it is set (mutual TLS).

    Raises SecurityConfigError for half a configuration (a certificate without its key, a client
    CA without TLS) or a file that cannot be read or holds no PEM of the expected kind.
    """
    cert, key = settings.tls_cert_file, settings.tls_key_file
    client_ca = settings.tls_client_ca_file
    if cert is None and key is None:
        if client_ca is not None:
            raise SecurityConfigError(
                "tls_client_ca_file needs tls_cert_file and tls_key_file: mutual TLS is TLS "
                "with client certificates"
            )
        return None
    if cert is None or key is None:
        missing = "tls_key_file" if key is None else "tls_cert_file"
        raise SecurityConfigError(
            f"{missing} is not set: tls_cert_file and tls_key_file turn TLS on together"
        )
    chain = read_pem(cert, "tls_cert_file", CERTIFICATE)
    private_key = read_pem(key, "tls_key_file", PRIVATE_KEY)
    roots = None if client_ca is None else read_pem(client_ca, "tls_client_ca_file", CERTIFICATE)
    return grpc.ssl_server_credentials(
        [(private_key, chain)], root_certificates=roots, require_client_auth=roots is not None
    )


def bind(server: Any, address: str, credentials: grpc.ServerCredentials | None) -> int:
    """Add the listening port to a grpc.aio server (TLS when `credentials`); the bound port.

    Raises OSError when the address cannot be bound, SecurityConfigError when the TLS files
    are readable PEM but unusable together (a key that is not the certificate's).
    """
    try:
        if credentials is None:
            port = int(server.add_insecure_port(address))
        else:
            port = int(server.add_secure_port(address, credentials))
    except RuntimeError:
        # grpc says only "Failed to bind": tell a bad key pair from a taken address.
        if credentials is not None and not _credentials_usable(credentials):
            raise SecurityConfigError(
                "cannot serve TLS with tls_cert_file and tls_key_file: the key is not the "
                "certificate's private key, or a PEM block is damaged"
            ) from None
        port = 0
    if port == 0:
        raise OSError(f"cannot bind {address}")
    return port


def _credentials_usable(credentials: grpc.ServerCredentials) -> bool:
    """Whether the credentials can secure a throw-away loopback port."""
    probe = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    try:
        return int(probe.add_secure_port("127.0.0.1:0", credentials)) != 0
    except RuntimeError:
        return False
    finally:
        probe.stop(None)
