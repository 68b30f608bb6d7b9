"""
fedmsg-twisted: a Twisted framework for the fedmsg message bus.
"""

from setuptools import setup

setup(
    name="fedmsg-twisted",
    version="0.1.0",
    description="A Twisted, wire-compatible implementation of the fedmsg message bus",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="LGPL-2.1-or-later",
    python_requires=">=3.11",
    packages=[
        "fedmsg_twisted",
        "fedmsg_twisted.cli",
        "fedmsg_twisted.crypto",
        "twisted.plugins",
    ],
    package_data={"fedmsg_twisted": ["static/*", "hooks/*"]},
    include_package_data=True,
    install_requires=[
        "twisted[tls]>=24.7",
        "txzmq>=1.0.0,<2",
        "pyzmq>=25",
        "pyopenssl>=24",
        "cryptography>=42",
        "service-identity>=24",
        "python-gnupg>=0.5",
        "dnspython>=2.4",
        "python-debian>=0.1.49",
    ],
    extras_require={
        "postgresql": ["psycopg[binary]>=3.1"],
        "test": ["psycopg[binary]>=3.1", "selenium>=4.10", "hypothesis>=6", "orjson>=3.9", "pysimdjson>=6"],
        "docs": ["sphinx>=7"],
        # Faster canonical encoding and decoding (fedmsg_twisted.encoding) and
        # the relay's validity-only check (fedmsg_twisted.fastcheck): the same
        # bytes and the same verdicts without them.
        "speed": ["orjson>=3.9", "pysimdjson>=6"],
    },
    entry_points={
        "console_scripts": [
            "fedmsg-logger = fedmsg_twisted.cli.logger:main",
            "fedmsg-tail = fedmsg_twisted.cli.tail:main",
            "fedmsg-check = fedmsg_twisted.cli.check:main",
        ],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: System :: Networking",
    ],
)
