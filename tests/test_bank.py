"""The issue's bank oracle: 4 threads x 500 snapshot transactions move money between accounts of 3 tables
(~20% touching a shared hot set, plus forced same-key rendezvous rounds), then an audit of the log proves the
total is constant at every version, every commit is exactly one transfer a thread saw succeed (losers leave
no trace, no lost updates) and replaying the transfers in version order reproduces every version's state;
write-skew tests show snapshot isolation admits write skew and serializable isolation prevents it.
Seeds 0-3 use durability="sync", 4-19 "none"; seeds 0, 1, 4, 5 run at full size and the others at 4 x 50
(UDRFLOW_BANK_FULL=1 runs all 20 at full size, ~3 minutes)."""

from __future__ import annotations

import dataclasses
import os
import random
import threading

import pyarrow as pa
import pytest

import udrflow
from udrflow._commit import Changes, decode_commit, expand_changes

TABLES = ("checking", "savings", "loans")
SCHEMA = pa.schema([("id", pa.int64()), ("balance", pa.int64())])
THREADS = 4
TX_PER_THREAD = 500              # the size: 4 threads x 500 transactions
TX_PER_THREAD_QUICK = 50
OWN_ACCOUNTS = 6                 # per thread and table: only that thread touches them
HOT_IDS = (1000, 1001)           # per table: shared by every thread
HOT_SHARE = 0.2                  # share of transactions with an end in the hot set
RENDEZVOUS_ROUNDS = 5            # per run: every thread joins a forced 4-way same-key conflict this often
RENDEZVOUS_ID = 2000             # the account (in "checking") that rendezvous rounds all write
INITIAL = 1_000
SEEDS = range(20)
SYNC_SEEDS = range(4)
FULL_SEEDS = range(20) if os.environ.get("UDRFLOW_BANK_FULL") == "1" else (0, 1, 4, 5)
BARRIER_TIMEOUT_S = 300          # only to turn a bug that strands a thread into a failure, never hit normally


def all_ids(table: str) -> list[int]:
    own = [t * 100 + k for t in range(THREADS) for k in range(OWN_ACCOUNTS)]
    return own + list(HOT_IDS) + ([RENDEZVOUS_ID] if table == "checking" else [])


@dataclasses.dataclass
class Transfer:
    thread: int
    src: tuple[str, int]
    dst: tuple[str, int]
    amount: int
    begin: int = -1
    version: int | None = None
    written: dict = dataclasses.field(default_factory=dict)  # (table, id) -> new balance
    seen: dict = dataclasses.field(default_factory=dict)     # (table, id) -> balance in the snapshot


