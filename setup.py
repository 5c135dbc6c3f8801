"""Build the C engine into the cffi extension ``pymqueue._pmq_c`` (API, out-of-line mode)."""

from setuptools import setup

setup(cffi_modules=["csrc/pmq_build.py:ffi"])
