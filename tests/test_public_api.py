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
