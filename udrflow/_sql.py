"""Batch SQL at any log position, on DataFusion.

``db.sql(query, version=, branch=, params=)`` runs one read-only query and returns a
pyarrow.Table; ``db.sql_df(...)`` returns the DataFusion DataFrame instead (lazy: it runs
when collected). A query goes through six steps:

1. **Tokenize** (:func:`tokenize`): strings (``'...'`` with ``''`` escapes, ``E'...'``,
   ``$$...$$``), quoted identifiers (``"..."``, backticks), ``--`` and nested ``/* */``
   comments, numbers and parameters (``$1``, ``$name``). A table name inside a string or
   a comment is therefore never taken for a table reference.
2. **Check the statement**: exactly one, and a query: its first keyword, after the common
   table expressions of WITH and after EXPLAIN, is SELECT or VALUES. Anything else
   (INSERT, DDL, COPY, SET, ...) raises SqlReadOnlyError before anything runs; DataFusion
   also runs with DML, DDL and statements disabled, as a second guard.
3. **Find table references** (:func:`find_table_refs`): a name in a FROM position (after
   FROM, JOIN, or a comma of a FROM list at the same parenthesis depth), optionally
   followed by ``@branch`` and by ``AS OF VERSION n`` or ``AS OF TIMESTAMP '...'``.
4. **Resolve and register**: each reference gets a version (its own AS OF, else the
   query's ``version=``, else the head, read once so that every table of a query sees the
   same commit) and a snapshot from the table engine, whose snapshot cache and
   content-addressed chunk cache are shared by every query, version and handle of the
   database. Snapshots are registered in a fresh DataFusion SessionContext as record
   batches: the Arrow buffers cross over through the C data interface, never copied.
5. **Rewrite**: only references with AS OF or ``@branch`` are rewritten, to a registered
   name that no table can have (``"orders AS OF VERSION 3" AS orders``). Plain references
   keep their text and are registered under their own name, so DataFusion's messages
   name tables as the user wrote them.
6. **Run** on DataFusion, with parameters bound after parsing (``param_values``): values
   never become SQL text. DataFusion's errors become :class:`SqlError` /
   :class:`SqlSyntaxError` keeping DataFusion's text, with the position mapped back to
   the original query.

Per-query overhead is a tokenizer pass over the text (a few tens of microseconds for a
TPC-H query), a cache lookup per table and a SessionContext (~0.2 ms).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import threading
import weakref
from dataclasses import dataclass
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc

from udrflow.errors import (
    BranchNotFoundError,
    SqlError,
    SqlReadOnlyError,
    SqlSyntaxError,
    TableNotFoundError,
    UdrflowError,
    UsageError,
    VersionNotFoundError,
)

CHANGELOG = "__changelog"
# Snapshot batches are cut to at most this many rows before registration (a zero-copy
# slice): DataFusion parallelizes a scan by batches, so one huge batch would run on one core.
BATCH_ROWS_MAX = 64 * 1024
# The __changelog of the head is kept per branch (and extended commit by commit) up to this
# size; above it every query rebuilds it from the log.
CHANGELOG_CACHE_BYTES_MAX = 256 * 1024 * 1024
# ... and grown commit by commit, it is compacted into one chunk when it has more than this
# many (each chunk becomes a batch for DataFusion, and many tiny batches scan slowly).
CHANGELOG_CHUNKS_MAX = 64
QUERY_CHARS_MAX = 1024 * 1024  # a query longer than this is refused (it is SQL text, not data)


# ---- tokens ------------------------------------------------------------------------------


class Token(NamedTuple):
    kind: str   # ident | qident | string | number | param | op | eof
    text: str   # the source text of the token
    start: int  # offsets in the query
    end: int


_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<line_comment>--[^\n]*)
  | (?P<block_comment>/\*)
  | (?P<string>[eE]'[^'\\]*(?:(?:\\.|'')[^'\\]*)*'
              | (?:[xXbBnNrR]|[uU]&)?'[^']*(?:''[^']*)*')
  | (?P<qident>"[^"]*(?:""[^"]*)*"|`[^`]*(?:``[^`]*)*`)
  | (?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<dollar>\$)
  | (?P<ident>[^\W\d][\w$\#]*)
  | (?P<op>::|<=>|<=|>=|<>|!=|==|\|\||->>|->|\#>>|\#>|@>|<@|@@|=>|!~~\*|!~~|~~\*|~~|!~\*|!~|~\*|<<|>>|.)
""", re.VERBOSE | re.DOTALL)
_COMMENT_EDGE = re.compile(r"/\*|\*/")
_DOLLAR_QUOTE = re.compile(r"\$(?:[^\W\d]\w*)?\$")
_PARAM = re.compile(r"\$(?:\d+|[^\W\d]\w*)")


