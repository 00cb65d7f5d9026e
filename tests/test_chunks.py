"""The chunk store keeps content-addressed blobs durably and never returns bytes that do
not match their BLAKE3 name: round trips, dedup, deterministic table encoding, every
corruption detected, faults and power loss injected with udrflow.testing.FaultyFileIO."""

import collections
import datetime
import errno
import os
import random
import threading

import blake3
import pyarrow as pa
import pytest

import udrflow._chunks as chunks_module
from udrflow._chunks import ChunkStore, decode_table, digest_of, encode_table
from udrflow._fileio import TEMP_MARKER, temp_path_for
from udrflow._limits import CHUNK_CACHE_BYTES_MAX, CHUNK_WRITE_BATCH_MAX
from udrflow.errors import CorruptionError, StorageError, StorageFullError, UsageError
from udrflow.testing import FaultyFileIO


class RecordingIO(FaultyFileIO):
    """A FaultyFileIO that also remembers which directories were fsynced, in order."""

    def __init__(self, seed=None):
        super().__init__(seed)
        self.dirs_fsynced = []

    def fsync_dir(self, path):
        super().fsync_dir(path)
        self.dirs_fsynced.append(os.path.abspath(path))


def all_files(root):
    return sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files)


def sample_table(n=5, start=0):
    return pa.table({
        "id": pa.array(range(start, start + n), pa.int64()),
        "name": [None if i % 4 == 0 else f"name-{i}" for i in range(start, start + n)],
        "amount": [i * 1.5 for i in range(start, start + n)],
    })


# ---- round trips and dedup --------------------------------------------------------------


def test_bytes_round_trip_and_layout(tmp_path):
    store = ChunkStore(str(tmp_path))
    for data in (b"", b"x", os.urandom(100_000)):
        digest = store.put(data)
        assert digest == blake3.blake3(data).hexdigest() == digest_of(data)
        assert store.get(digest) == data
        assert store.exists(digest)
        assert store.path_of(digest) == os.path.join(str(tmp_path), digest[:2], digest[2:4], digest)
        assert os.path.isfile(store.path_of(digest))
    assert sorted(store.digests()) == list(store.digests())
    assert len(list(store.digests())) == 3


def test_put_accepts_bytes_like_and_rejects_other_types(tmp_path):
    store = ChunkStore(str(tmp_path))
    d = store.put(b"abc")
    assert store.put(bytearray(b"abc")) == store.put(memoryview(b"abc")) == store.put(pa.py_buffer(b"abc")) == d
    with pytest.raises(UsageError, match="chunk data must be bytes, got str"):
        store.put("abc")


def test_table_round_trip_keeps_types_nulls_and_metadata(tmp_path):
    store = ChunkStore(str(tmp_path))
    table = pa.table({
        "id": pa.array([1, 2, 3], pa.int64()),
        "name": ["a", None, "c"],
        "at": pa.array([datetime.datetime(2024, 1, 1), None, datetime.datetime(2024, 1, 3)], pa.timestamp("us")),
        "tags": pa.array([["x"], [], None], pa.list_(pa.string())),
        "ok": [True, False, None],
    }).replace_schema_metadata({"udrflow.table": "orders"})
    digest = store.put_table(table)
    back = ChunkStore(str(tmp_path)).get_table(digest)
    assert back.equals(table, check_metadata=True)
    assert decode_table(store.get(digest)).equals(table)
    assert decode_table(encode_table(table)).equals(table)


def test_same_content_twice_is_stored_once(tmp_path):
    store = ChunkStore(str(tmp_path))
    d1 = store.put(b"same bytes")
    files, size = all_files(tmp_path), store.bytes_on_disk()
    d2 = store.put(b"same bytes")
    assert d1 == d2
    assert all_files(tmp_path) == files and len(files) == 1
    assert store.bytes_on_disk() == size == len(b"same bytes")
    # Tables too, across stores on the same root (versions, tables and branches share it).
    t1 = ChunkStore(str(tmp_path)).put_table(sample_table())
    files = all_files(tmp_path)
    assert ChunkStore(str(tmp_path)).put_tables([sample_table(), sample_table()]) == [t1, t1]
    assert all_files(tmp_path) == files


