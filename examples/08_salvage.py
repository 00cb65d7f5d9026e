"""Damage and salvage: verify finds a flipped bit, a read-only salvage handle serves every
version before it, and recover copies that intact prefix into a new database.

Run: python examples/08_salvage.py [DB_PATH]
"""

import os
import sys
import tempfile

import pyarrow as pa

import udrflow
from udrflow._recover import recover
from udrflow._verify import verify

path = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp() + "/salvage.udr"
with udrflow.open(path) as db:
    db.create_table("readings", pa.schema([pa.field("id", pa.int64(), nullable=False), ("value", pa.float64())]),
                    primary_key="id")
    for i in range(10):
        db.upsert("readings", [{"id": i % 4, "value": i * 1.5}])
    segment = db.log.segment_paths[0]
    offset = db.log._segments[0].offsets[7 - 1]  # where version 7's frame starts

with open(segment, "r+b") as f:  # a bit rots in the middle of the log
    f.seek(offset + 20)
    byte = f.read(1)[0]
    f.seek(offset + 20)
    f.write(bytes([byte ^ 0x04]))

try:
    with udrflow.open(path, readonly=True) as reader:
        verify(reader)
except udrflow.CorruptionError as exc:
    print("verify:", exc)

with udrflow.open(path, readonly=True, salvage=True) as reader:
    print(f"salvage handle: versions up to {reader.version} are whole; the damage: {reader.log.damage}")
    print("readings at version 6:", reader.read("readings", version=6).to_pylist())

out = path + ".recovered"
report = recover(path, out)
assert report["last_version"] == 6 and report["lost_versions"] == 5
with udrflow.open(out) as copy:
    v = copy.upsert("readings", [{"id": 0, "value": -1.0}])
    print(f"the recovered database takes new commits (version {v}): {copy.read('readings').num_rows} readings")
print("files:", sorted(os.listdir(out)))
