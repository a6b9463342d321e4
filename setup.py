"""Builds the C extension ``shmbench._ring._ring`` and lists the packages; everything else
lives in pyproject.toml. The benchmark suites in ``bench/`` are installed as the package
``shmbench.perf.suites`` (one source: ``shmbench bench`` finds them in a checkout or in the
installed package), the recipes in ``recipes/`` as data of ``shmbench.recipes`` (a record names
a shipped recipe by its file name).

``SHMBENCH_SANITIZE=1`` builds it with AddressSanitizer and UndefinedBehaviorSanitizer
(run Python with ``LD_PRELOAD=$(gcc -print-file-name=libasan.so)`` to load the runtime);
``SHMBENCH_DEBUG=1`` builds without optimisation and with assertions.
"""
import os

from setuptools import Extension, find_packages, setup

cflags = ["-std=c11", "-pthread", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
ldflags = ["-pthread"]   # the heartbeat thread
if os.environ.get("SHMBENCH_SANITIZE"):
    cflags += ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
               "-fno-sanitize-recover=undefined"]
    ldflags += ["-fsanitize=address,undefined"]
elif os.environ.get("SHMBENCH_DEBUG"):
    cflags += ["-O0", "-g", "-UNDEBUG"]
else:
    cflags += ["-O2"]

setup(
    packages=[*find_packages(include=["shmbench", "shmbench.*"]), "shmbench.perf.suites", "shmbench.recipes"],
    package_dir={"shmbench.perf.suites": "bench", "shmbench.recipes": "recipes"},
    ext_modules=[
        Extension(
            "shmbench._ring._ring",
            sources=["shmbench/_ring/_ring.c"],
            depends=["shmbench/_ring/ring.h"],
            extra_compile_args=cflags,
            extra_link_args=ldflags,
        ),
        # the same source on the stable ABI: the one a host-injected server loads in an image
        # whose Python (>= 3.11) is not the host's (shmbench/_ring/__init__.py)
        Extension(
            "shmbench._ring._ring_abi3",
            sources=["shmbench/_ring/_ring_abi3.c"],
            depends=["shmbench/_ring/_ring.c", "shmbench/_ring/ring.h"],
            extra_compile_args=cflags,
            extra_link_args=ldflags,
            py_limited_api=True,
        ),
    ]
)
