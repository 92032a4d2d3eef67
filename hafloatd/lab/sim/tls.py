"""TLS for the simulated API: a throw-away test CA (``trustme``) and a server certificate.

``trustme`` is a test-time dependency, imported only when a scenario asks for TLS. Key
generation and file writes are blocking, so ``make_tls_material`` runs them in a worker thread;
the CA PEM is written into a private temporary directory that ``TlsMaterial.cleanup`` removes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path


class TlsUnavailable(RuntimeError):
    """TLS was requested but the test CA cannot be built."""


@dataclass(frozen=True)
class TlsMaterial:
    server_context: ssl.SSLContext
    ca_pem: bytes
    ca_file: Path
    directory: Path

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts only the simulator's CA (no file I/O)."""
        context = ssl.create_default_context(cadata=self.ca_pem.decode("ascii"))
        return context

    def cleanup(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


async def make_tls_material(host: str) -> TlsMaterial:
    """Generate a CA and a certificate for ``host`` (plus localhost/127.0.0.1/::1)."""
    return await asyncio.to_thread(_make_tls_material, host)


def _make_tls_material(host: str) -> TlsMaterial:
    try:
        import trustme  # noqa: PLC0415 (test-time dependency, only when TLS is asked for)
    except ImportError:
        raise TlsUnavailable(
            "the simulator's TLS mode needs the 'trustme' package: "
            "pip install trustme (it is in the 'test' extra), or run with tls=False"
        ) from None
    identities = ["localhost", "127.0.0.1", "::1"]
    if host not in identities and host not in ("0.0.0.0", "::"):
        identities.append(host if _is_ip(host) else host.lower())
    ca = trustme.CA()
    leaf = ca.issue_cert(*identities)
    directory = Path(tempfile.mkdtemp(prefix="hafloatd-sim-tls-"))
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca.cert_pem.bytes())
    server_pem = directory / "server.pem"
    server_pem.write_bytes(leaf.private_key_and_cert_chain_pem.bytes())
    server_pem.chmod(0o600)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(server_pem))
    return TlsMaterial(context, ca.cert_pem.bytes(), ca_file, directory)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
