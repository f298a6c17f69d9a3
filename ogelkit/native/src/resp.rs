//! RESP framing in plain Rust (no Python types): the rules of `ogelkit_redis.wire`, byte for
//! byte. Requests are read as Redis reads them (`string2ll` lengths: ASCII digits, no leading
//! zeros, at most 18 of them); replies are only scanned for their end.

const MAX_INLINE: usize = 64 * 1024;

/// A malformed request; `message()` is the text of wire.py's `ProtocolError`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReqError {
    TooBigInline,
    TooBigCount,
    MultibulkLength,
    BulkLength,
    Expected(u8),
    Unbalanced,
}

impl ReqError {
    pub fn message(&self) -> String {
        match self {
            ReqError::TooBigInline => "too big inline request".into(),
            ReqError::TooBigCount => "too big mbulk count string".into(),
            ReqError::MultibulkLength => "invalid multibulk length".into(),
            ReqError::BulkLength => "invalid bulk length".into(),
            // chr(byte) in Python: the code point of the same number (Latin-1).
            ReqError::Expected(b) => format!("expected '$', got '{}'", *b as char),
            ReqError::Unbalanced => "unbalanced quotes in request".into(),
        }
    }
}

/// The outcome of reading one request.
#[derive(Debug)]
pub enum Req {
    /// A multibulk request ending at this offset (its arguments pushed as spans).
    Done(usize),
    /// An inline request: its line (`buf[start..stop]`, without the line end) to split,
    /// and where the request ends.
    Inline(usize, usize, usize),
    /// A line (inline request, array header) lacks its end.
    Line,
    /// Arguments cut short: go on at `at` with `left` more, once `need` bytes from `at` came.
    More { at: usize, left: u64, need: usize },
}

pub enum Bulks {
    Done(usize),
    More { at: usize, left: u64, need: usize },
}

#[inline]
pub fn find_crlf(d: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    let n = d.len();
    while i < n {
        match d[i..].iter().position(|&c| c == b'\r') {
            None => return None,
            Some(off) => {
                let r = i + off;
                if r + 1 < n && d[r + 1] == b'\n' {
                    return Some(r);
                }
                i = r + 1;
            }
        }
    }
    None
}

/// `string2ll` digits as wire.py checks them: 1..18 ASCII digits, no leading zero.
#[inline]
fn strict_len(head: &[u8]) -> Option<u64> {
    if head.is_empty() || head.len() > 18 || (head[0] == b'0' && head.len() > 1) {
        return None;
    }
    let mut v: u64 = 0;
    for &c in head {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u64::from(c - b'0');
    }
    Some(v)
}

fn all_digits(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|c| c.is_ascii_digit())
}

/// One request at `pos` (`pos < buf.len()`).
pub fn request(
    buf: &[u8],
    pos: usize,
    max_bulk: u64,
    max_args: u64,
    spans: &mut Vec<(usize, usize)>,
) -> Result<Req, ReqError> {
    let n = buf.len();
    if buf[pos] != b'*' {
        return inline(buf, pos);
    }
    let eol = match find_crlf(buf, pos) {
        Some(e) => e,
        None => {
            if n - pos > MAX_INLINE {
                return Err(ReqError::TooBigCount);
            }
            return Ok(Req::Line);
        }
    };
    let head = &buf[pos + 1..eol];
    let count = match strict_len(head) {
        Some(c) => c,
        None => {
            if head.len() > 18 || head.first() != Some(&b'-') || !all_digits(&head[1..]) {
                return Err(ReqError::MultibulkLength);
            }
            return Ok(Req::Done(eol + 2)); // negative: an empty request, like Redis
        }
    };
    if count > max_args {
        return Err(ReqError::MultibulkLength);
    }
    if count == 0 {
        return Ok(Req::Done(eol + 2));
    }
    match bulks(buf, eol + 2, max_bulk, count, spans)? {
        Bulks::Done(end) => Ok(Req::Done(end)),
        Bulks::More { at, left, need } => Ok(Req::More { at, left, need }),
    }
}

