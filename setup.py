# The Cython extensions live here because pyproject.toml cannot declare ext_modules.
#
# Two kinds:
# - udrflow/_ext/*.pyx: hand-written Cython (checksums, frames, file I/O, the int64 hash map);
# - the engine modules listed in udrflow/_compiled.py: ordinary Python that is also compiled
#   (Cython's pure-Python mode, same behaviour, a quarter fewer instructions on the commit
#   path). UDRFLOW_PURE_PYTHON=1 at build time skips them; at run time it ignores them.
import ast
import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent


def compiled_modules() -> tuple[str, ...]:
    tree = ast.parse((HERE / "udrflow" / "_compiled.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "COMPILED_MODULES" for t in node.targets):
            return ast.literal_eval(node.value)
    raise RuntimeError("udrflow/_compiled.py has no COMPILED_MODULES literal")


class ParallelBuildExt(build_ext):
    """Compile the C files on every core (the engine modules are large C files)."""

    def finalize_options(self):
        super().finalize_options()
        if not self.parallel:
            self.parallel = os.cpu_count() or 1


extensions = [
    Extension(
        f"udrflow._ext.{name}",
        [f"udrflow/_ext/{name}.pyx"],
        include_dirs=["udrflow/_ext"],
        extra_compile_args=["-O3"],
    )
    for name in ("_crc32c", "_frame", "_keyhash", "_fastio", "_intmap")
]
modules = [] if os.environ.get("UDRFLOW_PURE_PYTHON", "") not in ("", "0") else compiled_modules()
# UDRFLOW_NO_EXT=1: declare no extensions at all. The Makefile's editable installs use it
# (an editable install maps to the source tree, so pip compiling everything in its own
# temporary directory would be thrown away); `make ext` then compiles once, in place, on
# every core, and only what changed. A wheel (`pip wheel .`) builds them as usual.
NO_EXT = os.environ.get("UDRFLOW_NO_EXT", "") not in ("", "0")
engine = [
    Extension(f"udrflow.{name}", [f"udrflow/{name.replace('.', '/')}.py"], extra_compile_args=["-O2"])
    for name in modules
]

setup(
    ext_modules=[] if NO_EXT else (
        cythonize(extensions, compiler_directives={"language_level": "3"})
        + cythonize(engine, nthreads=os.cpu_count() or 1, quiet=True,
                    # Python semantics unchanged: annotations stay annotations (an ``int`` hint must
                    # not reject a numpy integer), functions stay introspectable.
                    compiler_directives={"language_level": "3", "annotation_typing": False, "binding": True})),
    cmdclass={"build_ext": ParallelBuildExt},
)
