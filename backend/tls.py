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
import re
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


_DNS_NAME = re.compile(r"^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$")


def make_cert(folder: str | Path, hosts: list[str] | None = None, days: int = 825,
              force: bool = False) -> tuple[Path, Path]:
    """Write a self-signed certificate and its key into ``folder``, valid for ``hosts`` (names or
    addresses; default: this machine's name, localhost, 127.0.0.1 and ::1). An existing pair is kept
    unless ``force``: clients have pinned it, and a new key would lock every one of them out."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise TLSError("`easel cert` needs the openssl command; install OpenSSL, or bring your own certificate")
    folder = Path(folder)
    cert, key = folder / "easel-cert.pem", folder / "easel-key.pem"
    if not force and (cert.exists() or key.exists()):
        raise TLSError(f"{folder} already holds a certificate or key that clients may have pinned; give another "
                       "folder, or --force to replace them (then every client must pin the new certificate)")
    given = bool(hosts)
    hosts = hosts or [socket.gethostname(), "localhost", "127.0.0.1", "::1"]
    names = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(f"IP:{ipaddress.ip_address(host)}")
        except ValueError:
            # (checked here: openssl reads the list itself, so a comma would add names nobody asked for)
            if not _DNS_NAME.match(host) or len(host) > 253:
                if not given:  # this machine's own name is not one a certificate can hold: loopback only
                    continue
                raise TLSError(f"--host {host!r} is neither an IP address nor a host name (letters, digits, '-' "
                               "and '.'; write a non-ASCII name in its xn-- form)") from None
            names.append(f"DNS:{host}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TLSError(f"cannot make the folder {folder}: {exc.strerror or exc}") from None
    command = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
               "-days", str(days), "-subj", f"/CN={hosts[0]}/O=Easel", "-keyout", str(key), "-out", str(cert),
               "-addext", f"subjectAltName={','.join(names)}", "-addext", "basicConstraints=critical,CA:TRUE"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise TLSError(f"openssl could not make the certificate: {done.stderr.strip()}")
    key.chmod(0o600)
    return cert, key
