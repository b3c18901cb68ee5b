"""Throwaway certificates for the TLS tests, made with the ``openssl`` command line.

They are made to pass a strict X.509 verifier: OpenSSL's ``X509_V_FLAG_X509_STRICT``,
which Python 3.13's ``ssl.create_default_context()`` turns on and which the
receiver sets on its own server context on every Python version (see
``ServerConfig.ssl_context``). Strict means:

- the CA has ``basicConstraints=critical,CA:TRUE`` and ``keyUsage`` with ``keyCertSign``,
  and a ``subjectKeyIdentifier``;
- every certificate it signs has an ``authorityKeyIdentifier``;
- a leaf says what it is for: ``extendedKeyUsage`` ``serverAuth`` or ``clientAuth``.

:func:`make_ca` can also leave out ``keyUsage``, the way ``openssl req -x509``
does on its defaults, to test how the receiver refuses such a CA.

The extensions come from a config file written here, not from openssl's own
``openssl.cnf``, so that every OpenSSL version (1.1.1, 3.x) makes the same
certificates. P-256 keys, not RSA: generating them is instant, which matters
on a loaded 2-core CI machine.
"""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path
from typing import Literal

#: Two days: long enough for any test session, short enough to be useless if leaked.
DAYS = "2"

CONFIG = """\
[req]
distinguished_name = dn

[dn]

[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[ca_without_key_usage]
basicConstraints = critical, CA:TRUE
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[serverAuth]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[clientAuth]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""

KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


class OpenSSLFailed(RuntimeError):
    """The openssl command line refused to make a certificate (its stderr is in the message)."""


def _openssl(directory: Path, *args: str) -> None:
    done = subprocess.run(["openssl", *args], cwd=directory, capture_output=True, text=True)
    if done.returncode != 0:
        raise OpenSSLFailed(f"openssl {' '.join(args)}: {done.stderr.strip()}")


def _config(directory: Path) -> str:
    path = directory / "certs.cnf"
    if not path.exists():
        path.write_text(CONFIG)
    return path.name


def make_ca(directory: Path, name: str = "ca", *, key_usage: bool = True) -> tuple[Path, Path]:
    """A self-signed CA in ``directory``: ``(name.crt, name.key)``.

    ``key_usage=False`` leaves out the ``keyUsage`` extension, which a strict
    verifier refuses in a CA.
    """
    config = _config(directory)
    section = "ca" if key_usage else "ca_without_key_usage"
    _openssl(directory, "req", "-x509", "-config", config, "-extensions", section, *KEY,
             "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", DAYS, "-subj", f"/CN=qwen-fluent test {name}")
    return directory / f"{name}.crt", directory / f"{name}.key"


def make_leaf(directory: Path, name: str, common_name: str, purpose: Literal["serverAuth", "clientAuth"],
              ca: tuple[Path, Path]) -> tuple[Path, Path]:
    """A certificate for ``purpose`` signed by ``ca``, valid for localhost/127.0.0.1: ``(name.crt, name.key)``."""
    config = _config(directory)
    ca_crt, ca_key = ca
    _openssl(directory, "req", "-new", "-config", config, *KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={common_name}")
    _openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", str(ca_crt), "-CAkey", str(ca_key),
             "-set_serial", str(secrets.randbits(63) + 1), "-out", f"{name}.crt", "-days", DAYS,
             "-extfile", config, "-extensions", purpose)
    (directory / f"{name}.csr").unlink()
    return directory / f"{name}.crt", directory / f"{name}.key"