def test_put_many_returns_digests_in_order_with_duplicates(tmp_path):
    store = ChunkStore(str(tmp_path))
    blobs = [b"a", b"b", b"a", b"c", b"b"]
    digests = store.put_many(blobs)
    assert digests == [digest_of(b) for b in blobs]
    assert sorted(store.digests()) == sorted(set(digests))
    assert [store.get(d) for d in digests] == blobs
    assert store.put_many([]) == []


# ---- deterministic encoding -------------------------------------------------------------


def test_same_table_encodes_to_the_same_bytes():
    table = sample_table(1000)
    assert encode_table(table) == encode_table(table)
    rebuilt = sample_table(1000)  # built again from the same Python values
    assert rebuilt is not table
    assert digest_of(encode_table(rebuilt)) == digest_of(encode_table(table))


def test_in_memory_chunking_does_not_change_the_digest(tmp_path):
    store = ChunkStore(str(tmp_path))
    table = sample_table(100)
    expected = store.put_table(table)
    split = pa.concat_tables([table.slice(0, 10), table.slice(10, 45), table.slice(55)])
    assert split.column(0).num_chunks == 3
    assert store.put_table(split) == expected
    assert store.put_table(pa.Table.from_batches(table.to_batches(max_chunksize=7))) == expected
    assert store.put_table(table.combine_chunks().to_batches()[0]) == expected  # a RecordBatch
    # A slice (non-zero offsets into shared buffers) encodes like the same rows built fresh.
    assert store.put_table(sample_table(200).slice(50, 100)) == store.put_table(sample_table(100, start=50))
    assert store.put_table(pa.concat_tables([sample_table(37), sample_table(63, start=37)])) == expected
    # Empty tables, however they were made.
    schema = table.schema
    assert store.put_table(schema.empty_table()) == store.put_table(table.slice(0, 0)) \
        == store.put_table(pa.Table.from_batches([], schema))
    assert len(list(store.digests())) == 3


def nested_table(rows):
    return pa.table({
        "s": [None if i % 4 == 0 else f"s{i}" for i in rows],
        "b": pa.array([None if i % 4 == 0 else bytes([i % 256]) * (i % 5) for i in rows], pa.large_binary()),
        "ok": [None if i % 5 == 0 else i % 3 == 0 for i in rows],
        "l": pa.array([None if i % 4 == 0 else [f"x{j}" for j in range(i % 3)] for i in rows],
                      pa.list_(pa.string())),
        "st": pa.array([None if i % 6 == 0 else {"a": i, "b": None if i % 4 == 0 else f"b{i}"} for i in rows],
                       pa.struct([("a", pa.int64()), ("b", pa.string())])),
    })


def test_a_slice_encodes_like_the_same_rows_built_fresh():
    # The IPC writer copies a sliced array's buffers whole (all string data after the
    # slice, neighbouring bits of a validity bitmap); the encoder must not.
    seed = 5
    rng = random.Random(seed)
    full = nested_table(range(300))
    for _ in range(40):
        offset, length = rng.randrange(1, 150), rng.randrange(1, 150)
        fresh = nested_table(range(offset, offset + length))
        assert encode_table(full.slice(offset, length)) == encode_table(fresh), \
            f"seed={seed} offset={offset} length={length}"


def test_slicing_a_table_into_chunks_stores_each_row_once(tmp_path):
    # A checkpoint slices a table into chunks; unchanged slices of the next version dedup
    # even when that version's arrays were rebuilt, and no chunk carries the bytes of the
    # rows after it (random strings, so compression cannot hide them).
    seed = 3
    rng = random.Random(seed)
    rows = 4000
    store = ChunkStore(str(tmp_path))

    def random_rows(n):
        return pa.table({"id": range(n), "s": [None if i % 7 == 0 else rng.randbytes(16).hex() for i in range(n)]})

    v1 = random_rows(rows)
    v1_digests = store.put_tables([v1.slice(start, 1000) for start in range(0, rows, 1000)])
    whole = len(encode_table(v1))
    assert store.bytes_on_disk() < 1.2 * whole, f"seed={seed}: {store.bytes_on_disk()} vs {whole}"
    appended = random_rows(500)
    v2 = pa.concat_tables([v1, appended.set_column(0, "id", pa.array(range(rows, rows + 500)))])
    v2 = v2.combine_chunks()  # fresh buffers, as after a merge
    v2_digests = store.put_tables([v2.slice(start, 1000) for start in range(0, rows + 500, 1000)])
    assert v2_digests[:4] == v1_digests, f"seed={seed}"
    assert len(list(store.digests())) == 5


