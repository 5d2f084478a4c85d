//! Request paths as routing must see them: percent-encoded unreserved characters decoded
//! (`%2e` is `.`, `%70` is `p`), dot-segments removed (RFC 3986 §5.2.4), so that
//! `/files/../private` or `/files/%2e%2e/private` can never match route `/files` and reach
//! beyond it. What cannot be normalised safely is refused: an encoded `/` or `\` (or a raw `\`,
//! which some servers read as `/`) that would hide a dot-segment, and an encoded NUL.

use std::borrow::Cow;

/// Why a path is refused (the client gets 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path does not start with /")]
    NotAbsolute,
    #[error("bad percent-encoding in the path")]
    BadEncoding,
    #[error("an encoded NUL in the path")]
    Nul,
    #[error("an encoded or backslash separator hides a dot-segment")]
    HiddenDotSegment,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// One segment with unreserved escapes decoded and the others upper-cased (`%2f` → `%2F`).
fn decode_segment(seg: &str) -> Result<String, PathError> {
    let bytes = seg.as_bytes();
    let mut out = String::with_capacity(seg.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadEncoding);
            };
            let v = h * 16 + l;
            if v == 0 {
                return Err(PathError::Nul);
            }
            if unreserved(v) {
                out.push(v as char);
            } else {
                out.push('%');
                out.push(char::from(b"0123456789ABCDEF"[usize::from(h)]));
                out.push(char::from(b"0123456789ABCDEF"[usize::from(l)]));
            }
            i += 3;
        } else {
            // The path of a parsed URI is ASCII; anything else is passed through untouched.
            let ch = seg[i..].chars().next().unwrap_or('\u{fffd}');
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    // A segment that a server decoding `%2F`/`%5C` (or reading `\` as `/`) would split into
    // pieces, one of them `.` or `..`, would climb out of its route there.
    let separators = out.contains('\\') || out.contains("%2F") || out.contains("%5C");
    if separators {
        let spelled = out
            .replace("%2F", "/")
            .replace("%5C", "/")
            .replace('\\', "/");
        if spelled.split('/').any(|p| p == "." || p == "..") {
            return Err(PathError::HiddenDotSegment);
        }
    }
    Ok(out)
}

/// The normalised form of `path` (no query), borrowed when it is already normal.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        // `*` (OPTIONS) and authority-form have no path to route by.
        return Err(PathError::NotAbsolute);
    }
    let simple = !path.contains('%')
        && !path.contains('\\')
        && !path.split('/').any(|s| s == "." || s == "..");
    if simple {
        return Ok(Cow::Borrowed(path));
    }
    let mut out: Vec<String> = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    for (i, raw) in segments.iter().enumerate() {
        let seg = decode_segment(raw)?;
        match seg.as_str() {
            "." => {
                if i == last {
                    out.push(String::new());
                }
            }
            ".." => {
                out.pop();
                if i == last {
                    out.push(String::new());
                }
            }
            _ => out.push(seg),
        }
    }
    Ok(Cow::Owned(format!("/{}", out.join("/"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_in_every_spelling_are_removed() {
        for (input, want) in [
            ("/mcp", "/mcp"),
            ("/", "/"),
            ("/files/../private/secret.txt", "/private/secret.txt"),
            ("/files/%2e%2e/private/x", "/private/x"),
            ("/files/%2E%2E/private/x", "/private/x"),
            ("/files/.%2e/private", "/private"),
            ("/files/%2e./private", "/private"),
            ("/mcp/%2e%2e/admin", "/admin"),
            ("/a/./b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/..", "/"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/mc%70", "/mcp"),
            ("/a%2fb", "/a%2Fb"),
            ("/files//../x", "/files/x"),
        ] {
            assert_eq!(normalize(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn hidden_separators_and_bad_escapes_are_refused() {
        for (input, want) in [
            ("/files/..%2fprivate", PathError::HiddenDotSegment),
            ("/files/..%2Fprivate", PathError::HiddenDotSegment),
            ("/files/%2e%2e%2fprivate", PathError::HiddenDotSegment),
            ("/files/..%5cprivate", PathError::HiddenDotSegment),
            ("/files/..\\private", PathError::HiddenDotSegment),
            ("/files/x%2f..%2f..%2fy", PathError::HiddenDotSegment),
            ("/a%00b", PathError::Nul),
            ("/a%zz", PathError::BadEncoding),
            ("/a%2", PathError::BadEncoding),
            ("*", PathError::NotAbsolute),
        ] {
            assert_eq!(normalize(input), Err(want), "{input}");
        }
    }

    #[test]
    fn a_normal_path_is_borrowed() {
        assert!(matches!(normalize("/mcp/messages"), Ok(Cow::Borrowed(_))));
    }
}
