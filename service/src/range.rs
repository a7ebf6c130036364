//! `Range` / `If-Range` handling for downloads (RFC 9110 section 14): a single byte range
//! is honoured; several ranges, or a malformed header, are ignored (a full 200 answer is
//! always a correct reply to a `Range` request).

/// What to send for a representation of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// 200 with the whole representation.
    Full,
    /// 206 with bytes `start..=end`.
    Partial { start: u64, end: u64 },
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Decide from the `Range` and `If-Range` header values and the representation's strong
/// ETag (`"<sha256>"`). `If-Range` with anything other than the current ETag (an old ETag,
/// or a date) means the client's partial copy is stale: send everything.
pub fn decide(range: Option<&str>, if_range: Option<&str>, etag: &str, len: u64) -> RangeAnswer {
    let Some(range) = range else {
        return RangeAnswer::Full;
    };
    if let Some(ir) = if_range {
        if ir.trim() != etag {
            return RangeAnswer::Full;
        }
    }
    match parse(range, len) {
        Parsed::Ignore => RangeAnswer::Full,
        Parsed::Unsatisfiable => RangeAnswer::Unsatisfiable,
        Parsed::Range(start, end) => RangeAnswer::Partial { start, end },
    }
}

enum Parsed {
    Ignore,
    Unsatisfiable,
    Range(u64, u64),
}

fn parse(header: &str, len: u64) -> Parsed {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return Parsed::Ignore;
    };
    if spec.contains(',') {
        return Parsed::Ignore;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Parsed::Ignore;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    if a.is_empty() {
        // Suffix range: the last n bytes.
        let Some(n) = num(b) else {
            return Parsed::Ignore;
        };
        if n == 0 || len == 0 {
            return Parsed::Unsatisfiable;
        }
        return Parsed::Range(len.saturating_sub(n), len - 1);
    }
    let Some(start) = num(a) else {
        return Parsed::Ignore;
    };
    let end = if b.is_empty() {
        None
    } else {
        match num(b) {
            Some(e) if e >= start => Some(e),
            // last < first: syntactically invalid, so ignored.
            _ => return Parsed::Ignore,
        }
    };
    if start >= len {
        return Parsed::Unsatisfiable;
    }
    let end = end.map_or(len - 1, |e| e.min(len - 1));
    Parsed::Range(start, end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeAnswer::*;

    #[test]
    fn table() {
        let e = "\"abc\"";
        let cases: &[(Option<&str>, Option<&str>, u64, RangeAnswer)] = &[
            (None, None, 10, Full),
            (Some("bytes=0-4"), None, 10, Partial { start: 0, end: 4 }),
            (Some("bytes=5-"), None, 10, Partial { start: 5, end: 9 }),
            (Some("bytes=5-100"), None, 10, Partial { start: 5, end: 9 }),
            (Some("bytes=-3"), None, 10, Partial { start: 7, end: 9 }),
            (Some("bytes=-30"), None, 10, Partial { start: 0, end: 9 }),
            (Some("bytes=10-"), None, 10, Unsatisfiable),
            (Some("bytes=-0"), None, 10, Unsatisfiable),
            (Some("bytes=0-"), None, 0, Unsatisfiable),
            (Some("bytes=4-2"), None, 10, Full),
            (Some("bytes=0-1,3-4"), None, 10, Full),
            (Some("items=0-1"), None, 10, Full),
            (Some("bytes=a-b"), None, 10, Full),
            (
                Some("bytes=2-3"),
                Some("\"abc\""),
                10,
                Partial { start: 2, end: 3 },
            ),
            (Some("bytes=2-3"), Some("\"old\""), 10, Full),
            (
                Some("bytes=2-3"),
                Some("Wed, 21 Oct 2015 07:28:00 GMT"),
                10,
                Full,
            ),
        ];
        for (r, ir, len, want) in cases {
            assert_eq!(decide(*r, *ir, e, *len), *want, "{r:?} {ir:?} {len}");
        }
    }
}