def test_a_table_without_columns_keeps_its_row_count():
    table = pa.table({"a": [1, 2, 3]}, metadata={"k": "v"}).drop(["a"])
    assert table.num_rows == 3 and table.num_columns == 0
    back = decode_table(encode_table(table))
    assert back.num_rows == 3 and back.num_columns == 0 and back.schema.metadata == {b"k": b"v"}


def test_different_content_gives_different_digests():
    base = sample_table(10)
    variants = [
        sample_table(10, start=1),
        sample_table(11),
        base.replace_schema_metadata({"k": "v"}),
        base.cast(pa.schema([("id", pa.int32()), ("name", pa.string()), ("amount", pa.float64())])),
        base.select(["name", "id", "amount"]),
    ]
    digests = {digest_of(encode_table(t)) for t in [base, *variants]}
    assert len(digests) == 1 + len(variants)


# ---- verification on read ---------------------------------------------------------------


def _corrupt(path, kind, rng, other_content):
    with open(path, "rb") as f:
        data = bytearray(f.read())
    if kind == "flip":
        pos = rng.randrange(len(data))
        data[pos] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        data = data[:rng.randrange(len(data))]
    elif kind == "append":
        data += bytes([rng.randrange(256)])
    elif kind == "replace":
        data = bytearray(other_content)
    elif kind == "zero":
        data = bytearray(len(data))
    with open(path, "wb") as f:
        f.write(data)
    return bytes(data)


def test_100_of_100_corrupted_chunks_are_detected(tmp_path):
    seed = 20240611
    rng = random.Random(seed)
    store = ChunkStore(str(tmp_path))
    blobs = [rng.randbytes(rng.randint(1, 4000)) + i.to_bytes(2, "big") for i in range(50)]
    tables = [sample_table(rng.randint(1, 300), start=i * 1000) for i in range(50)]
    digests = store.put_many(blobs) + store.put_tables(tables)
    assert len(set(digests)) == 100
    for d in digests[50:]:
        store.get_table(d)  # fill the cache, which a verified read must not trust
    originals = {d: store.get(d) for d in digests}
    kinds = ["flip", "truncate", "append", "replace", "zero"]
    corrupted = {}
    for i, digest in enumerate(digests):
        other = originals[digests[(i + 1) % len(digests)]]
        corrupted[digest] = _corrupt(store.path_of(digest), kinds[i % len(kinds)], rng, other)
    fresh = ChunkStore(str(tmp_path))
    detected = 0
    for i, digest in enumerate(digests):
        actual = blake3.blake3(corrupted[digest]).hexdigest()
        context = f"seed={seed} chunk #{i} corruption={kinds[i % len(kinds)]}"
        assert actual != digest, context
        for reader in (store.get, fresh.get, fresh.get_table):
            with pytest.raises(CorruptionError) as info:
                reader(digest)
            message = str(info.value)
            assert f"expected {digest}" in message and f"got {actual}" in message, f"{context}: {message}"
            assert store.path_of(digest) in message and info.value.path == store.path_of(digest), context
        detected += 1
    assert detected == 100, f"seed={seed}"
    assert fresh.cache_stats["entries"] == 0  # nothing corrupt was cached


def test_missing_chunk_is_corruption(tmp_path):
    store = ChunkStore(str(tmp_path))
    digest = digest_of(b"never written")
    path = store.path_of(digest)
    with pytest.raises(CorruptionError) as info:
        store.get(digest)
    assert str(info.value) == f"chunk {digest} is missing: expected file {path}"
    assert info.value.path == path
    with pytest.raises(CorruptionError, match="is missing"):
        store.get_table(digest)
    assert not store.exists(digest)


