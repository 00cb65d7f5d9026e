"""Commit to udrflow's epoch log, reopen, and read back from a chosen version.

Run: python examples/01_log_basics.py [DB_PATH]
"""

import sys
import tempfile

import msgspec

import udrflow

path = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp() + "/example.udr"

with udrflow.open(path) as db:
    for amount in (9.5, 20.0, 3.25, 7.0):
        version = db.log.append(msgspec.msgpack.encode({"amount": amount}))
    print("head version:", version)

with udrflow.open(path) as db:  # reopen: recovery rebuilds the index from the segments
    amounts = [msgspec.msgpack.decode(r.payload)["amount"] for r in db.log.scan(2)]
    print("amounts from version 2:", amounts)
    assert amounts == [20.0, 3.25, 7.0], amounts
