"""Build hook: bundle libqattn.so into the package (the binding itself is pure Python/ctypes).

Where the library comes from, first match wins:
  1. $QATTN_LIBRARY, a built libqattn.so;
  2. <repo>/build/libqattn.so, what `cmake -S . -B build && cmake --build build` makes;
  3. a fresh CMake build of <repo> into this package's setuptools build folder (needs cmake
     and a C compiler; CUDA is built if nvcc is found, as in the main build).
The wheel is tagged platform-specific because it carries a native library.
"""
import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _cmake_build(build_temp):
    cmake = shutil.which("cmake")
    if not cmake:
        raise RuntimeError("qattn: no libqattn.so found (QATTN_LIBRARY unset, %s/build/libqattn.so missing) "
                           "and cmake is not on PATH to build one" % ROOT)
    if not os.path.isfile(os.path.join(ROOT, "CMakeLists.txt")):
        raise RuntimeError("qattn: %s is not a qattn checkout; set QATTN_LIBRARY to a built libqattn.so" % ROOT)
    bdir = os.path.join(build_temp, "cmake-qattn")
    subprocess.check_call([cmake, "-S", ROOT, "-B", bdir, "-DCMAKE_BUILD_TYPE=Release", "-DQATTN_BUILD_TESTS=OFF"])
    subprocess.check_call([cmake, "--build", bdir, "--target", "qattn", "-j", str(os.cpu_count() or 2)])
    return os.path.join(bdir, "libqattn.so")


def find_library(build_temp):
    env = os.environ.get("QATTN_LIBRARY")
    if env:
        if not os.path.isfile(env):
            raise RuntimeError("QATTN_LIBRARY=%s is not a file" % env)
        return env
    built = os.path.join(ROOT, "build", "libqattn.so")
    if os.path.isfile(built):
        return built
    return _cmake_build(build_temp)


class BuildPyWithLib(build_py):
    def run(self):
        super().run()
        src = find_library(os.path.join(os.path.dirname(self.build_lib), "temp-qattn"))
        dst = os.path.join(self.build_lib, "qattn", "libqattn.so")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy(src, dst)  # follows the libqattn.so -> .so.0 -> .so.0.1.0 symlinks
        print("qattn: bundled %s" % os.path.realpath(src))


class BinaryDistribution(Distribution):
    def has_ext_modules(self):
        return True


setup(cmdclass={"build_py": BuildPyWithLib}, distclass=BinaryDistribution)