@pytest.mark.parametrize("digest", [
    "../x", "ABC", "a" * 63, "a" * 65, "A" * 64, "../" + "a" * 61, "g" * 64, "", None, b"a" * 64,
    "a" * 63 + "\n",
])
def test_malformed_digests_are_rejected(tmp_path, digest):
    store = ChunkStore(str(tmp_path))
    for method in (store.get, store.get_table, store.exists, store.delete, store.path_of):
        with pytest.raises(UsageError, match="malformed chunk digest .*expected 64 lowercase hex"):
            method(digest)


def test_a_chunk_that_is_not_a_table_is_corruption_for_get_table(tmp_path):
    store = ChunkStore(str(tmp_path))
    digest = store.put(b"not arrow at all")
    with pytest.raises(CorruptionError, match=f"chunk {digest} at .* is not an Arrow IPC stream"):
        store.get_table(digest)


# ---- cache ------------------------------------------------------------------------------


def test_cache_is_bounded_and_counts_hits(tmp_path):
    tables = [sample_table(200, start=i * 1000) for i in range(10)]
    table_bytes = tables[0].nbytes
    cache_max = 3 * table_bytes + table_bytes // 2  # room for three tables, not four
    assert sum(t.nbytes for t in tables) > cache_max
    store = ChunkStore(str(tmp_path), cache_bytes_max=cache_max)
    digests = store.put_tables(tables)
    for d, t in zip(digests, tables, strict=True):
        assert store.get_table(d).equals(t)
        stats = store.cache_stats
        assert stats["bytes"] <= cache_max and stats["entries"] <= 3, stats
    assert store.cache_stats["misses"] == 10 and store.cache_stats["hits"] == 0
    assert store.cache_stats["entries"] == 3 and store.cache_stats["evictions"] == 7
    # The three most recent are served from memory, the same objects each time.
    assert store.get_table(digests[-1]) is store.get_table(digests[-1])
    assert store.cache_stats["hits"] == 2
    store.get_table(digests[0])  # a miss that evicts the least recently used
    assert store.cache_stats["misses"] == 11 and store.cache_stats["bytes"] <= cache_max
    store.clear_cache()
    assert store.cache_stats["bytes"] == 0 and store.cache_stats["entries"] == 0


def test_tables_larger_than_the_cache_are_not_cached(tmp_path):
    store = ChunkStore(str(tmp_path), cache_bytes_max=100)
    digest = store.put_table(sample_table(1000))
    store.get_table(digest)
    store.get_table(digest)
    assert store.cache_stats == {"hits": 0, "misses": 2, "evictions": 0, "bytes": 0, "entries": 0}
    off = ChunkStore(str(tmp_path), cache_bytes_max=0)
    off.get_table(digest)
    assert off.cache_stats["entries"] == 0
    with pytest.raises(UsageError, match="cache_bytes_max must be an int >= 0, got -1"):
        ChunkStore(str(tmp_path), cache_bytes_max=-1)
    assert ChunkStore(str(tmp_path)).cache_bytes_max == CHUNK_CACHE_BYTES_MAX


def test_cache_is_thread_safe(tmp_path):
    seed = 7
    tables = [sample_table(50, start=i * 100) for i in range(12)]
    store = ChunkStore(str(tmp_path), cache_bytes_max=4 * tables[0].nbytes)
    digests = store.put_tables(tables)
    errors = []

    def reader(k):
        rng = random.Random(seed * 100 + k)
        try:
            for _ in range(300):
                i = rng.randrange(len(digests))
                assert store.get_table(digests[i]).equals(tables[i])
        except Exception as exc:  # reported below with the seed
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, f"seed={seed}: {errors[:3]}"
    stats = store.cache_stats
    assert stats["hits"] + stats["misses"] == 6 * 300, stats
    assert stats["bytes"] <= store.cache_bytes_max


# ---- listing, delete, temp files --------------------------------------------------------


