"""
The real fedmsg 1.1.7, as a test peer in its own virtual environment.

fedmsg pins nothing and clashes with our dependencies, so it lives in its own
venv (C{$FEDMSG_PEER_VENV}, default C{/tmp/fedmsgpeer}).  C{.ci/run} creates
it; L{ensure_peer} creates it on demand for a developer.  Its X.509 code needs
pyOpenSSL 24.2.1 and cryptography 43 (it calls C{OpenSSL.crypto.load_crl}).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

PEER_VENV = os.environ.get("FEDMSG_PEER_VENV", "/tmp/fedmsgpeer")
PEER_REQUIREMENTS = ["fedmsg==1.1.7", "pyOpenSSL==24.2.1", "cryptography==43.0.3"]


def peer_python() -> str:
    return os.path.join(PEER_VENV, "bin", "python")


def peer_bin(name: str) -> str:
    return os.path.join(PEER_VENV, "bin", name)


def ensure_peer() -> str:
    """
    Make sure the peer venv exists; return its python.  Blocking: call it at
    module import of a test module (before the reactor runs), never in a test.
    """
    py = peer_python()
    ok = os.path.exists(py) and subprocess.run(
        [py, "-c", "import fedmsg, OpenSSL; assert OpenSSL.__version__ == '24.2.1'"],
        capture_output=True,
    ).returncode == 0
    if not ok:
        subprocess.run([sys.executable, "-m", "venv", PEER_VENV], check=True)
        subprocess.run(
            [py, "-m", "pip", "install", "-q", *PEER_REQUIREMENTS], check=True
        )
    return py


def write_peer_config(directory: str, config: dict) -> str:
    """
    Write C{directory}/fedmsg.d/test.py defining C{config}; return C{directory}.

    fedmsg reads C{./fedmsg.d/*.py} from its working directory.  CA and CRL are
    always given so fedmsg never tries to download Fedora's.
    """
    config = dict(config)
    config.setdefault("ca_cert_location", None)
    config.setdefault("crl_location", None)
    os.makedirs(os.path.join(directory, "fedmsg.d"), exist_ok=True)
    with open(os.path.join(directory, "fedmsg.d", "test.py"), "w") as f:
        f.write("config = " + repr(config) + "\n")
    return directory


def script(code: str) -> str:
    return textwrap.dedent(code)
