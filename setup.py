"""Build glue: the project metadata lives in pyproject.toml; this file only adds the C extension."""
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "apfdbg.machine._accel",
            sources=["apfdbg/machine/_accel.c"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-Wno-missing-field-initializers"],
        ),
    ],
)