def test_digests_and_bytes_on_disk_skip_temp_files(tmp_path):
    store = ChunkStore(str(tmp_path))
    digests = store.put_many([b"one", b"two", b"three"])
    assert list(store.digests()) == sorted(digests)
    assert store.bytes_on_disk() == len(b"onetwothree")
    leftover = temp_path_for(store.path_of(digests[0]))
    with open(leftover, "wb") as f:
        f.write(b"half a chunk")
    with open(os.path.join(os.path.dirname(leftover), "stray.txt"), "wb") as f:
        f.write(b"not a chunk")
    assert list(store.digests()) == sorted(digests)
    assert store.bytes_on_disk() == len(b"onetwothree")
    assert store.remove_temp_files() == 1
    assert not os.path.exists(leftover)
    assert list(ChunkStore(str(tmp_path / "nothing-here")).digests()) == []


def test_delete_removes_the_file_and_the_cached_table(tmp_path):
    io = FaultyFileIO()
    store = ChunkStore(str(tmp_path), io=io)
    digest = store.put_table(sample_table())
    store.get_table(digest)
    assert store.cache_stats["entries"] == 1
    store.delete(digest)
    assert io.calls["unlink"] == 1
    assert store.cache_stats == {**store.cache_stats, "entries": 0, "bytes": 0}
    assert not store.exists(digest) and list(store.digests()) == []
    with pytest.raises(CorruptionError, match="is missing"):
        store.get_table(digest)
    store.delete(digest)  # already gone: fine for GC
    assert store.put_table(sample_table()) == digest  # and it can be written again
    assert store.get_table(digest).equals(sample_table())


# ---- durability: fsyncs, faults, power loss ---------------------------------------------


def test_put_writes_a_temp_file_fsyncs_renames_and_fsyncs_the_directory(tmp_path):
    io = RecordingIO()
    store = ChunkStore(str(tmp_path), io=io)
    digest = store.put(b"payload")
    leaf = os.path.dirname(store.path_of(digest))
    assert io.calls["pwritev"] == 1 and io.calls["fsync"] == 1 and io.calls["replace"] == 1
    # ab/ and ab/cd/ were created, each followed by an fsync of its parent; then the leaf.
    assert io.calls["mkdir"] == 2
    assert io.dirs_fsynced == [str(tmp_path), os.path.dirname(leaf), leaf]
    io.calls.clear()
    io.dirs_fsynced.clear()
    assert store.put(b"payload") == digest  # already there: nothing written or synced
    assert io.calls == {} and io.dirs_fsynced == []


def test_put_many_fsyncs_each_distinct_directory_once_per_batch(tmp_path, monkeypatch):
    batch_max = 8
    monkeypatch.setattr(chunks_module, "CHUNK_WRITE_BATCH_MAX", batch_max)
    # Blobs that share leaf directories (ab/cd/), so directories repeat within a batch:
    # among 3,000 digests many pairs share their first four hex digits.
    by_leaf = collections.defaultdict(list)
    for n in range(3000):
        blob = n.to_bytes(4, "big")
        by_leaf[digest_of(blob)[:4]].append(blob)
    blobs = [b for group in by_leaf.values() if len(group) >= 2 for b in group[:2]][:24]
    assert len(blobs) == 24
    io = RecordingIO()
    store = ChunkStore(str(tmp_path), io=io)
    digests = store.put_many(blobs)
    leaves = [os.path.dirname(store.path_of(d)) for d in digests]
    expected = collections.Counter()
    for start in range(0, len(leaves), batch_max):
        expected.update(set(leaves[start:start + batch_max]))
    fsynced_leaves = collections.Counter(p for p in io.dirs_fsynced if p in set(leaves))
    assert fsynced_leaves == expected
    assert sum(expected.values()) < len(blobs)  # fewer directory fsyncs than files
    # Every other directory fsync follows a mkdir (making the new entry durable).
    assert len(io.dirs_fsynced) - sum(expected.values()) == io.calls["mkdir"]
    assert io.calls["fsync"] == io.calls["replace"] == io.calls["pwritev"] == len(blobs)
    assert [store.get(d) for d in digests] == blobs


