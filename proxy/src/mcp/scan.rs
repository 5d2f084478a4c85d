//! A fast reading of the plain JSON nearly every MCP message is: compact or not, keys without
//! escapes, the fields the edge reads without escapes or fractions. It reads such a body in one
//! pass over its bytes, about a tenth of what serde_json's typed parse costs on a small call.
//!
//! It is a fast path, never the judge: whatever falls outside the plain subset (an escape where
//! the edge reads, a float id, nesting past `MAX_DEPTH`, a byte that is not UTF-8, anything
//! serde_json might refuse) is `Bail`, and the caller parses the body with serde_json as before.
//! So a body it reads is one serde_json reads, and to the same result (the differential tests
//! in `plain_tests` hold it to that). Its callers decide what a repeated key means.

/// Outside the plain subset: parse with serde_json instead.
#[derive(Debug)]
pub(super) struct Bail;

pub(super) type Read<T> = Result<T, Bail>;

/// Deeper nesting than this is left to serde_json (its own limit is 128, counted from the root).
const MAX_DEPTH: u32 = 64;

/// The longest integer part [`Cursor::skip_buildable`] vouches for: 10^300 is well inside f64.
const MAX_BUILT_DIGITS: usize = 300;

/// A position in a body known to be UTF-8.
pub(super) struct Cursor<'a> {
    text: &'a str,
    at: usize,
    depth: u32,
    /// Skipping a value serde_json would build ([`Cursor::skip_buildable`]).
    buildable: bool,
}

impl<'a> Cursor<'a> {
    /// `None`: not UTF-8 (serde_json decides what such a body is).
    pub(super) fn new(body: &'a [u8]) -> Option<Self> {
        let text = std::str::from_utf8(body).ok()?;
        Some(Self {
            text,
            at: 0,
            depth: 0,
            buildable: false,
        })
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    /// The next byte that is not JSON whitespace, not consumed.
    pub(super) fn peek(&mut self) -> Read<u8> {
        let b = self.bytes();
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = b.get(self.at) {
            self.at += 1;
        }
        b.get(self.at).copied().ok_or(Bail)
    }

    fn eat(&mut self, c: u8) -> Read<()> {
        if self.peek()? != c {
            return Err(Bail);
        }
        self.at += 1;
        Ok(())
    }

    /// Nothing but whitespace is left.
    pub(super) fn end(&mut self) -> Read<()> {
        match self.peek() {
            Err(Bail) => Ok(()),
            Ok(_) => Err(Bail),
        }
    }

    /// A string without escapes (the cursor before its opening quote): its text.
    pub(super) fn plain_str(&mut self) -> Read<&'a str> {
        self.eat(b'"')?;
        let start = self.at;
        let b = self.bytes();
        loop {
            match b.get(self.at) {
                Some(b'"') => break,
                // An escape is unescaped by serde_json; a control character is refused by it.
                Some(b'\\' | 0..=0x1f) | None => return Err(Bail),
                Some(_) => self.at += 1,
            }
        }
        self.at += 1;
        // Both ends are ASCII quotes, so both are character boundaries.
        Ok(&self.text[start..self.at - 1])
    }

