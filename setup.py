"""Builds the compiled parts (stream_logreg/_kernel.pyx, _features.pyx, _stream.pyx, _batch.pyx, _json.pyx:
C++, with the vendored fast_float header, vendor/: a build input, not part of the package); the rest:
pyproject."""

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [
            Extension(
                "stream_logreg._kernel",
                ["stream_logreg/_kernel.pyx"],
                include_dirs=[numpy.get_include(), "stream_logreg"],
                depends=["stream_logreg/_dictnext.h"],
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                extra_compile_args=["-O3"],
            ),
            Extension(
                "stream_logreg._features",
                ["stream_logreg/_features.pyx"],
                include_dirs=[numpy.get_include(), "stream_logreg"],
                depends=["stream_logreg/_blake2b.h", "stream_logreg/_dictnext.h"],
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                extra_compile_args=["-O3"],
            ),
            Extension(
                "stream_logreg._stream",
                ["stream_logreg/_stream.pyx"],
                include_dirs=[numpy.get_include()],
                depends=["stream_logreg/_json.pxd"],
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                extra_compile_args=["-O3"],
            ),
            Extension(
                "stream_logreg._batch",
                ["stream_logreg/_batch.pyx"],
                include_dirs=[numpy.get_include()],
                depends=["stream_logreg/_json.pxd"],
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                extra_compile_args=["-O3"],
            ),
            Extension(
                "stream_logreg._json",
                ["stream_logreg/_json.pyx"],
                language="c++",
                include_dirs=[numpy.get_include(), "stream_logreg", "."],  # ".": vendor/
                depends=["stream_logreg/_json.h", "vendor/fast_float/fast_float_all.h"],
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                extra_compile_args=["-O3", "-std=c++17"],
            ),
        ],
        compiler_directives={"language_level": "3"},
    )
)