def test_put_many_with_the_real_batch_size_limit(tmp_path):
    io = RecordingIO()
    store = ChunkStore(str(tmp_path), io=io)
    blobs = [i.to_bytes(4, "big") for i in range(CHUNK_WRITE_BATCH_MAX + 10)]
    digests = store.put_many(blobs)
    assert io.calls["fsync"] == len(blobs)
    leaves = [os.path.dirname(store.path_of(d)) for d in digests]
    expected = len(set(leaves[:CHUNK_WRITE_BATCH_MAX])) + len(set(leaves[CHUNK_WRITE_BATCH_MAX:]))
    assert sum(1 for p in io.dirs_fsynced if p in set(leaves)) == expected


def test_a_new_store_fsyncs_each_directory_of_chunks_found_in_place_once(tmp_path):
    # A previous process may have died between the rename and the directory fsync, so
    # the first store to rely on a file it did not write makes its directory entry durable.
    digests = ChunkStore(str(tmp_path)).put_many([b"a", b"b", b"c"])
    io = RecordingIO()
    store = ChunkStore(str(tmp_path), io=io)
    assert store.put_many([b"a", b"b", b"c", b"a"]) == digests + digests[:1]
    leaves = sorted({os.path.dirname(store.path_of(d)) for d in digests})
    assert io.dirs_fsynced == leaves
    assert io.calls.get("pwritev", 0) == 0
    store.put_many([b"a", b"b"])
    assert io.dirs_fsynced == leaves  # once per store


def test_disk_full_raises_and_leaves_no_partial_chunk(tmp_path):
    io = FaultyFileIO()
    store = ChunkStore(str(tmp_path), io=io)
    store.put(b"first")
    before = all_files(tmp_path)
    io.fail("pwritev", errno.ENOSPC)
    data = b"does not fit" * 100
    digest = digest_of(data)
    with pytest.raises(StorageFullError, match="no space left to write chunk temp file") as info:
        store.put(data)
    assert info.value.path.startswith(store.path_of(digest) + TEMP_MARKER)
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.ENOSPC
    assert not os.path.exists(store.path_of(digest))
    assert all_files(tmp_path) == before  # the temp file was removed too
    assert store.put(data) == digest  # space is back
    assert store.get(digest) == data


def test_disk_full_in_a_batch_leaves_no_partial_chunk(tmp_path):
    io = FaultyFileIO()
    store = ChunkStore(str(tmp_path), io=io)
    io.fail("pwritev", errno.ENOSPC, after=5)
    blobs = [f"blob {i}".encode() for i in range(10)]
    with pytest.raises(StorageFullError):
        store.put_many(blobs)
    assert all_files(tmp_path) == []
    assert store.put_many(blobs) == [digest_of(b) for b in blobs]


@pytest.mark.parametrize("op", ["open", "pwritev", "fsync", "replace", "fsync_dir", "mkdir"])
def test_any_failed_write_step_raises_and_hides_the_chunk(tmp_path, op):
    io = FaultyFileIO()
    store = ChunkStore(str(tmp_path), io=io)
    io.fail(op, errno.EIO)
    with pytest.raises(StorageError, match="failed to .* chunk .*(errno 5)"):
        store.put(b"payload")
    digest = digest_of(b"payload")
    assert not store.exists(digest)
    assert not any(TEMP_MARKER in f for f in all_files(tmp_path))
    assert store.put(b"payload") == digest and store.get(digest) == b"payload"


def test_chunk_survives_power_loss_after_put_returns(tmp_path):
    for seed in range(5):
        root = str(tmp_path / f"seed{seed}")
        io = FaultyFileIO(seed)
        store = ChunkStore(root, io=io)
        blobs = [random.Random(seed).randbytes(5000), b"small"]
        digests = [store.put(blobs[0])] + store.put_many(blobs[1:])
        table_digest = store.put_table(sample_table(100))
        io.crash()
        after = ChunkStore(root)
        assert [after.get(d) for d in digests] == blobs, f"seed={seed}"
        assert after.get_table(table_digest).equals(sample_table(100)), f"seed={seed}"