class Bank:
    def __init__(self, db, seed: int, tx_per_thread: int) -> None:
        self.db = db
        self.seed = seed
        self.tx_per_thread = tx_per_thread
        self.rendezvous_every = tx_per_thread // RENDEZVOUS_ROUNDS
        self.lock = threading.Lock()
        self.committed: list[Transfer] = []
        self.losers: list[Transfer] = []
        self.attempts = 0
        self.rounds: list[list[Transfer]] = []  # rendezvous rounds: the 4 attempts of each
        self.barrier = threading.Barrier(THREADS, timeout=BARRIER_TIMEOUT_S)
        self.errors: list[BaseException] = []

    def balance(self, tx, account: tuple[str, int]) -> int:
        table, ident = account
        rows = [r for r in tx.read(table).to_pylist() if r["id"] == ident]
        assert len(rows) == 1, f"seed={self.seed}: account {account} appears {len(rows)} times in the snapshot"
        return rows[0]["balance"]

    def attempt(self, transfer: Transfer, *, rendezvous: bool = False) -> int:
        t = dataclasses.replace(transfer, written={}, seen={})
        with self.lock:
            self.attempts += 1
        try:
            with self.db.transaction() as tx:
                t.begin = tx.begin_version
                for account in (t.src, t.dst):
                    t.seen[account] = self.balance(tx, account)
                t.written[t.src] = t.seen[t.src] - t.amount
                t.written[t.dst] = t.seen[t.dst] + t.amount
                if rendezvous:
                    self.barrier.wait()   # every thread has begun and read: all snapshots are the same version
                by_table: dict[str, list[dict]] = {}
                for (table, ident), bal in t.written.items():
                    by_table.setdefault(table, []).append({"id": ident, "balance": bal})
                for table, rows in by_table.items():
                    tx.upsert(table, rows)
        except udrflow.TransactionConflictError:
            with self.lock:
                self.losers.append(t)
                if rendezvous:
                    self.rounds[-1].append(t)
            raise
        assert tx.version is not None, f"seed={self.seed}: a transaction that wrote rows returned no version"
        t.version = tx.version
        with self.lock:
            self.committed.append(t)
            if rendezvous:
                self.rounds[-1].append(t)
        return tx.version

    def pick(self, rng: random.Random, thread: int) -> Transfer:
        def own() -> tuple[str, int]:
            return rng.choice(TABLES), thread * 100 + rng.randrange(OWN_ACCOUNTS)

        src = own()
        if rng.random() < HOT_SHARE:
            dst = (rng.choice(TABLES), rng.choice(HOT_IDS))
        else:
            dst = own()
            while dst == src:
                dst = own()
        if rng.random() < 0.5:
            src, dst = dst, src
        return Transfer(thread, src, dst, rng.randint(1, 100))

    def worker(self, thread: int) -> None:
        rng = random.Random(self.seed * 7919 + thread)
        try:
            for n in range(self.tx_per_thread):
                if n % self.rendezvous_every == self.rendezvous_every - 1:
                    self.rendezvous(rng, thread)
                    continue
                transfer = self.pick(rng, thread)
                try:
                    if rng.random() < 0.5:
                        udrflow.retry(lambda tr=transfer: self.attempt(tr), rng=random.Random(rng.random()))
                    else:
                        self.attempt(transfer)
                except udrflow.TransactionConflictError:
                    pass
        except BaseException as exc:  # reported by run_bank's assertion
            with self.lock:
                self.errors.append(exc)
            self.barrier.abort()

    def rendezvous(self, rng: random.Random, thread: int) -> None:
        """All threads begin together, read, meet, then write the same account: exactly one may win."""
        if self.barrier.wait() == 0:
            self.rounds.append([])
        self.barrier.wait()  # the round list exists, and no thread is still committing
        transfer = Transfer(thread, ("checking", RENDEZVOUS_ID), (rng.choice(TABLES), thread * 100),
                            rng.randint(1, 100))
        try:
            self.attempt(transfer, rendezvous=True)
        except udrflow.TransactionConflictError:
            pass
        self.barrier.wait()  # nobody begins the next round before every commit of this one is done


def read_state(db, version: int | None) -> dict[tuple[str, int], int]:
    state: dict[tuple[str, int], int] = {}
    for table in TABLES:
        for row in db.read(table, version=version).to_pylist():
            key = (table, row["id"])
            assert key not in state, f"account {key} appears twice at version {version}"
            state[key] = row["balance"]
    return state


