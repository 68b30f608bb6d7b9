"""
Sphinx configuration.  The config reference is generated from
C{fedmsg_twisted.config.KEYS}, so it can never drift from the code.
"""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

from fedmsg_twisted import __version__, config  # noqa: E402

project = "fedmsg-twisted"
author = "the fedmsg-twisted developers"
release = version = __version__
extensions = []
exclude_patterns = ["_build", "dev"]
html_theme = "alabaster"

_generated = os.path.join(os.path.dirname(__file__), "_generated")
os.makedirs(_generated, exist_ok=True)
with open(os.path.join(_generated, "config_keys.rst"), "w") as f:
    f.write(config.to_rst())
