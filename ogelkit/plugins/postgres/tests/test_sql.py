"""``normalize``: the fast path (no quotes/comments/dollar quotes) never differs from the
tokenizer, on a corpus of tricky statements and on many random ones."""

from __future__ import annotations

import random

import pytest
from ogelkit_postgres.sql import _normalize_fast, _normalize_tokens, normalize

# (statement, expected normal form). Every one goes through both paths where it can.
CORPUS = [
    ("SELECT abalance FROM pgbench_accounts WHERE aid = 123456;",
     "SELECT abalance FROM pgbench_accounts WHERE aid = ?"),
    ("SELECT * FROM t1 WHERE a1 = 1e5 AND b = -3", "SELECT * FROM t1 WHERE a1 = ? AND b = -?"),
    ("SELECT 1.5, .5, 5., 1.5e-3, 2E+10, 7e", "SELECT ?, ?, ?, ?, ?, ?e"),
    ("SELECT 1.2.3, 1..2, a1.5, t1.c2, $1.5", "SELECT ??, ??, a1?, t1.c2, $1?"),
    ("SELECT $1, $2::int, x::int4, 3::int8 FROM t WHERE a IN ($1, $2)",
     "SELECT $1, $2::int, x::int4, ?::int8 FROM t WHERE a IN ($1, $2)"),
    ("SELECT a$1, b$$c, _9, 9_ FROM t", "SELECT a$1, b$$c, _9, ?_ FROM t"),
    ("select  *\n\tfrom x where id in (1, 2,3 ) ;  ", "select * from x where id in (?)"),
    ("INSERT INTO t VALUES (1, 2), (3, 4)", "INSERT INTO t VALUES (?), (?)"),
    ("SELECT 'it''s', E'a\\'b', B'101', X'ff', N'x' FROM t",
     "SELECT ?, ?, ?, ?, ? FROM t"),
    ('SELECT "t1"."a 2", "we""ird" FROM "T3"', 'SELECT "t1"."a 2", "we""ird" FROM "T3"'),
    ("SELECT $$ 1 'x' $$, $tag$ -- $$ 2 $tag$, $1", "SELECT ?, ?, $1"),
    ("SELECT 1 -- one\n, 2 /* two\n 3 */ , 4", "SELECT ? , ? , ?"),
    ("SELECT 1-2, 3--4\n", "SELECT ?-?, ?"),
    ("SELECT 3/2, 4*/5", "SELECT ?/?, ?*/?"),
    ("SELECT é1, café2, \u0661\u0662 FROM t", "SELECT é?, café?, ? FROM t"),
    ("SELECT f(1)(2), g( 1 , 'a' )", "SELECT f(?)(?), g(?)"),
    ("", ""),
    ("  ;", ""),
    ("SELECT 1;;", "SELECT ?"),
    ("SELECT 1e5e5, 1ea, 0x1F", "SELECT ?e5, ?ea, ?x1F"),
    ("SELECT a FROM b WHERE c >= 10 AND d <> 2.5", "SELECT a FROM b WHERE c >= ? AND d <> ?"),
]


@pytest.mark.parametrize(("text", "expected"), CORPUS)
def test_corpus(text: str, expected: str) -> None:
    assert _normalize_tokens(text) == expected
    assert normalize(text) == expected
    fast = _normalize_fast(text)
    assert fast is None or fast == expected


def test_fast_path_takes_plain_statements_only() -> None:
    assert _normalize_fast("SELECT abalance FROM pgbench_accounts WHERE aid = 1;") is not None
    assert _normalize_fast("SELECT $1, x::int, a$b FROM t1") is not None
    for text in ("SELECT 'a'", 'SELECT "a"', "SELECT 1 -- c", "SELECT /* c */ 1",
                 "SELECT $$a$$", "SELECT $t$a$t$", "SELECT é"):
        assert _normalize_fast(text) is None, text


# Characters that matter to one rule or another, plus filler; quotes/comments/dollar quotes
# are rarer so that most random statements take the fast path.
_ALPHABET = ("a", "e", "E", "x", "t", "_", "0", "1", "9", "5", ".", ".", "$", "$", "+", "-",
             " ", " ", "\n", "(", ")", ",", ";", ":", "=", "*", "/", "é", "\u0661", "\x1c")
_RARE = ("'", '"', "--", "/*", "*/", "$$", "$q$")


@pytest.mark.parametrize("seed", range(4))
def test_fast_path_matches_tokenizer_on_random_statements(seed: int) -> None:
    rnd = random.Random(seed)
    fast_taken = 0
    for _ in range(5000):
        parts = [rnd.choice(_RARE) if rnd.random() < 0.02 else rnd.choice(_ALPHABET)
                 for _ in range(rnd.randint(0, 30))]
        text = "".join(parts)
        reference = _normalize_tokens(text)
        fast = _normalize_fast(text)
        if fast is not None:
            fast_taken += 1
            assert fast == reference, text
        assert normalize(text) == reference, text
    assert fast_taken > 1000  # the comparison really exercised the fast path


@pytest.mark.parametrize(("text", "expected"), [
    ("SELECT length('" + "x" * 300_000 + "')", "SELECT length(?)"),
    ("SELECT E'" + "a\\'" * 100_000 + "'", "SELECT ?"),
    ("SELECT 'it''s" + "y" * 300_000 + "''s'", "SELECT ?"),
    ('SELECT "' + "c" * 300_000 + '" FROM t', 'SELECT "' + "c" * 300_000 + '" FROM t'),
])
def test_long_literals_are_one_token(text: str, expected: str) -> None:
    # One token each, matched by an unrolled loop: the per-character alternation they had
    # took 170 ms for a 900 kB string literal, on the event loop.
    assert _normalize_tokens(text) == expected


def test_a_long_literal_costs_microseconds_per_kilobyte() -> None:
    import time
    text = "SELECT length('" + "x" * 900_000 + "')"
    best = min(_timed(_normalize_tokens, text, time.perf_counter) for _ in range(3))
    assert best < 0.03, f"{best * 1e3:.1f} ms for a 900 kB literal (was 170 ms)"


def _timed(f, text: str, clock) -> float:
    t0 = clock()
    f(text)
    return clock() - t0
