"""Builds the optional C++ extension ``fastexpr._C`` (pybind11, OpenMP when available).

The extension is never built against PyTorch. If compilation fails the package still
installs and fastexpr falls back to its numba backend (``fastexpr.available_backends()``
says why ``cpu`` is missing). Environment:

* ``FASTEXPR_NATIVE=0``: do not pass ``-march=native`` (for binaries moved between machines);
* ``FASTEXPR_NO_EXTENSION=1``: skip the extension entirely.
"""
import os
import sys
import tempfile
from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup


def _compiler_accepts(compiler, flags, link_flags=()):
    """True if a tiny OpenMP-free C++ program compiles and links with these flags."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cpp")
        with open(src, "w") as f:
            f.write("int main() { return 0; }\n")
        try:
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=list(flags))
            compiler.link_executable(objs, "probe", output_dir=tmp, extra_postargs=list(link_flags))
        except Exception:
            return False
    return True


class OptionalBuildExt(build_ext):
    """Probe OpenMP and -march=native; a failed build warns instead of failing the install."""

    def build_extensions(self):
        if sys.platform == "win32":
            omp, native = ["/openmp"], []
        else:
            omp, native = ["-fopenmp"], ["-march=native"]
        extra_compile, extra_link = [], []
        if _compiler_accepts(self.compiler, omp, omp):
            extra_compile += omp
            extra_link += omp
        else:
            print("fastexpr: OpenMP not available, building the cpu backend single-threaded")
        if os.environ.get("FASTEXPR_NATIVE", "1") != "0" and _compiler_accepts(self.compiler, native):
            extra_compile += native
        for ext in self.extensions:
            ext.extra_compile_args += extra_compile
            ext.extra_link_args += extra_link
        super().build_extensions()

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any compiler failure leaves a working package
            print(f"fastexpr: building the C++ extension failed ({exc}); the numba backend will be used")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            print(f"fastexpr: building {ext.name} failed ({exc}); the numba backend will be used")


ext_modules = []
if os.environ.get("FASTEXPR_NO_EXTENSION", "0") != "1":
    ext_modules.append(
        Pybind11Extension(
            "fastexpr._C",
            sorted(glob("csrc/cpu/*.cpp")),
            include_dirs=["csrc/common", "csrc/cpu"],
            cxx_std=17,
            extra_compile_args=["-O3"] if sys.platform != "win32" else ["/O2"],
        )
    )

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
