"""nanocore: the control node of a Nano virtualization cluster, on Twisted."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent

setup(
    name="nanocore",
    version="0.1.0",
    description="Drop-in replacement for Nano Core 1.4.0, on Twisted",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # twisted/plugins has no __init__.py on purpose: it is a portion of Twisted's own package.
    packages=[*find_packages(exclude=["tests", "tests.*", "benchmarks"]), "twisted.plugins"],
    package_data={"nanocore.store": ["schema/*.sql"]},
    include_package_data=True,
    install_requires=[
        "Twisted[tls]>=24.7",
        "pyOpenSSL>=24.0",
        "service-identity>=24.1",
        "cryptography>=42",
        "attrs>=23.2",
        # C ikcp, sans-io: the ARQ of the KCP link to stock Go Cells (0.0.x: pin the minor).
        "siokcp>=0.0.5,<0.1",
        "klein>=24.8",
        # Imported directly for Klein's routing exceptions and map settings.
        "Werkzeug>=3.0",
        # The HTTP client of `nanocore call`.
        "treq>=24.9",
        # Streaming multipart/form-data parser of image uploads (defnull/multipart).
        "multipart>=1.2",
    ],
    extras_require={
        "test": ["hypothesis>=6.100", "coverage>=7.10.4"],
        "dev": ["ruff>=0.6", "mypy>=1.11", "mypy-zope>=1.0.5", "tox>=4"],
    },
    entry_points={"console_scripts": ["nanocore = nanocore.cli:main"]},
)
