"""The one compiled part: the safety chain's filter cascade, true-peak detector and per-block
bookkeeping (``engine/safety/_cascade.c``).

Everything else about the distribution is in ``pyproject.toml``. A C compiler and Python's headers
are needed to build it, as they already are for PyAudio (``scripts/sysdeps.sh`` installs both).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "resonera.engine.safety._cascade",
            ["engine/safety/_cascade.c"],
            # -ffp-contract=off: no fused multiply-adds, so the output is bit for bit scipy's
            # cascade on every machine (ARM compilers fuse by default).
            extra_compile_args=["-O3", "-ffp-contract=off"],
        )
    ]
)
