"""The few names of Cython's pure-Python mode that the compiled engine modules use, as
no-ops, for running them from source where Cython is not installed.

The engine modules (``udrflow/_compiled.py``) are ordinary Python that the build also
compiles with Cython. A few of their classes are declared as extension types
(``@cython.cclass`` with ``cython.declare``-d attributes), so that compiled, an attribute
of ``self`` is a field of a C struct instead of a dictionary lookup through the class
hierarchy: the commit path reads several hundred of them per transaction. Compiled,
``import cython`` is resolved by the compiler and nothing is imported; from source, it
imports Cython's own pure-mode module when Cython is installed (a build requirement, not
a runtime one), and this module otherwise:

    try:
        import cython
    except ImportError:
        from udrflow import _cython_shim as cython

From source the declarations mean nothing: a ``cclass`` is an ordinary class, a
``declare``-d attribute is a class attribute None until set, ``locals`` and ``ccall``
change nothing.
"""

from __future__ import annotations

compiled = False

# Types named in declarations (only ever passed to ``declare``/``locals``).
bint = bool
Py_ssize_t = int
longlong = int
double = float


def cclass(cls):
    return cls


def ccall(func):
    return func


def final(obj):
    return obj


def locals(**_types):  # noqa: A001 - Cython's name
    def decorate(func):
        return func

    return decorate


def declare(_type=None, value=None, **_options):
    return value