    /// A string skipped: escapes checked as serde_json checks those of a value it skips (a
    /// `\u` escape is 4 hex digits, whatever code point they make).
    fn skip_str(&mut self) -> Read<()> {
        self.eat(b'"')?;
        let b = self.bytes();
        loop {
            match b.get(self.at) {
                Some(b'"') => break,
                Some(b'\\') => {
                    self.at += 1;
                    match b.get(self.at) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {}
                        // A lone surrogate is skipped by serde_json, refused where it builds
                        // a string.
                        Some(b'u') if self.buildable => return Err(Bail),
                        Some(b'u') => {
                            let hex = b.get(self.at + 1..self.at + 5).ok_or(Bail)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return Err(Bail);
                            }
                            self.at += 4;
                        }
                        _ => return Err(Bail),
                    }
                    self.at += 1;
                }
                Some(0..=0x1f) | None => return Err(Bail),
                Some(_) => self.at += 1,
            }
        }
        self.at += 1;
        Ok(())
    }

    /// `true`, `false` or `null`: its text.
    pub(super) fn literal(&mut self) -> Read<&'static str> {
        self.peek()?;
        let rest = &self.bytes()[self.at..];
        let word = ["true", "false", "null"]
            .into_iter()
            .find(|w| rest.starts_with(w.as_bytes()))
            .ok_or(Bail)?;
        self.at += word.len();
        Ok(word)
    }

    /// A number in JSON's grammar, skipped.
    fn skip_number(&mut self) -> Read<()> {
        self.peek()?;
        let b = self.bytes();
        let digits = |at: &mut usize| {
            let start = *at;
            while b.get(*at).is_some_and(u8::is_ascii_digit) {
                *at += 1;
            }
            *at - start
        };
        let mut at = self.at;
        if b.get(at) == Some(&b'-') {
            at += 1;
        }
        match b.get(at) {
            Some(b'0') => at += 1,
            Some(b'1'..=b'9') => {
                // serde_json refuses, where it builds a number, one past f64's range (1.8e308).
                if digits(&mut at) > MAX_BUILT_DIGITS && self.buildable {
                    return Err(Bail);
                }
            }
            _ => return Err(Bail),
        }
        if b.get(at) == Some(&b'.') {
            at += 1;
            if digits(&mut at) == 0 {
                return Err(Bail);
            }
        }
        if let Some(b'e' | b'E') = b.get(at) {
            if self.buildable {
                // Whether it is in f64's range is serde_json's to say.
                return Err(Bail);
            }
            at += 1;
            if let Some(b'+' | b'-') = b.get(at) {
                at += 1;
            }
            if digits(&mut at) == 0 {
                return Err(Bail);
            }
        }
        self.at = at;
        Ok(())
    }

    /// An integer of at most 18 digits, no sign on a zero, no fraction or exponent: its text,
    /// which is also how serde_json writes it back, and which fits an `i64`.
    pub(super) fn small_int(&mut self) -> Read<&'a str> {
        let start = self.at_value()?;
        self.skip_number()?;
        let text = &self.text[start..self.at];
        let digits = text.strip_prefix('-').unwrap_or(text);
        let plain = digits.bytes().all(|d| d.is_ascii_digit());
        if !plain || digits.len() > 18 || text == "-0" {
            return Err(Bail);
        }
        Ok(text)
    }

    /// Where the next value starts.
    fn at_value(&mut self) -> Read<usize> {
        self.peek()?;
        Ok(self.at)
    }

    /// Any value, skipped, as serde_json skips what it does not read.
    pub(super) fn skip(&mut self) -> Read<()> {
        match self.peek()? {
            b'"' => self.skip_str(),
            b'{' => self.object(|c, _| c.skip()),
            b'[' => self.array(Self::skip),
            b't' | b'f' | b'n' => self.literal().map(drop),
            _ => self.skip_number(),
        }
    }

    /// A value skipped, but checked as serde_json checks one it builds rather than one it skips:
    /// a `\u` escape (a lone surrogate makes no string), an exponent or an integer part of more
    /// than [`MAX_BUILT_DIGITS`] digits (past f64's range it is no number) are `Bail`. A body is
    /// then read the same whether or not this value is built.
    pub(super) fn skip_buildable(&mut self) -> Read<()> {
        self.buildable = true;
        let skipped = self.skip();
        self.buildable = false;
        skipped
    }

    /// A value skipped: its text.
    pub(super) fn span(&mut self) -> Read<&'a str> {
        let start = self.at_value()?;
        self.skip()?;
        Ok(&self.text[start..self.at])
    }

    fn enter(&mut self, open: u8) -> Read<()> {
        self.eat(open)?;
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Bail);
        }
        Ok(())
    }

    /// An object: `member` is called with each key (one without escapes) and reads its value.
    pub(super) fn object(
        &mut self,
        mut member: impl FnMut(&mut Self, &'a str) -> Read<()>,
    ) -> Read<()> {
        self.members(b'{', b'}', |c| {
            let key = c.plain_str()?;
            c.eat(b':')?;
            member(c, key)
        })
    }

    /// An array: `element` reads each element.
    pub(super) fn array(&mut self, element: impl FnMut(&mut Self) -> Read<()>) -> Read<()> {
        self.members(b'[', b']', element)
    }

    /// `open`, what `each` reads separated by commas, `close`.
    fn members(
        &mut self,
        open: u8,
        close: u8,
        mut each: impl FnMut(&mut Self) -> Read<()>,
    ) -> Read<()> {
        self.enter(open)?;
        if self.peek()? != close {
            loop {
                each(self)?;
                if self.peek()? != b',' {
                    break;
                }
                self.at += 1;
            }
        }
        self.eat(close)?;
        self.depth -= 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skipped(body: &str) -> Option<&str> {
        let mut c = Cursor::new(body.as_bytes())?;
        let span = c.span().ok()?;
        c.end().ok()?;
        Some(span)
    }

    #[test]
    fn what_serde_json_skips_is_skipped_and_what_it_refuses_is_left_to_it() {
        for ok in [
            r#"{"a":[1,-0,0.5,1e3,-2.5E-7,true,false,null,"x\"\\\/\b\f\n\r\t\u00e9y"],"b":{}}"#,
            " [ ] ",
            r#""é""#,
            "-0.0e+0",
        ] {
            assert_eq!(skipped(ok), Some(ok.trim()), "{ok}");
        }
        for bail in [
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "+1",
            "nul",
            "tru",
            r#""\x""#,
            r#""\u12g4""#,
            "\"a\tb\"",
            r#"{"a" 1}"#,
            r#"{"a":1,}"#,
            "[1,]",
            "[1 2]",
            "{1:2}",
            r#""open"#,
            "[",
            "",
            "1 x",
        ] {
            assert_eq!(skipped(bail), None, "{bail}");
        }
        let deep = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(skipped(&deep).is_some());
        let deeper = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert_eq!(skipped(&deeper), None);
        assert!(Cursor::new(b"\"\xff\"").is_none());
    }

    #[test]
    fn what_serde_json_would_refuse_to_build_is_left_to_it() {
        let buildable = |body: &str| {
            let mut c = Cursor::new(body.as_bytes())?;
            c.skip_buildable().ok()?;
            c.end().ok()
        };
        let long = "9".repeat(MAX_BUILT_DIGITS);
        // serde_json's private raw-value key is a key like any other where the edge builds a
        // value (`parse::Literal`).
        let raw = r#"{"q":{"a":1,"$serde_json::private::RawValue":"1"}}"#;
        for ok in [
            r#"{"q":"tls","n":[1,-0,0.5,null,true],"s":"a\"b\n"}"#,
            &long,
            raw,
        ] {
            assert!(buildable(ok).is_some(), "{ok}");
        }
        let longer = "9".repeat(MAX_BUILT_DIGITS + 1);
        for bail in [
            r#"{"q":"\ud800"}"#,
            r#"["\u00e9"]"#,
            "1e400",
            "[2.5E-7]",
            &longer,
        ] {
            assert!(buildable(bail).is_none(), "{bail}");
            // Skipped as serde_json skips, they are fine.
            assert!(skipped(bail).is_some(), "{bail}");
        }
        // Only that one value: the cursor skips as before afterwards.
        let mut c = Cursor::new(br#"["\u00e9"] ["\u00e9"]"#).unwrap();
        assert!(c.skip_buildable().is_err());
        c.at = 11;
        assert!(c.skip().is_ok());
    }

    #[test]
    fn only_plain_integers_are_read_as_such() {
        let int = |t: &str| {
            Cursor::new(t.as_bytes())?
                .small_int()
                .ok()
                .map(str::to_string)
        };
        assert_eq!(int("7").as_deref(), Some("7"));
        assert_eq!(
            int("-123456789012345678").as_deref(),
            Some("-123456789012345678")
        );
        for not in ["1234567890123456789", "-0", "1.0", "1e2", "\"1\""] {
            assert_eq!(int(not), None, "{not}");
        }
    }
}