def test_power_loss_mid_put_leaves_only_whole_chunks(tmp_path):
    # Crash at a random write step: every chunk whose put returned survives, and every
    # chunk visible after the crash verifies (a torn write never appears under a chunk name).
    ops = ["pwritev", "fsync", "replace", "fsync_dir"]
    for seed in range(40):
        rng = random.Random(seed)
        root = str(tmp_path / f"seed{seed}")
        io = FaultyFileIO(seed)
        store = ChunkStore(root, io=io)
        acked = {}
        io.fail(rng.choice(ops), errno.EIO, after=rng.randrange(12))
        try:
            for _ in range(6):
                blobs = [rng.randbytes(rng.randint(1, 20_000)) for _ in range(rng.randint(1, 3))]
                for d, b in zip(store.put_many(blobs), blobs, strict=True):
                    acked[d] = b
        except StorageError:
            pass
        io.crash()
        after = ChunkStore(root)
        for d, b in acked.items():
            assert after.get(d) == b, f"seed={seed}: acknowledged chunk {d} lost"
        for d in after.digests():
            after.get(d)  # raises CorruptionError if a torn chunk were visible
        after.remove_temp_files()
        assert not any(TEMP_MARKER in f for f in all_files(root)), f"seed={seed}"


# ---- concurrency ------------------------------------------------------------------------


def test_threads_putting_the_same_chunks_at_once(tmp_path):
    seed = 11
    blobs = [random.Random(seed + i).randbytes(3000) for i in range(20)]
    store = ChunkStore(str(tmp_path))
    results, errors = [], []

    def writer(k):
        try:
            order = list(blobs)
            random.Random(seed * 10 + k).shuffle(order)
            results.append(dict(zip(store.put_many(order), order, strict=True)))
        except Exception as exc:  # reported below with the seed
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, f"seed={seed}: {errors[:3]}"
    expected = {digest_of(b): b for b in blobs}
    assert all(r == expected for r in results) and len(results) == 8
    assert list(store.digests()) == sorted(expected)
    assert not any(TEMP_MARKER in f for f in all_files(tmp_path))
    for d, b in expected.items():
        assert store.get(d) == b


class GatedIO(FaultyFileIO):
    """Blocks the first directory fsync of ``gated_dir`` until ``release`` is set."""

    def __init__(self, gated_dir):
        super().__init__()
        self.gated_dir = gated_dir
        self.reached = threading.Event()
        self.release = threading.Event()
        self.events = []

    def fsync_dir(self, path):
        if os.path.abspath(path) == self.gated_dir and not self.reached.is_set():
            self.reached.set()
            self.release.wait()
            super().fsync_dir(path)
            self.events.append("writer fsynced the directory")
            return
        super().fsync_dir(path)


@pytest.mark.parametrize("writer_fails", [False, True])
def test_a_put_does_not_return_before_a_concurrent_writer_made_the_chunk_durable(tmp_path, writer_fails):
    probe = ChunkStore(str(tmp_path))
    data = b"contended"
    digest = probe.put(b"warm up the directories") and digest_of(data)
    path = probe.path_of(digest)
    io = GatedIO(os.path.dirname(path))
    store = ChunkStore(str(tmp_path), io=io)
    outcomes = {}

    def put(name):
        try:
            outcomes[name] = store.put(data)
        except StorageError as exc:
            outcomes[name] = exc
        io.events.append(f"{name} returned")

    first = threading.Thread(target=put, args=("first",))
    first.start()
    assert io.reached.wait(10)
    assert os.path.exists(path)  # renamed into place, directory not yet fsynced
    if writer_fails:
        io.fail("fsync_dir", errno.EIO)
    second = threading.Thread(target=put, args=("second",))
    second.start()
    second.join(0.2)
    assert second.is_alive()  # waiting for the first writer, not trusting the file
    io.release.set()
    first.join()
    second.join()
    if writer_fails:
        assert isinstance(outcomes["first"], StorageError)
        assert outcomes["second"] == digest  # it wrote the chunk itself
        assert io.events[0] == "first returned"
    else:
        assert outcomes == {"first": digest, "second": digest}
        assert io.events[0] == "writer fsynced the directory"
    assert store.get(digest) == data
