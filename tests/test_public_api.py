"""The public surface changes only on purpose: this pins what ``udrflow`` exports and
checks that every error is rooted at UdrflowError."""

import inspect

import udrflow
import udrflow.errors as errors

EXPECTED = {
    "open", "Database", "Transaction", "retry", "Durability", "LogRecord", "errors", "UdrflowError",
    "CorruptionError", "SchemaError", "TableExistsError", "TableNotFoundError", "TransactionConflictError",
    "DatabaseClosedError", "DatabaseLockedError", "DatabaseNotFoundError", "InvalidNameError",
    "InvalidOptionError", "InvalidPayloadError", "LogPoisonedError", "CommitOutcomeUnknownError", "ReadOnlyError", "StorageError",
    "StorageFullError", "StoragePermissionError", "VersionNotFoundError",
    "BranchNotFoundError", "SqlError", "SqlSyntaxError", "SqlReadOnlyError", "ConnectorError",
    "MergeConflictError", "merge_field",
}


def test_exported_names_are_pinned():
    assert set(udrflow.__all__) == EXPECTED
    for name in udrflow.__all__:
        assert hasattr(udrflow, name), name


def test_every_error_is_a_udrflow_error_and_documented():
    classes = [getattr(errors, n) for n in errors.__all__]
    for cls in classes:
        assert inspect.isclass(cls) and issubclass(cls, errors.UdrflowError), cls
        assert cls.__doc__, f"{cls.__name__} needs a docstring"
        assert cls.__name__ in errors.__doc__, f"{cls.__name__} missing from the tree in errors.py's docstring"


def test_import_udrflow_and_the_version_need_no_engine():
    # `udrflow --version` and a bare `import udrflow` import no pyarrow, numpy, DataFusion
    # or Kafka client: the engine comes in on first use of udrflow.open & co (PEP 562).
    import subprocess
    import sys

    code = ("import sys, udrflow, udrflow.cli; heavy = [m for m in ('pyarrow', 'numpy', 'datafusion', "
            "'confluent_kafka', 'bytewax') if m in sys.modules]; print(heavy); udrflow.open; "
            "print('pyarrow' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.split("\n")[:2] == ["[]", "True"], proc.stdout + proc.stderr
    proc = subprocess.run([sys.executable, "-m", "udrflow.cli", "--version"], capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout.strip() == f"udrflow {udrflow.__version__}"