def tokenize(query: str) -> list[Token]:
    """The significant tokens of ``query`` (no whitespace or comments), then an ``eof`` token.

    >>> [t.text for t in tokenize("SELECT 'a -- b' FROM t /* orders */ WHERE x = $1")]
    ['SELECT', "'a -- b'", 'FROM', 't', 'WHERE', 'x', '=', '$1', '']
    """
    tokens: list[Token] = []
    pos, n = 0, len(query)
    match = _TOKEN.match
    while pos < n:
        m = match(query, pos)
        kind = m.lastgroup
        end = m.end()
        if kind == "ws" or kind == "line_comment":
            pos = end
            continue
        if kind == "block_comment":
            pos = _skip_block_comment(query, pos)
            continue
        if kind == "dollar":
            quote = _DOLLAR_QUOTE.match(query, pos)
            if quote is not None:
                close = query.find(quote.group(), quote.end())
                if close < 0:
                    raise _syntax(f"unterminated dollar-quoted string {quote.group()}...{quote.group()}", query, pos)
                kind, end = "string", close + len(quote.group())
            else:
                param = _PARAM.match(query, pos)
                kind, end = ("param", param.end()) if param is not None else ("op", end)
        elif kind == "op" and m.group() in ("'", '"', "`"):
            what = "string literal" if m.group() == "'" else "quoted identifier"
            raise _syntax(f"unterminated {what}: the {m.group()} is never closed", query, pos)
        tokens.append(Token(kind, query[pos:end], pos, end))
        pos = end
    tokens.append(Token("eof", "", n, n))
    return tokens


def _skip_block_comment(query: str, pos: int) -> int:
    """The end of the (possibly nested, as in DataFusion) block comment starting at ``pos``."""
    depth, i = 0, pos
    while True:
        m = _COMMENT_EDGE.search(query, i)
        if m is None:
            raise _syntax("unterminated /* comment", query, pos)
        depth += 1 if m.group() == "/*" else -1
        i = m.end()
        if depth == 0:
            return i


def _at(tokens: list[Token], i: int) -> Token:
    """``tokens[i]``, or the final ``eof`` token past the end (lookahead never overruns)."""
    return tokens[i] if i < len(tokens) else tokens[-1]


def _shown(t: Token) -> str:
    return "the end of the query" if t.kind == "eof" else repr(t.text)


def _word(t: Token) -> str:
    """The keyword an unquoted identifier token spells (upper case), else ''."""
    return t.text.upper() if t.kind == "ident" else ""


def _is_op(t: Token, text: str) -> bool:
    return t.kind == "op" and t.text == text


def ident_name(t: Token) -> str:
    """An identifier as DataFusion resolves it: unquoted ones fold to lower case."""
    if t.kind == "qident":
        q = t.text[0]
        return t.text[1:-1].replace(q + q, q)
    return t.text.lower()


