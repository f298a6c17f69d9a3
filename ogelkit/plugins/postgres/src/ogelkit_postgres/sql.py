"""The little SQL the gateway reads: a statement's verb, and its normalised form.

Neither parses SQL. ``verb_of`` takes the first keyword (for metric labels and a few
transaction-mode rules); ``normalize`` replaces literals with placeholders so statements
that differ only in their constants share one cost estimate (as pg_stat_statements does).
"""

from __future__ import annotations

import re

_VERB = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/|\()*([A-Za-z]+)", re.S)

#: Bounded set of verbs used as the Operation ``name`` (a metric label); others -> OTHER.
VERBS = frozenset({
    "SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "WITH", "VALUES", "TABLE", "COPY", "BEGIN",
    "START", "COMMIT", "END", "ROLLBACK", "ABORT", "SAVEPOINT", "RELEASE", "PREPARE", "EXECUTE",
    "DEALLOCATE", "DECLARE", "FETCH", "MOVE", "CLOSE", "SET", "RESET", "SHOW", "DISCARD", "LISTEN",
    "UNLISTEN", "NOTIFY", "CREATE", "ALTER", "DROP", "TRUNCATE", "GRANT", "REVOKE", "COMMENT",
    "ANALYZE", "VACUUM", "EXPLAIN", "LOCK", "CALL", "DO", "REFRESH", "REINDEX", "CLUSTER",
    "CHECKPOINT", "SECURITY", "IMPORT",
})


_verbs_seen: dict[str, str] = {}


def verb_of(text: str) -> str:
    # Statements of one application share their first few dozen characters: remember the
    # verb by prefix (only when the verb ends inside it) and skip the regex next time.
    prefix = text[:32]
    verb = _verbs_seen.get(prefix)
    if verb is not None:
        return verb
    m = _VERB.match(text)
    if m is None:
        return "EMPTY" if not text.strip(" \t\r\n;") else "OTHER"
    verb = m.group(1).upper()
    if verb not in VERBS:
        verb = "OTHER"
    if m.end() < len(prefix):
        if len(_verbs_seen) >= 4096:
            _verbs_seen.clear()
        _verbs_seen[prefix] = verb
    return verb


#: Statements whose cost EXPLAIN can estimate.
EXPLAINABLE = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "WITH", "VALUES",
                         "TABLE"})

_TOKENS = re.compile(r"""
    (?P<comment>--[^\n]*|/\*.*?\*/)
  | (?P<dollar>\$(?P<tag>[A-Za-z_][A-Za-z_0-9]*)?\$.*?\$(?(tag)(?P=tag))\$)
  | (?P<string>[Ee]'[^'\\]*(?:(?:\\.|'')[^'\\]*)*'|[BbXxNn]?'[^']*(?:''[^']*)*')
  | (?P<ident>"[^"]*(?:""[^"]*)*"|[A-Za-z_][A-Za-z_0-9$]*)
  | (?P<param>\$\d+)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<space>\s+)
""", re.S | re.X)

_LIST = re.compile(r"\(\s*\?(?:\s*,\s*\?)+\s*\)")

# The fast path. In an ASCII statement without quotes (' or "), comments (-- or /*) and
# dollar-quote openers ($$, $tag$), the tokenizer above can only find identifiers, $n
# parameters, numbers and white space, and only numbers change. A number starts (1) at a
# digit whose previous character cannot end an identifier or a $n parameter (the tokenizer
# consumes both greedily, digits included), or (2) at a dot followed by digits, wherever
# it is (in "a1.5" or "1.2.3" the dot starts a new number). Every other digit lies inside
# an identifier, a parameter or a number already matched. Both branches begin with one
# character class, so re scans for it instead of trying every position.
# tests/test_sql.py checks that this path and the tokenizer agree.
_FAST_NUMBER = re.compile(r"""
    [0-9.]
    (?: (?<=[0-9]) (?<![A-Za-z_0-9$][0-9]) [0-9]* \.? [0-9]*   # (1) digits[.digits]
      | (?<=\.) [0-9]+ )                                      # (2) .digits
    (?:[eE][+-]?[0-9]+)?
""", re.X)
_DOLLAR_QUOTE = re.compile(r"\$(?:[A-Za-z_][A-Za-z_0-9]*)?\$")


def normalize(text: str) -> str:
    """Literals -> ``?``, comments dropped, whitespace collapsed, lists of literals folded.

    >>> normalize("SELECT * FROM t WHERE a = 42 AND b IN ('x', 'y')  -- hi")
    'SELECT * FROM t WHERE a = ? AND b IN (?)'
    """
    fast = _normalize_fast(text)
    return fast if fast is not None else _normalize_tokens(text)


def _normalize_fast(text: str) -> str | None:
    """``normalize`` for statements with no quote, comment or dollar quote (about 4x faster:
    pgbench and ORMs that inline numbers); None when the statement has any of them."""
    if (not text.isascii() or "'" in text or '"' in text or "--" in text or "/*" in text
            or ("$" in text and _DOLLAR_QUOTE.search(text) is not None)):
        return None
    return _tidy(_FAST_NUMBER.sub("?", text))


def _normalize_tokens(text: str) -> str:
    """``normalize`` by tokenizing: the reference for any statement."""
    out: list[str] = []
    pos = 0
    for m in _TOKENS.finditer(text):
        if m.start() > pos:
            out.append(text[pos:m.start()])
        kind = m.lastgroup
        if kind == "tag":  # the named group inside "dollar"
            kind = "dollar"
        if kind in ("string", "dollar", "number"):
            out.append("?")
        elif kind in ("space", "comment"):
            out.append(" ")
        else:
            out.append(m.group())
        pos = m.end()
    out.append(text[pos:])
    return _tidy("".join(out))


def _tidy(text: str) -> str:
    joined = " ".join(text.split())
    if "(" in joined:
        joined = _LIST.sub("(?)", joined)
    return joined.rstrip(" ;")
