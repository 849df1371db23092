"""
Clustron: clustering and messaging for Twisted.
"""

from setuptools import find_packages, setup

EXTRAS = {
    "tls": ["pyOpenSSL>=24.0", "service-identity>=24.1", "cryptography>=42"],
    "msgpack": ["msgpack>=1.0"],
    "protobuf": ["protobuf>=4.25"],
    "mdns": ["zeroconf>=0.131"],
    "etcd": ["treq>=23.11"],
    "consul": ["treq>=23.11"],
    "tracing": ["opentelemetry-sdk>=1.24", "opentelemetry-exporter-otlp-proto-http>=1.24"],
    "fuzz": ["atheris>=2.3"],
}
EXTRAS["all"] = sorted({req for name, reqs in EXTRAS.items() if name != "fuzz" for req in reqs})
EXTRAS["test"] = sorted(
    set(EXTRAS["all"])
    | {
        "hypothesis>=6.100",
        "pysyncobj>=0.3.12",
        "playwright>=1.44",
        "sphinx>=7.2",
        "myst-parser>=3",
        "atheris>=2.3",
    }
)
EXTRAS["lint"] = ["ruff>=0.5", "mypy>=1.10", "mypy-zope>=1.0", "types-PyYAML"]
EXTRAS["docs"] = ["sphinx>=7.2", "myst-parser>=3"]

setup(
    name="clustron",
    version="0.1.0",
    description="Clustering and messaging for Twisted: membership, election, ordered reliable messaging.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["clustron", "clustron.*"]) + ["twisted.plugins"],
    package_data={"clustron": ["admin/static/*", "py.typed"], "twisted": ["plugins/*.py"]},
    include_package_data=True,
    install_requires=[
        "Twisted>=23.10",
        "zope.interface>=6.0",
        "attrs>=23.1",
        "PyYAML>=6.0",
        "prometheus-client>=0.19",
        "opentelemetry-api>=1.24",
        "pyOpenSSL>=24.0",
        "service-identity>=24.1",
        "cryptography>=42",
        "idna>=3.6",
    ],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["clustron = clustron.cli:run"]},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: System :: Distributed Computing",
    ],
)
