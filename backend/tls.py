"""TLS for ``wss://``: the server's context, and ``easel cert``: a self-signed pair for a LAN box.

A painter's laptop talks to a GPU box on the LAN: the token must not travel in clear. ``easel cert
DIR`` writes ``easel-cert.pem`` and ``easel-key.pem`` (an ECDSA P-256 pair made by the ``openssl``
command, valid for the names and addresses given) and prints the certificate's SHA-256 fingerprint.
Clients pin that certificate file (``Client(url, cert=...)``): the connection is trusted only if the
server holds its key.
"""

from __future__ import annotations

import hashlib
import ipaddress
import shutil
import socket
import ssl
import subprocess
from pathlib import Path


class TLSError(ValueError):
    """A certificate or key cannot be used; the message says which and why."""


def server_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TLSError(f"cannot use the TLS certificate {cert} with key {key}: {exc}") from None
    return context


def fingerprint(cert: str | Path) -> str:
    """The certificate's SHA-256 fingerprint as ``AB:CD:...``, as ``openssl x509 -fingerprint -sha256`` shows it."""
    der = ssl.PEM_cert_to_DER_cert(Path(cert).read_text())
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def make_cert(folder: str | Path, hosts: list[str] | None = None, days: int = 825) -> tuple[Path, Path]:
    """Write a self-signed certificate and its key into ``folder``, valid for ``hosts`` (names or
    addresses; default: this machine's name, localhost, 127.0.0.1 and ::1)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise TLSError("`easel cert` needs the openssl command; install OpenSSL, or bring your own certificate")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "easel-cert.pem", folder / "easel-key.pem"
    hosts = hosts or [socket.gethostname(), "localhost", "127.0.0.1", "::1"]
    names = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(f"IP:{ipaddress.ip_address(host)}")
        except ValueError:
            names.append(f"DNS:{host}")
    command = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
               "-days", str(days), "-subj", f"/CN={hosts[0]}/O=Easel", "-keyout", str(key), "-out", str(cert),
               "-addext", f"subjectAltName={','.join(names)}", "-addext", "basicConstraints=critical,CA:TRUE"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise TLSError(f"openssl could not make the certificate: {done.stderr.strip()}")
    key.chmod(0o600)
    return cert, key
