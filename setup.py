# The Cython extensions live here because pyproject.toml cannot declare ext_modules.
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        f"udrflow._ext.{name}",
        [f"udrflow/_ext/{name}.pyx"],
        include_dirs=["udrflow/_ext"],
        extra_compile_args=["-O3"],
    )
    for name in ("_crc32c", "_frame", "_keyhash", "_fastio", "_intmap")
]

setup(ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}))