/// `left` more bulk strings from `p`.
pub fn bulks(
    buf: &[u8],
    mut p: usize,
    max_bulk: u64,
    mut left: u64,
    spans: &mut Vec<(usize, usize)>,
) -> Result<Bulks, ReqError> {
    let n = buf.len();
    while left > 0 {
        if p >= n {
            return Ok(Bulks::More {
                at: p,
                left,
                need: 1,
            });
        }
        if buf[p] != b'$' {
            return Err(ReqError::Expected(buf[p]));
        }
        let eol = match find_crlf(buf, p) {
            Some(e) => e,
            None => {
                if n - p > 32 {
                    return Err(ReqError::BulkLength);
                }
                return Ok(Bulks::More {
                    at: p,
                    left,
                    need: n - p + 1,
                });
            }
        };
        let size = strict_len(&buf[p + 1..eol]).ok_or(ReqError::BulkLength)?;
        if size > max_bulk {
            return Err(ReqError::BulkLength);
        }
        let size = size as usize; // <= max_bulk, which fits the address space
        let start = eol + 2;
        let end = start + size + 2;
        if end > n {
            return Ok(Bulks::More {
                at: p,
                left,
                need: end - p,
            });
        }
        spans.push((start, start + size));
        p = end;
        left -= 1;
    }
    Ok(Bulks::Done(p))
}

fn inline(buf: &[u8], pos: usize) -> Result<Req, ReqError> {
    let n = buf.len();
    let eol = match buf[pos..].iter().position(|&c| c == b'\n') {
        Some(off) => pos + off,
        None => {
            if n - pos > MAX_INLINE {
                return Err(ReqError::TooBigInline);
            }
            return Ok(Req::Line);
        }
    };
    if eol - pos > MAX_INLINE {
        return Err(ReqError::TooBigInline);
    }
    let stop = if eol > pos && buf[eol - 1] == b'\r' {
        eol - 1
    } else {
        eol
    };
    Ok(Req::Inline(pos, stop, eol + 1))
}

#[inline]
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n' | 0x0b | 0x0c)
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Redis's `sdssplitargs`: quotes and escapes, as wire.split_args.
pub fn split_args(line: &[u8]) -> Result<Vec<Vec<u8>>, ReqError> {
    let mut out = Vec::new();
    let n = line.len();
    let mut i = 0;
    loop {
        while i < n && is_space(line[i]) {
            i += 1;
        }
        if i >= n {
            return Ok(out);
        }
        let mut cur = Vec::new();
        if line[i] == b'"' {
            i += 1;
            loop {
                if i >= n {
                    return Err(ReqError::Unbalanced);
                }
                let c = line[i];
                if c == b'\\' && i + 1 < n {
                    let nxt = line[i + 1];
                    if nxt == b'x' && i + 3 < n {
                        if let (Some(h), Some(l)) = (hex(line[i + 2]), hex(line[i + 3])) {
                            cur.push(h * 16 + l);
                            i += 4;
                            continue;
                        }
                    }
                    cur.push(match nxt {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        other => other,
                    });
                    i += 2;
                    continue;
                }
                if c == b'"' {
                    i += 1;
                    if i < n && !is_space(line[i]) {
                        return Err(ReqError::Unbalanced);
                    }
                    break;
                }
                cur.push(c);
                i += 1;
            }
        } else if line[i] == b'\'' {
            i += 1;
            loop {
                if i >= n {
                    return Err(ReqError::Unbalanced);
                }
                let c = line[i];
                if c == b'\\' && i + 1 < n && line[i + 1] == b'\'' {
                    cur.push(b'\'');
                    i += 2;
                    continue;
                }
                if c == b'\'' {
                    i += 1;
                    if i < n && !is_space(line[i]) {
                        return Err(ReqError::Unbalanced);
                    }
                    break;
                }
                cur.push(c);
                i += 1;
            }
        } else {
            while i < n && !is_space(line[i]) {
                cur.push(line[i]);
                i += 1;
            }
        }
        out.push(cur);
    }
}