def _string_value(t: Token) -> str:
    text = t.text
    if text[0] in "eE":
        return re.sub(r"\\(.)", r"\1", text[2:-1]).replace("''", "'")
    return text[text.index("'") + 1:-1].replace("''", "'")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def position(query: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of ``offset`` in ``query``."""
    line = query.count("\n", 0, offset) + 1
    return line, offset - (query.rfind("\n", 0, offset) + 1) + 1


def _where(query: str, offset: int) -> str:
    line, column = position(query, offset)
    return f"at line {line}, column {column} of the query"


def _syntax(message: str, query: str, offset: int) -> SqlSyntaxError:
    line, column = position(query, offset)
    return SqlSyntaxError(f"{message}: {_where(query, offset)}", query, line, column)


# ---- statements --------------------------------------------------------------------------

_QUERY_WORDS = ("SELECT", "VALUES")
_STATEMENT_WORDS = frozenset("""
    INSERT UPDATE DELETE MERGE UPSERT REPLACE CREATE DROP ALTER TRUNCATE RENAME COPY UNLOAD LOAD
    SET RESET PREPARE EXECUTE DEALLOCATE BEGIN START COMMIT ROLLBACK ABORT END SAVEPOINT RELEASE
    GRANT REVOKE DENY VACUUM ANALYZE OPTIMIZE REFRESH CACHE UNCACHE INSTALL ATTACH DETACH USE SHOW
    DESCRIBE DESC CALL KILL LOCK UNLOCK COMMENT PRAGMA DECLARE FETCH CLOSE OPEN LISTEN NOTIFY
    UNLISTEN DISCARD EXPORT IMPORT MSCK FLUSH
""".split())


def match_parens(tokens: list[Token], query: str) -> dict[int, int]:
    """Token index of each parenthesis -> index of its partner."""
    stack: list[int] = []
    partner: dict[int, int] = {}
    for i, t in enumerate(tokens):
        if t.kind != "op":
            continue
        if t.text == "(":
            stack.append(i)
        elif t.text == ")":
            if not stack:
                raise _syntax("unbalanced parentheses: this ')' closes nothing", query, t.start)
            j = stack.pop()
            partner[i], partner[j] = j, i
    if stack:
        raise _syntax("unbalanced parentheses: this '(' is never closed", query, tokens[stack[-1]].start)
    return partner


def check_read_only(tokens: list[Token], partner: dict[int, int], query: str) -> None:
    """Raise unless ``tokens`` are exactly one query (SELECT / VALUES, possibly after WITH
    or EXPLAIN). The kind comes from tokens, so text in strings or comments never counts."""
    starts, i = [], 0
    while tokens[i].kind != "eof":
        if _is_op(tokens[i], ";"):
            i += 1
            continue
        starts.append(i)
        while tokens[i].kind != "eof" and not _is_op(tokens[i], ";"):
            i = partner[i] + 1 if _is_op(tokens[i], "(") else i + 1  # a ';' inside parentheses ends nothing
    if not starts:
        raise _syntax("the query is empty: expected SELECT, VALUES, WITH or EXPLAIN", query, 0)
    for s in starts:
        k = _deciding_token(tokens, s, partner, query)
        _check_query_word(tokens[k], query)
    if len(starts) > 1:
        raise _syntax("expected one statement per query, found a second one", query, tokens[starts[1]].start)


def _check_query_word(t: Token, query: str) -> None:
    w = _word(t)
    if w in _QUERY_WORDS:
        return
    if w in _STATEMENT_WORDS:
        line, column = position(query, t.start)
        raise SqlReadOnlyError(
            f"udrflow SQL only reads: expected a query (SELECT, VALUES, WITH ... SELECT or EXPLAIN), got the "
            f"statement {t.text.upper()} {_where(query, t.start)}; change tables with db.insert, db.upsert, "
            f"db.delete or a transaction", query, line, column)
    raise _syntax(f"expected SELECT, VALUES, WITH or EXPLAIN, got {_shown(t)}", query, t.start)


def _deciding_token(tokens: list[Token], i: int, partner: dict[int, int], query: str) -> int:
    """Index of the keyword that decides what the statement starting at ``i`` does."""
    while _is_op(tokens[i], "("):
        i += 1
    w = _word(tokens[i])
    if w == "WITH":
        i += 1
        if _word(tokens[i]) == "RECURSIVE":
            i += 1
        while True:
            if tokens[i].kind not in ("ident", "qident"):
                raise _syntax(f"expected the name of a common table expression after WITH, got "
                              f"{_shown(tokens[i])}", query, tokens[i].start)
            i += 1
            if _is_op(tokens[i], "("):
                i = partner[i] + 1
            if _word(tokens[i]) != "AS":
                raise _syntax(f"expected AS in the common table expression, got {_shown(tokens[i])}", query,
                              tokens[i].start)
            i += 1
            if _word(tokens[i]) == "NOT":
                i += 1
            if _word(tokens[i]) == "MATERIALIZED":
                i += 1
            if not _is_op(tokens[i], "("):
                raise _syntax(f"expected '(' and a query after AS, got {_shown(tokens[i])}", query,
                              tokens[i].start)
            # The body of a common table expression must be a query too (Postgres allows
            # WITH d AS (DELETE ... RETURNING ...)).
            _check_query_word(tokens[_deciding_token(tokens, i + 1, partner, query)], query)
            i = partner[i] + 1
            if not _is_op(tokens[i], ","):
                break
            i += 1
        return _deciding_token(tokens, i, partner, query)
    if w == "EXPLAIN":
        i += 1
        while _word(tokens[i]) in ("ANALYZE", "VERBOSE"):
            i += 1
        if _word(tokens[i]) == "FORMAT":
            i = min(i + 2, len(tokens) - 1)
        return _deciding_token(tokens, i, partner, query)
    return i


# ---- table references ----------------------------------------------------------------------

# Keywords that may follow a table in a FROM clause and are not an alias of it.
_NOT_ALIAS = frozenset("""
    WHERE GROUP HAVING ORDER LIMIT OFFSET FETCH UNION EXCEPT INTERSECT MINUS WINDOW QUALIFY ON USING
    JOIN INNER LEFT RIGHT FULL OUTER CROSS NATURAL SEMI ANTI ASOF LATERAL TABLESAMPLE PIVOT UNPIVOT
    SELECT FROM WITH FOR SORT CLUSTER DISTRIBUTE PARTITION SETTINGS FORMAT END INTO RETURNING SET
    EXPLAIN ANALYZE START CONNECT PREWHERE SAMPLE MATCH_RECOGNIZE GLOBAL VALUES AS
""".split())
# Keywords that end a FROM list at their parenthesis depth.
_FROM_ENDS = frozenset("WHERE GROUP HAVING ORDER LIMIT OFFSET FETCH UNION EXCEPT INTERSECT MINUS WINDOW "
                       "QUALIFY SELECT VALUES".split())
_DEFAULT_SCHEMAS = (["public"], ["datafusion", "public"])


@dataclass
class TableRef:
    """One table reference: ``name[@branch] [AS OF VERSION n | AS OF TIMESTAMP '...']``."""

    name: str                     # as DataFusion resolves the identifier (unquoted -> lower case)
    quoted: bool
    first: int                    # token index of the name (its first part, if qualified)
    name_end: int                 # token index after the name
    end: int                      # token index after the whole reference
    branch: str | None = None
    branch_token: Token | None = None
    as_of: str | None = None      # "VERSION" | "TIMESTAMP"
    as_of_value: Token | None = None
    has_alias: bool = False


def find_table_refs(tokens: list[Token], partner: dict[int, int], query: str) -> tuple[list[TableRef], set[str]]:
    """The table references of a query, and the names of its common table expressions."""
    refs: list[TableRef] = []
    from_parens: set[int] = set()  # '(' in a table position: a subquery or a parenthesized join
    # Per parenthesis depth: [a SELECT was seen at this depth, inside a FROM list]. FROM only
    # opens a FROM list after a SELECT at the same depth, so EXTRACT(YEAR FROM d) and
    # SUBSTRING(s FROM 1) (their own depth, no SELECT) are not mistaken for one.
    frames: list[list[bool]] = [[False, False]]

    def table_position(j: int) -> int:
        t = tokens[j]
        if _is_op(t, "("):
            from_parens.add(j)
            return j
        if _word(t) in ("SELECT", "WITH", "VALUES", "LATERAL"):
            return j if _word(t) != "LATERAL" else j + 1  # a subquery, not a table
        if t.kind not in ("ident", "qident"):
            return j
        parts, k = [t], j + 1
        while _is_op(tokens[k], ".") and tokens[k + 1].kind in ("ident", "qident"):
            parts.append(tokens[k + 1])
            k += 2
        if _is_op(tokens[k], "("):
            return k  # a table function such as generate_series(1, 3)
        if len(parts) > 1 and [ident_name(p) for p in parts[:-1]] not in _DEFAULT_SCHEMAS:
            return k  # another catalog or schema (information_schema...): not ours
        ref = TableRef(ident_name(parts[-1]), parts[-1].kind == "qident", j, k, k)
        if _is_op(tokens[k], "@"):
            if tokens[k + 1].kind not in ("ident", "qident"):
                raise _syntax(f"expected a branch name after '@', got {_shown(tokens[k + 1])}", query,
                              tokens[k + 1].start)
            ref.branch, ref.branch_token = ident_name(tokens[k + 1]), tokens[k + 1]
            k += 2
        if _word(tokens[k]) == "AS" and _word(tokens[k + 1]) == "OF":
            kind, value = _word(_at(tokens, k + 2)), _at(tokens, k + 3)
            if kind == "VERSION":
                if not (value.kind == "param" or (value.kind == "number" and value.text.isdigit())):
                    raise _syntax(f"AS OF VERSION expects a version (an integer >= 0) or a parameter, got "
                                  f"{_shown(value)}", query, value.start)
            elif kind == "TIMESTAMP":
                if not (value.kind == "param" or (value.kind == "string" and value.text[0] in "'eEnN")):
                    raise _syntax(f"AS OF TIMESTAMP expects a quoted time such as '2026-01-31 12:00:00' (naive "
                                  f"times are UTC) or a parameter, got {_shown(value)}", query, value.start)
            else:
                got = _at(tokens, k + 2)
                raise _syntax(f"expected VERSION or TIMESTAMP after AS OF, got {_shown(got)}", query, got.start)
            ref.as_of, ref.as_of_value = kind, value
            k += 4
        ref.end = k
        after = tokens[k]
        ref.has_alias = after.kind == "qident" or (after.kind == "ident" and (
            _word(after) == "AS" or _word(after) not in _NOT_ALIAS))
        refs.append(ref)
        return k

    i, n = 0, len(tokens) - 1
    while i < n:
        t = tokens[i]
        if t.kind == "op" and t.text in ("(", ")", ","):
            if t.text == "(":
                frames.append([False, i in from_parens])
                i = table_position(i + 1) if i in from_parens else i + 1
                continue
            if t.text == ")":
                if len(frames) > 1:
                    frames.pop()
            elif frames[-1][1]:
                i = table_position(i + 1)
                continue
            i += 1
            continue
        frame, w = frames[-1], _word(t)
        if w == "SELECT":
            frame[0], frame[1] = True, False
        elif w == "FROM" and frame[0] and _word(tokens[i - 1]) != "DISTINCT":  # not IS [NOT] DISTINCT FROM
            frame[1] = True
            i = table_position(i + 1)
            continue
        elif w == "JOIN" and frame[1]:
            i = table_position(i + 1)
            continue
        elif w in _FROM_ENDS:
            frame[1] = False
        i += 1

    # AS OF anywhere else (after a subquery, in a select list) is a mistake: say so here
    # rather than let DataFusion read it as an alias named "of".
    inside = set()
    for ref in refs:
        inside.update(range(ref.first, ref.end))
    for i in range(n - 2):
        if _word(tokens[i]) == "AS" and _word(tokens[i + 1]) == "OF" and i not in inside \
                and _word(tokens[i + 2]) in ("VERSION", "TIMESTAMP"):
            raise _syntax(f"AS OF {_word(tokens[i + 2])} must follow a table name in FROM or JOIN", query,
                          tokens[i].start)
    return refs, _cte_names(tokens, partner)


def _cte_names(tokens: list[Token], partner: dict[int, int]) -> set[str]:
    """Names defined by WITH in the query (``name [(columns)] AS [NOT] [MATERIALIZED] (``)."""
    names = set()
    for i in range(len(tokens) - 3):
        if not (_word(tokens[i]) in ("WITH", "RECURSIVE") or _is_op(tokens[i], ",")):
            continue
        t = tokens[i + 1]
        if t.kind not in ("ident", "qident"):
            continue
        k = i + 2
        if _is_op(tokens[k], "("):
            k = partner[k] + 1
        if _word(tokens[k]) != "AS":
            continue
        k += 1
        while _word(tokens[k]) in ("NOT", "MATERIALIZED"):
            k += 1
        if _is_op(tokens[k], "("):
            names.add(ident_name(t))
    return names


# ---- planning: resolve, register, rewrite --------------------------------------------------


@dataclass
class Plan:
    """A query ready for DataFusion."""

    query: str                          # as the user wrote it
    sql: str                            # rewritten: no AS OF / @branch left
    version: int                        # the version of references without their own AS OF
    tables: dict[str, pa.Table]         # registered name -> snapshot
    params: dict[str, pa.Scalar]        # placeholder name (no '$') -> value, for DataFusion
    edits: list[tuple[int, int, int, int]]  # (new start, new end, old start, old end) of each rewrite
    tokens: list[Token]

    def original_offset(self, offset: int) -> int:
        """Map an offset in ``sql`` back to ``query``."""
        shift = 0
        for new_start, new_end, old_start, old_end in self.edits:
            if offset < new_start:
                break
            if offset < new_end:
                return old_start
            shift = old_end - new_end
        return offset + shift


def plan(db, query: str, version=None, branch: str | None = None, params=None) -> Plan:
    """Tokenize, check, resolve and rewrite ``query`` (steps 1-5 of the module docstring)."""
    if not isinstance(query, str):
        raise UsageError(f"a SQL query must be a str: got {type(query).__name__}")
    if len(query) > QUERY_CHARS_MAX:
        raise UsageError(f"a SQL query must be at most {QUERY_CHARS_MAX} characters: got {len(query)} "
                         f"(pass data as params, or load it into a table)")
    engines: dict[str, object] = {}

    def engine_of(name: str, where: str | None):
        eng = engines.get(name)
        if eng is None:
            try:
                eng = db._store.engine(name) if name != db.branch else db._engine()
            except BranchNotFoundError as exc:
                raise BranchNotFoundError(f"{exc}" + (f": {where}" if where else "")) from None
            if db.readonly:
                eng.refresh()
            engines[name] = eng
        return eng

    default_branch = str(branch) if branch is not None else str(db.branch)
    engine = engine_of(default_branch, None)
    query_version = engine.resolve_version(db._version_arg(version))
    tokens = tokenize(query)
    partner = match_parens(tokens, query)
    check_read_only(tokens, partner, query)
    refs, ctes = find_table_refs(tokens, partner, query)
    given = _check_params(params, tokens, query)
    # Parameters only used in AS OF are resolved here; the rest are bound by DataFusion.
    as_of_tokens = {ref.as_of_value.start for ref in refs if ref.as_of}
    for_datafusion = {t.text[1:] for t in tokens if t.kind == "param" and t.start not in as_of_tokens}
    names_at: dict[int, set[str]] = {}
    tables: dict[str, pa.Table] = {}
    replacements: list[tuple[int, int, str]] = []
    for ref in refs:
        at = tokens[ref.first].start
        b = default_branch if ref.branch is None else ref.branch
        eng = engine_of(b, None if ref.branch is None else _where(query, ref.branch_token.start))
        other = b != default_branch
        if ref.as_of is not None:
            v = _as_of_version(db, eng, ref, given, query)
        else:
            v = eng.log.version if other else query_version
        if (b, v) not in names_at:
            names_at[(b, v)] = set(eng.names(v))
        names_v = names_at[(b, v)]
        target = CHANGELOG if ref.name == CHANGELOG else _table_name(ref, names_v)
        if target is None:
            if ref.as_of is None and ref.branch is None and ref.name in ctes:
                continue  # a common table expression, not a table
            known = ", ".join(sorted(names_v)) or "none"
            raise TableNotFoundError(f"table {ref.name!r} does not exist at version {v} of branch {b!r} (tables "
                                     f"then: {known}): {_where(query, at)}")
        if ref.as_of is None and not other:
            registered = ref.name
            if ref.branch is not None:  # name@<the open branch>: the same as the plain name
                replacements.append((at, tokens[ref.end - 1].end, query[at:tokens[ref.name_end - 1].end]))
        else:
            registered = f"{target}@{b} AS OF VERSION {v}" if other else f"{target} AS OF VERSION {v}"
            alias = "" if ref.has_alias else f" AS {_quote(ref.name)}"
            replacements.append((at, tokens[ref.end - 1].end, _quote(registered) + alias))
        if registered not in tables:
            tables[registered] = _snapshot(db, eng, target, v, query, at)
    sql, edits = _rewrite(query, replacements)
    values = {name: value for name, value in given.items() if name in for_datafusion}
    return Plan(query, sql, query_version, tables, {k: _scalar(k, v) for k, v in values.items()}, edits, tokens)


def _table_name(ref: TableRef, names: set[str]) -> str | None:
    if ref.name in names:
        return ref.name
    if not ref.quoted:
        # Unquoted names fold to lower case in SQL, but udrflow names are case-sensitive:
        # FROM Orders finds a table named "Orders" when that is the only spelling that fits.
        fits = [n for n in names if n.lower() == ref.name]
        if len(fits) == 1:
            return fits[0]
    return None


def _as_of_version(db, engine, ref: TableRef, given: dict, query: str) -> int:
    value = ref.as_of_value
    where = _where(query, value.start)
    raw = given[value.text[1:]] if value.kind == "param" else None
    try:
        if ref.as_of == "VERSION":
            if value.kind == "param":
                if not isinstance(raw, int) or isinstance(raw, bool):
                    raise UsageError(f"parameter {value.text} of AS OF VERSION must be an int: got "
                                     f"{type(raw).__name__} {raw!r}")
                return engine.resolve_version(raw)
            return engine.resolve_version(int(value.text))
        if value.kind == "param":
            when = raw
            if isinstance(when, str):
                when = _parse_time(when, value, query)
            elif isinstance(when, dt.date) and not isinstance(when, dt.datetime):
                when = dt.datetime.combine(when, dt.time())
            elif not isinstance(when, dt.datetime):
                raise UsageError(f"parameter {value.text} of AS OF TIMESTAMP must be a datetime, date or ISO "
                                 f"string: got {type(raw).__name__} {raw!r}")
        else:
            when = _parse_time(_string_value(value), value, query)
        return engine.resolve_version(db._version_arg(when))
    except (VersionNotFoundError, UsageError) as exc:
        raise type(exc)(f"{exc}: {where}") from None


def _parse_time(text: str, token: Token, query: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise _syntax(f"AS OF TIMESTAMP expects an ISO time such as '2026-01-31 12:00:00' or "
                      f"'2026-01-31T12:00:00+02:00', got {text!r}", query, token.start) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _snapshot(db, engine, name: str, version: int, query: str, at: int) -> pa.Table:
    try:
        if name == CHANGELOG:
            return _changelog(db, engine, version)
        return engine.read(name, version)
    except (TableNotFoundError, VersionNotFoundError) as exc:
        raise type(exc)(f"{exc}: {_where(query, at)}") from None


def _rewrite(query: str, replacements: list[tuple[int, int, str]]) -> tuple[str, list]:
    out, edits, pos, shift = [], [], 0, 0
    for start, end, text in sorted(replacements):
        out.append(query[pos:start])
        new_start = start + shift
        out.append(text)
        edits.append((new_start, new_start + len(text), start, end))
        shift += len(text) - (end - start)
        pos = end
    out.append(query[pos:])
    return "".join(out), edits


# ---- parameters ------------------------------------------------------------------------------


def _check_params(params, tokens: list[Token], query: str) -> dict[str, object]:
    """Parameters by name (``$1`` -> "1"), checked against the placeholders the query uses."""
    used: dict[str, Token] = {}
    for t in tokens:
        if t.kind == "param":
            used.setdefault(t.text[1:], t)
    if params is None:
        given: dict[str, object] = {}
    elif isinstance(params, dict):
        given = {}
        for key, value in params.items():
            if not isinstance(key, str):
                raise UsageError(f"named SQL parameters need str names: got {key!r}")
            given[key[1:] if key.startswith("$") else key] = value
    elif isinstance(params, (list, tuple)):
        given = {str(i): value for i, value in enumerate(params, 1)}
    else:
        raise UsageError(f"params must be a list/tuple (for $1, $2, ...) or a dict (for $name): got "
                         f"{type(params).__name__}")
    missing = [t for name, t in used.items() if name not in given]
    if missing:
        t = missing[0]
        line, column = position(query, t.start)
        supplied = ", ".join("$" + k for k in given) or "none"
        raise SqlError(f"no value for parameter {t.text} {_where(query, t.start)} (params given: {supplied})",
                       query, line, column)
    unused = [name for name in given if name not in used]
    if unused:
        raise SqlError(f"params {', '.join('$' + k for k in unused)} are not used by the query (it uses: "
                       f"{', '.join('$' + k for k in used) or 'none'})", query)
    return given


def _scalar(name: str, value) -> pa.Scalar:
    if isinstance(value, pa.Scalar):
        return value
    try:
        return pa.scalar(value)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise UsageError(f"parameter ${name}: cannot use a {type(value).__name__} as an SQL value "
                         f"({exc})") from None


# ---- __changelog ------------------------------------------------------------------------------

_changelogs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # engine -> (version_max, table)
_changelogs_lock = threading.Lock()


def _changelog(db, engine, version: int) -> pa.Table:
    """``__changelog`` as of ``version``: every row change in the log up to it (the log from
    ``since`` on: what gc removed is gone). The head's table is kept and extended by the
    commits after it, so a query after each commit reads only the new commits."""
    from udrflow._changefeed import changelog_table

    floor = max(engine.log.since - 1, 0)
    with _changelogs_lock:
        cached = _changelogs.get(engine)
    usable = cached is not None and cached[0] >= floor  # else gc removed what the cache continues from
    if usable and cached[0] <= version:
        upto, table = cached
        if upto < version:
            more = changelog_table(db, version, version_min=upto, engine=engine)
            if more.num_rows:
                table = pa.concat_tables([table, more])
                if table.column(0).num_chunks > CHANGELOG_CHUNKS_MAX:
                    table = table.combine_chunks()
    elif usable:
        table = cached[1]
        table = table.filter(pc.less_equal(table.column("version"), version))
        upto = -1  # an older version: not kept
    else:
        table = changelog_table(db, version, version_min=floor, engine=engine)
        upto = version
    if upto >= 0:
        with _changelogs_lock:
            if table.nbytes <= CHANGELOG_CACHE_BYTES_MAX:
                _changelogs[engine] = (version, table)
            else:
                _changelogs.pop(engine, None)
    if floor > 0 and table.num_rows and pc.min(table.column("version")).as_py() <= floor:
        table = table.filter(pc.greater(table.column("version"), floor))  # gc moved since forward
    return table


# ---- running on DataFusion --------------------------------------------------------------------

_PARTITIONS = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def partitions(table: pa.Table, count: int = _PARTITIONS) -> list[list[pa.RecordBatch]]:
    """``table``'s batches (sliced to at most BATCH_ROWS_MAX rows, zero-copy) in ``count``
    partitions of about equal rows, for DataFusion to scan in parallel."""
    batches: list[pa.RecordBatch] = []
    for batch in table.to_batches():
        rows = batch.num_rows
        if rows > BATCH_ROWS_MAX:
            batches.extend(batch.slice(o, BATCH_ROWS_MAX) for o in range(0, rows, BATCH_ROWS_MAX))
        elif rows:
            batches.append(batch)
    if not batches:
        return [[pa.RecordBatch.from_pylist([], schema=table.schema)]]
    parts: list[list[pa.RecordBatch]] = [[] for _ in range(min(count, len(batches)))]
    share, filled, p = table.num_rows / len(parts), 0, 0
    for batch in batches:
        if filled >= share * (p + 1) and p + 1 < len(parts):
            p += 1
        parts[p].append(batch)
        filled += batch.num_rows
    return [part for part in parts if part]


def _config():
    import datafusion

    return datafusion.SessionConfig().with_target_partitions(_PARTITIONS).with_information_schema(False)


# DataFusion table providers (in-memory tables over a snapshot's batches), one per snapshot
# object and living as long as it does: the engine's snapshot cache returns the same
# pa.Table for the same (table, version), so a query registers a cached provider in
# microseconds instead of exporting every batch again (~15 ms for TPC-H SF1's lineitem).
# The weak reference ties the provider's lifetime (and the memory it pins) to the
# snapshot's, so this adds no cache policy of its own.
_providers: dict[int, tuple[weakref.ref, object]] = {}
_providers_lock = threading.RLock()  # RLock: a weakref callback may run inside the lock (GC)


def _provider(table: pa.Table):
    key = id(table)
    with _providers_lock:
        entry = _providers.get(key)
        if entry is not None and entry[0]() is table:
            return entry[1]
    import datafusion

    maker = datafusion.SessionContext(_config())
    maker.register_record_batches("snapshot", partitions(table))
    provider = maker.catalog().schema().table("snapshot")

    def forget(ref: weakref.ref, key: int = key) -> None:
        with _providers_lock:
            if _providers.get(key, (None,))[0] is ref:
                del _providers[key]

    with _providers_lock:
        _providers[key] = (weakref.ref(table, forget), provider)
    return provider


def _context(tables: dict[str, pa.Table]):
    import datafusion

    ctx = datafusion.SessionContext(_config())
    for name, table in tables.items():
        ctx.register_table(_quote(name), _provider(table))
    return ctx


def _read_only_options():
    from datafusion import SQLOptions

    return SQLOptions().with_allow_ddl(False).with_allow_dml(False).with_allow_statements(False)


def dataframe(db, query: str, version=None, branch: str | None = None, params=None):
    """The DataFusion DataFrame of ``query`` (see ``Database.sql_df``)."""
    return _dataframe(plan(db, query, version, branch, params))[0]


def _dataframe(p: Plan):
    ctx = _context(p.tables)
    try:
        df = ctx.sql(p.sql, options=_read_only_options(), param_values=p.params)
    except UdrflowError:
        raise
    except Exception as exc:  # DataFusion raises ValueError or plain Exception
        raise sql_error(exc, p) from exc
    return df, ctx


def run(db, query: str, version=None, branch: str | None = None, params=None) -> pa.Table:
    """The result of ``query`` as a pyarrow.Table (see ``Database.sql``)."""
    p = plan(db, query, version, branch, params)
    df, _ctx = _dataframe(p)
    try:
        return df.to_arrow_table()
    except UdrflowError:
        raise
    except Exception as exc:
        raise sql_error(exc, p) from exc


_DF_POSITION = re.compile(r",? at Line: (\d+), Column: (\d+)")
# Messages that name an identifier of the query, whose position we can then find.
_NAMED = [re.compile(r"No field named ([^\s]+?)\.?(?:\s|$)"), re.compile(r"Invalid function '([^']+)'"),
          re.compile(r"table '([^']+)' not found")]


def sql_error(exc: Exception, p: Plan) -> UdrflowError:
    """A DataFusion exception as a SqlError (SqlSyntaxError when it does not parse; a
    TableNotFoundError for a table it cannot find, e.g. in another schema), keeping
    DataFusion's text, with the position mapped from the rewritten query to the original."""
    text = str(exc).strip()
    cls = SqlSyntaxError if ("ParserError(" in text or "TokenizerError(" in text) else SqlError
    offset = None
    m = _DF_POSITION.search(text)
    if m is not None:
        line, column = int(m.group(1)), int(m.group(2))
        starts = [0] + [i + 1 for i, c in enumerate(p.sql) if c == "\n"]
        if line <= len(starts):
            offset = p.original_offset(min(starts[line - 1] + column - 1, len(p.sql)))
            text = text[:m.start()] + text[m.end():]
    elif "found: EOF" in text:
        offset = len(p.query)
    else:
        for pattern in _NAMED:
            m = pattern.search(text)
            if m is not None:
                wanted = m.group(1).split(".")[-1].strip('"')
                offset = next((t.start for t in p.tokens
                               if t.kind in ("ident", "qident") and ident_name(t) == wanted.lower()), None)
                if pattern is _NAMED[2]:
                    message = f"{text}: {_where(p.query, offset)}" if offset is not None else text
                    return TableNotFoundError(message)
                break
    if offset is None:
        return cls(text, p.query)
    line, column = position(p.query, offset)
    first, newline, rest = text.partition("\n")
    return cls(f"{first.rstrip('.')}: {_where(p.query, offset)}{newline}{rest}", p.query, line, column)
