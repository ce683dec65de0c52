"""Package layout beyond pyproject.toml: the top-level hw/ folder installs as cepd_deploy.hw, and
the native TTSparseConv kernel (kernels/) builds as cepd_deploy._ttsparse.

The kernel is a plain shared library loaded with ctypes (no Python C API). Its SIMD tiles are
compiled once per instruction set with the target set inside each source file and picked by
cpuid at load time, so no -march flag is needed and the build runs on any x86-64. It is
optional: where no C++17 compiler is found the install goes on without it and the ONNX target
uses stock onnxruntime only.
"""

from setuptools import Extension, find_namespace_packages, find_packages, setup

packages = find_packages(include=["cepd_deploy", "cepd_deploy.*"])
packages += ["cepd_deploy.hw"] + [f"cepd_deploy.hw.{p}" for p in find_namespace_packages("hw")]

ttsparse = Extension(
    "cepd_deploy._ttsparse",
    sources=["kernels/ttsparse.cpp", "kernels/tile_avx512.cpp", "kernels/tile_avx2.cpp",
             "kernels/tile_generic.cpp"],  # fmt: skip
    depends=["kernels/tile.h", "kernels/tile.inc"],
    include_dirs=["kernels"],
    extra_compile_args=["-O3", "-std=c++17", "-Wno-psabi", "-fvisibility=hidden"],
    extra_link_args=["-pthread"],
    language="c++",
    optional=True,
)

setup(
    packages=packages,
    package_dir={"cepd_deploy.hw": "hw"},
    ext_modules=[ttsparse],
)