def run_bank(path, seed: int, durability: str, tx_per_thread: int) -> Bank:
    db = udrflow.open(path, durability=durability)
    try:
        for table in TABLES:
            db.create_table(table, SCHEMA, primary_key=["id"])
        with db.transaction() as tx:
            for table in TABLES:
                tx.insert(table, [{"id": i, "balance": INITIAL} for i in all_ids(table)])
        setup_version = tx.version
        assert setup_version == db.version == len(TABLES) + 1
        bank = Bank(db, seed, tx_per_thread)
        threads = [threading.Thread(target=bank.worker, args=(i,), name=f"bank-{i}") for i in range(THREADS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not bank.errors, f"seed={seed}: a bank thread failed: {bank.errors!r}"
        head, final = db.version, read_state(db, None)
        db.checkpoint()  # raises what a background checkpoint may have failed with; the audit reads through it
    finally:
        db.close()
    # Audit from a fresh open: no cache and no writer state survive, every read is a fold of the log.
    db = udrflow.open(path, durability=durability)
    try:
        assert db.version == head, f"seed={seed}: reopened at version {db.version}, closed at {head}"
        assert read_state(db, head) == final, f"seed={seed}: the final state changed across a reopen"
        audit(db, bank, seed, setup_version)
    finally:
        db.close()
    return bank


def audit(db, bank: Bank, seed: int, setup_version: int) -> None:
    head = db.version
    by_version = {t.version: t for t in bank.committed}
    msg = f"seed={seed}"

    # Every thread saw a distinct version; together they are exactly the commits after setup.
    assert len(by_version) == len(bank.committed), f"{msg}: two committed transactions share a version"
    assert sorted(by_version) == list(range(setup_version + 1, head + 1)), (
        f"{msg}: committed versions {len(by_version)} do not tile ({setup_version}, {head}]: a commit no thread "
        f"saw succeed is in the log, or one that succeeded is missing")
    assert len(bank.committed) + len(bank.losers) == bank.attempts, msg

    # Rendezvous rounds: 4 transactions with one snapshot writing one account -> exactly one wins.
    assert len(bank.rounds) == RENDEZVOUS_ROUNDS, msg
    for r, attempts in enumerate(bank.rounds):
        assert len(attempts) == THREADS, f"{msg}: rendezvous round {r} has {len(attempts)} attempts"
        assert len({a.begin for a in attempts}) == 1, f"{msg}: rendezvous round {r} began at different versions"
        winners = [a for a in attempts if a.version is not None]
        assert len(winners) == 1, f"{msg}: rendezvous round {r}: {len(winners)} of {THREADS} same-key writers won"

    # The log, version by version: each commit holds exactly its transfer's two rows (new and old values);
    # replaying the transfers on a dict gives every version's state, whose total never changes.
    model = {(table, i): INITIAL for table in TABLES for i in all_ids(table)}
    total = sum(model.values())
    assert read_state(db, setup_version) == model, f"{msg}: state after setup"
    schemas = {table: db.schema(table) for table in TABLES}
    for record in db.log.scan(setup_version + 1, head):
        v = record.version
        t = by_version[v]
        for account in (t.src, t.dst):
            assert t.seen[account] == model[account], (
                f"{msg}: version {v} committed a transfer that read {account}={t.seen[account]} but the balance "
                f"before it was {model[account]} (a lost update)")
        model[t.src] -= t.amount
        model[t.dst] += t.amount
        assert {a: model[a] for a in (t.src, t.dst)} == t.written, f"{msg}: version {v}: replay != written"
        plus_rows, minus_rows = {}, {}
        for op in decode_commit(record.payload, v).ops:
            assert isinstance(op, Changes), f"{msg}: version {v} holds a {type(op).__name__}"
            plus, minus = expand_changes(op, schemas[op.table])
            for rows, out in ((plus, plus_rows), (minus, minus_rows)):
                for row in rows.to_pylist():
                    key = (op.table, row["id"])
                    assert key not in out, f"{msg}: version {v} changes {key} twice"
                    out[key] = row["balance"]
        assert plus_rows == t.written, f"{msg}: version {v} wrote {plus_rows}, its transfer wrote {t.written}"
        assert minus_rows == t.seen, f"{msg}: version {v} retracted {minus_rows}, its transfer read {t.seen}"
        state = read_state(db, v)
        assert sum(state.values()) == total, f"{msg}: total {sum(state.values())} != {total} at version {v}"
        assert state == model, f"{msg}: db.read at version {v} differs from replaying the transfers"
    assert read_state(db, head) == model, msg


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
def test_bank_transfers_keep_every_invariant(tmp_path, seed):
    durability = "sync" if seed in SYNC_SEEDS else "none"
    tx_per_thread = TX_PER_THREAD if seed in FULL_SEEDS else TX_PER_THREAD_QUICK
    bank = run_bank(tmp_path / "bank.udr", seed, durability, tx_per_thread)
    # Contention was real: every rendezvous round forced THREADS-1 losers, and hot-set transfers add more.
    forced = RENDEZVOUS_ROUNDS * (THREADS - 1)
    assert len(bank.losers) >= forced, f"seed={seed}: {len(bank.losers)} conflicts"
    print(f"seed={seed} durability={durability} {THREADS}x{tx_per_thread}: {bank.attempts} attempts, "
          f"{len(bank.committed)} committed, {len(bank.losers)} conflicts "
          f"({len(bank.losers) / bank.attempts:.1%}; {len(bank.losers) - forced} outside rendezvous rounds)")


# ---- write skew: snapshot isolation admits it, serializable prevents it ------------------------------------

def open_pair(path):
    db = udrflow.open(path)
    db.create_table("checking", SCHEMA, primary_key=["id"])
    db.create_table("savings", SCHEMA, primary_key=["id"])
    db.insert("checking", [{"id": 1, "balance": 100}])
    db.insert("savings", [{"id": 1, "balance": 100}])
    return db


def withdraw_if_covered(tx, table: str, amount: int) -> None:
    """The rule: a withdrawal is allowed when checking + savings stays >= 0 (as this transaction sees it)."""
    balances = {t: tx.read(t).to_pylist()[0]["balance"] for t in ("checking", "savings")}
    assert sum(balances.values()) - amount >= 0
    tx.upsert(table, [{"id": 1, "balance": balances[table] - amount}])


def total(db, version=None) -> int:
    return sum(db.read(t, version=version).to_pylist()[0]["balance"] for t in ("checking", "savings"))


def test_snapshot_isolation_admits_write_skew(tmp_path):
    db = open_pair(tmp_path / "skew.udr")
    try:
        a = db.transaction("snapshot")
        b = db.transaction("snapshot")
        withdraw_if_covered(a, "checking", 150)
        withdraw_if_covered(b, "savings", 150)
        va = a.commit()
        vb = b.commit()  # disjoint keys: no write-write conflict, so both commit
        assert (va, vb) == (5, 6)
        assert total(db) == -100, "snapshot isolation: both withdrawals commit and the rule is broken"
    finally:
        db.close()


@pytest.mark.parametrize("order", ["a_first", "b_first"])
def test_serializable_isolation_prevents_write_skew(tmp_path, order):
    db = open_pair(tmp_path / "skew.udr")
    try:
        a = db.transaction("serializable")
        b = db.transaction("serializable")
        withdraw_if_covered(a, "checking", 150)
        withdraw_if_covered(b, "savings", 150)
        first, second = (a, b) if order == "a_first" else (b, a)
        v = first.commit()
        with pytest.raises(udrflow.TransactionConflictError) as info:
            second.commit()
        assert info.value.table == ("checking" if first is a else "savings")
        assert info.value.version == v
        assert db.version == v, "the loser left a commit behind"
        assert total(db) == 50
        # Retried, the loser sees the first withdrawal and the rule refuses it.
        with pytest.raises(AssertionError), db.transaction("serializable") as c:
            withdraw_if_covered(c, "savings", 150)
        assert db.version == v
    finally:
        db.close()


def test_serializable_write_skew_under_threads(tmp_path):
    """Two threads per round, meeting after their reads: under serializable at most one withdrawal
    per round commits, so the rule (total >= 0) holds at every version."""
    db = open_pair(tmp_path / "skew.udr")
    barrier = threading.Barrier(2, timeout=BARRIER_TIMEOUT_S)
    outcomes: list[str] = []
    errors: list[BaseException] = []

    def withdraw(table: str) -> None:
        try:
            with db.transaction("serializable") as tx:
                balances = {t: tx.read(t).to_pylist()[0]["balance"] for t in ("checking", "savings")}
                ok = sum(balances.values()) - 30 >= 0
                barrier.wait()
                if ok:
                    tx.upsert(table, [{"id": 1, "balance": balances[table] - 30}])
            outcomes.append("committed" if ok else "refused")
        except udrflow.TransactionConflictError:
            outcomes.append("conflict")
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    try:
        for _ in range(10):
            threads = [threading.Thread(target=withdraw, args=(t,)) for t in ("checking", "savings")]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
        assert not errors, errors
        assert outcomes.count("conflict") >= 1
        for v in range(4, db.version + 1):
            assert total(db, v) >= 0, f"write skew at version {v}: total {total(db, v)}"
        assert total(db) == 200 - 30 * outcomes.count("committed") >= 0
    finally:
        db.close()