/// A reply length or count the fast scanner takes: `-?[0-9]{1,18}` (leading zeros too, as
/// Python's `int`). Anything else (`+5`, ` 5`, `1_0`, garbage): `None`, and the Python
/// scanner decides (it takes what `int` takes and words the error).
#[inline]
fn reply_len(head: &[u8]) -> Option<i64> {
    let (neg, digits) = match head.first() {
        Some(b'-') => (true, &head[1..]),
        _ => (false, head),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let mut v: i64 = 0;
    for &c in digits {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i64::from(c - b'0');
    }
    Some(if neg { -v } else { v })
}

/// `wire.reply_scan`; `None`: defer to the Python scanner (unusual length, overflow).
pub fn reply_scan(buf: &[u8], mut pos: usize, mut remaining: i64) -> Option<(i64, i64, i64)> {
    let n = buf.len();
    let n64 = n as i64;
    while remaining != 0 {
        if pos >= n {
            return Some((pos as i64, remaining, n64 + 1));
        }
        let t = buf[pos];
        let eol = match find_crlf(buf, pos) {
            Some(e) => e,
            None => return Some((pos as i64, remaining, n64 + 1)),
        };
        let end: i64;
        match t {
            b'$' | b'=' | b'!' => {
                let size = reply_len(&buf[pos + 1..eol])?;
                end = if size < 0 {
                    eol as i64 + 2
                } else {
                    (eol as i64 + 4).checked_add(size)?
                };
                if end > n64 {
                    return Some((pos as i64, remaining, end));
                }
            }
            b'*' | b'~' | b'>' => {
                let c = reply_len(&buf[pos + 1..eol])?;
                if c > 0 {
                    remaining = remaining.checked_add(c)?;
                }
                end = eol as i64 + 2;
            }
            b'%' => {
                let c = reply_len(&buf[pos + 1..eol])?;
                if c > 0 {
                    remaining = remaining.checked_add(c.checked_mul(2)?)?;
                }
                end = eol as i64 + 2;
            }
            b'|' => {
                let c = reply_len(&buf[pos + 1..eol])?;
                remaining = remaining.checked_add(c.max(0).checked_mul(2)?.checked_add(1)?)?;
                end = eol as i64 + 2;
            }
            _ => end = eol as i64 + 2,
        }
        remaining = remaining.checked_sub(1)?;
        pos = end as usize;
    }
    Some((pos as i64, 0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_and_its_arguments() {
        let buf = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nrest";
        let mut spans = Vec::new();
        match request(buf, 0, 512, 16, &mut spans) {
            Ok(Req::Done(end)) => assert_eq!(&buf[end..], b"rest"),
            _ => panic!("not parsed"),
        }
        assert_eq!(spans, vec![(8, 11), (17, 18)]);
    }

    #[test]
    fn a_cut_request_says_what_it_needs() {
        let buf = b"*2\r\n$3\r\nGET\r\n$10\r\n01234";
        let mut spans = Vec::new();
        match request(buf, 0, 512, 16, &mut spans) {
            Ok(Req::More { at, left, need }) => assert_eq!((at, left, need), (13, 1, 5 + 10 + 2)),
            _ => panic!("not incomplete"),
        }
    }

    #[test]
    fn lengths_as_redis_reads_them() {
        let mut spans = Vec::new();
        for bad in [
            &b"*01\r\n"[..],
            b"*+1\r\n",
            b"*1\r\n$04\r\nPING\r\n",
            b"*1\r\n+PING\r\n",
        ] {
            assert!(request(bad, 0, 512, 16, &mut spans).is_err(), "{bad:?}");
        }
        assert!(matches!(
            request(b"*-1\r\n", 0, 512, 16, &mut spans),
            Ok(Req::Done(5))
        ));
        assert_eq!(
            request(b"*1\r\n\xe9", 0, 512, 16, &mut spans)
                .unwrap_err()
                .message(),
            "expected '$', got '\u{e9}'"
        );
    }

    #[test]
    fn replies_scan_and_unusual_lengths_defer() {
        let buf = b"*2\r\n%1\r\n+a\r\n:1\r\n$3\r\nabc\r\n";
        assert_eq!(reply_scan(buf, 0, 1), Some((25, 0, 0)));
        assert_eq!(reply_scan(buf, 0, 2), Some((25, 1, 26)));
        assert_eq!(reply_scan(&buf[..20], 0, 1), Some((16, 1, 25)));
        assert_eq!(reply_scan(b"$+3\r\nabc\r\n", 0, 1), None);
        assert_eq!(
            reply_scan(b"*999999999999999999\r\n*999999999999999999\r\n", 0, 1).map(|r| r.1 > 0),
            Some(true)
        );
    }

    #[test]
    fn inline_quoting() {
        assert_eq!(
            split_args(br#"SET "a\x41\n" 'b\'c'"#).unwrap(),
            vec![b"SET".to_vec(), b"aA\n".to_vec(), b"b'c".to_vec()]
        );
        assert_eq!(split_args(br#""x"y"#), Err(ReqError::Unbalanced));
    }
}
