//! How a policy compares an argument's value with a rule's: as written (`same`), and as a lax
//! reader may make them (`lax_same`, for deny rules: the server runs with the coerced value).

use serde_json::{Number, Value};

/// 2^53: past it one f64 stands for many integers.
pub(super) const EXACT: f64 = 9_007_199_254_740_992.0;

/// JSON equality, numbers by value (`1000`, `1000.0` and `1e3` are one number to a server).
/// Two integers compare exactly (past 2^53 two of them can be one f64, and Python, Java or Go
/// read them apart); an integer equals a float only where it is exactly that float; a float
/// past 2^53 (serde_json's reading of an integer past 64 bits too) equals nothing, as one f64
/// stands for many numbers there.
pub(super) fn same(a: &Value, b: &Value) -> bool {
    let exact = |n: &Number| match int(n) {
        Some(i) => i as f64 as i128 == i,
        None => n.as_f64().is_some_and(|f| f.abs() < EXACT),
    };
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (int(x), int(y)) {
            (Some(i), Some(j)) => i == j,
            _ => exact(x) && exact(y) && x.as_f64() == y.as_f64(),
        },
        _ => a == b,
    }
}

fn int(n: &Number) -> Option<i128> {
    n.as_i64().map(i128::from).or(n.as_u64().map(i128::from))
}

/// Whether a server may read `v` and `x` as one value: some spelling of each (itself, or what
/// a lax reader coerces it into: `spellings`) is `same` as one of the other's. Both sides are
/// read so: a rule's `equals: yes` is the string `"yes"` in YAML 1.2, which a server may
/// read as `true`. A string with digits outside ASCII (`"１０００"`, which Python's `Decimal`
/// reads as 1000) may be any number. Wider than any one reader, which only makes a deny rule
/// wider.
pub(super) fn lax_same(v: &Value, x: &Value) -> bool {
    let (vs, xs) = (spellings(v), spellings(x));
    vs.iter().any(|a| xs.iter().any(|b| same(a, b)))
        || (x.is_number() && foreign_digits(v))
        || (v.is_number() && foreign_digits(x))
}

/// `v`, and the values a lax reader makes of it for a typed parameter: pydantic's (the Python
/// SDK's tool and prompt arguments, checked against pydantic 2.14; TypeScript's zod and Go's
/// schema checks coerce nothing; .NET's may read numbers from strings): a boolean from
/// `"true"`, `"yes"`, `"on"`, `"t"`, `"y"`, `"1"` (any case) and their opposites, or from the
/// number 1 or 0; a number from a
/// numeric string (`python_number`), or from a boolean (1, 0); an integer from a float with no
/// fraction, exactly (`1e16`; `12345678901234567.0` is the f64 12345678901234568), and a float
/// from an integer, rounded (9007199254740993 is 9007199254740992.0 to a `float` parameter: so
/// past 2^53 an integer is lax-same as its neighbours that round to the same f64).
fn spellings(v: &Value) -> Vec<Value> {
    const TRUE: [&str; 6] = ["true", "yes", "on", "t", "y", "1"];
    const FALSE: [&str; 6] = ["false", "no", "off", "f", "n", "0"];
    let mut out = vec![v.clone()];
    let number = match v {
        Value::String(s) => {
            if TRUE.iter().any(|t| s.eq_ignore_ascii_case(t)) {
                out.push(Value::Bool(true));
            } else if FALSE.iter().any(|f| s.eq_ignore_ascii_case(f)) {
                out.push(Value::Bool(false));
            }
            python_number(s)
        }
        Value::Number(n) => {
            match n.as_f64() {
                Some(1.0) => out.push(Value::Bool(true)),
                Some(0.0) => out.push(Value::Bool(false)),
                _ => {}
            }
            None
        }
        Value::Bool(b) => Some(Number::from(u8::from(*b))),
        _ => None,
    };
    if let Some(n) = number {
        out.push(Value::Number(n));
    }
    let rounded = out.iter().find_map(|v| v.as_number().and_then(integral));
    out.extend(rounded.map(Value::Number));
    out
}

/// The integer a number's f64 is, exactly (where it has no fraction and is within -2^63 and
/// 2^64: what `Number` holds).
fn integral(n: &Number) -> Option<Number> {
    const TWO_64: f64 = 18_446_744_073_709_551_616.0;
    let f = n.as_f64().filter(|f| f.is_finite() && f.fract() == 0.0)?;
    if !(-TWO_64 / 2.0..TWO_64).contains(&f) {
        return None;
    }
    int_number(f as i128)
}

fn int_number(i: i128) -> Option<Number> {
    i64::try_from(i)
        .map(Number::from)
        .or_else(|_| u64::try_from(i).map(Number::from))
        .ok()
}

/// The number pydantic (Python's `int()`, `float()`, `Decimal()`) reads from `s`: whitespace
/// around it (Python's, which has U+001C–U+001F), a sign, leading zeros, `_` anywhere
/// (pydantic's integers drop it among leading zeros, `Decimal` everywhere), a sign after
/// leading zeros (`"0-1"` is -1 to pydantic), a fraction of zeros (`"5.0"` is the integer 5,
/// read exactly past 2^53). None for infinities and NaN, which no JSON value equals.
fn python_number(s: &str) -> Option<Number> {
    let t: String = s
        .trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
        .chars()
        .filter(|&c| c != '_')
        .collect();
    let unsigned = t.strip_prefix(['+', '-']).unwrap_or(&t);
    let after_zeros = unsigned.trim_start_matches('0');
    let t = if after_zeros.len() < unsigned.len() && after_zeros.starts_with(['+', '-']) {
        after_zeros
    } else {
        &t
    };
    let whole = match t.split_once('.') {
        Some((i, f)) if f.bytes().all(|b| b == b'0') => i,
        _ => t,
    };
    if let Some(n) = whole.parse::<i128>().ok().and_then(int_number) {
        return Some(n);
    }
    let f = t.parse::<f64>().ok().filter(|f| f.is_finite())?;
    Number::from_f64(f)
}

/// Whether a string holds a digit outside ASCII, which Python's `Decimal` reads as one.
fn foreign_digits(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.chars().any(|c| !c.is_ascii() && c.is_numeric()))
}

/// The path a string names once `.` and `..` segments and repeated `/` are resolved, as a
/// tool that opens it (Linux: `//etc` is `/etc`) or normalises it (Python's `os.path.normpath`;
/// `pathlib` for `.` and `//`) reads it; none when that is the string itself or it has no `/`.
pub(super) fn resolved_path(s: &str) -> Option<String> {
    if !s.contains('/') {
        return None;
    }
    let absolute = s.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in s.split('/') {
        match part {
            "" | "." => {}
            ".." if parts.last().is_some_and(|p| *p != "..") => {
                parts.pop();
            }
            // Above the root is the root.
            ".." if absolute => {}
            _ => parts.push(part),
        }
    }
    let joined = parts.join("/");
    let path = match (absolute, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    };
    (path != s).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(t: &str) -> Value {
        serde_json::from_str(t).unwrap()
    }

    /// What pydantic 2.14 made of each value (the sent value, then what a `bool`, `int`,
    /// `float` or `Decimal` parameter ran with: `TypeAdapter(T).validate_python` of the value
    /// `json.loads` reads), where that differs from the value sent; generated, every case kept.
    const PYDANTIC: &[(&str, &str)] = &[
        (r#""true""#, "true"),                              // bool
        (r#""TRUE""#, "true"),                              // bool
        (r#""tRuE""#, "true"),                              // bool
        (r#""yes""#, "true"),                               // bool
        (r#""On""#, "true"),                                // bool
        (r#""t""#, "true"),                                 // bool
        (r#""Y""#, "true"),                                 // bool
        (r#""1""#, "true"),                                 // bool
        (r#""0""#, "false"),                                // bool
        (r#""no""#, "false"),                               // bool
        (r#""OFF""#, "false"),                              // bool
        (r#""f""#, "false"),                                // bool
        (r#""n""#, "false"),                                // bool
        (r#"1"#, "true"),                                   // bool
        (r#"0"#, "false"),                                  // bool
        (r#"1.0"#, "true"),                                 // bool
        (r#"0.0"#, "false"),                                // bool
        (r#""1""#, "1"),                                    // int
        (r#""0""#, "0"),                                    // int
        (r#""2""#, "2"),                                    // int
        (r#""1.0""#, "1"),                                  // int
        (r#""1000""#, "1000"),                              // int
        (r#"" 1000 ""#, "1000"),                            // int
        (r#""\t1000\n""#, "1000"),                          // int
        (r#""\u00a01000""#, "1000"),                        // int
        (r#""+1000""#, "1000"),                             // int
        (r#""001000""#, "1000"),                            // int
        (r#""1_000""#, "1000"),                             // int
        (r#""0__1000""#, "1000"),                           // int
        (r#""0-1""#, "-1"),                                 // int
        (r#""0_-1""#, "-1"),                                // int
        (r#""+0-1""#, "-1"),                                // int
        (r#""0-1000.0""#, "-1000"),                         // int
        (r#""1000.0""#, "1000"),                            // int
        (r#""1000.000""#, "1000"),                          // int
        (r#""12345678901234567""#, "12345678901234567"),    // int
        (r#""12345678901234567.0""#, "12345678901234567"),  // int
        (r#""9007199254740993""#, "9007199254740993"),      // int
        (r#"1.0"#, "1"),                                    // int
        (r#"0.0"#, "0"),                                    // int
        (r#"true"#, "1"),                                   // int
        (r#"false"#, "0"),                                  // int
        (r#"1000.0"#, "1000"),                              // int
        (r#"1e+16"#, "10000000000000000"),                  // int
        (r#"1.2345678901234568e+16"#, "12345678901234568"), // int
        (r#""1000.""#, "1000"),                             // float
        (r#""1e3""#, "1000"),                               // float
        (r#""1E3""#, "1000"),                               // float
        (r#"".5e4""#, "5000"),                              // float
        (r#""1000.5""#, "1000.5"),                          // float
        (r#""12345678901234567""#, "12345678901234568"),    // float
        (r#""12345678901234567.0""#, "12345678901234568"),  // float
        (r#""9007199254740993""#, "9007199254740992"),      // float
        (r#"12345678901234567"#, "12345678901234568"),      // float
        (r#"9007199254740993"#, "9007199254740992"),        // float
        (r#""1000\u001c""#, "1000"),                        // Decimal
        (r#""1__000""#, "1000"),                            // Decimal
        (r#""_1000""#, "1000"),                             // Decimal
        (r#""1000_""#, "1000"),                             // Decimal
        (r#""\uff11\uff10\uff10\uff10""#, "1000"),          // Decimal
        (r#""\u0661\u0660\u0660\u0660""#, "1000"),          // Decimal
        (r#""1000\u0660""#, "10000"),                       // Decimal
        // Read exactly, as Python reads them (serde_json's `float_roundtrip`).
        ("1.00000000000000009", "true"), // bool, a JSON number
        ("1.00000000000000009", "1"),    // int, a JSON number
        ("33.999999999999997", "34"),    // int, a JSON number
        ("4.99999999999999956", "5"),    // int, a JSON number
        ("99.9999999999999929", "100"),  // int, a JSON number
        ("4096.00000000000033", "4096"), // int, a JSON number
        ("12345678901234567.0", "12345678901234568"), // int, a JSON number
        ("9007199254740993.0", "9007199254740992"), // int, a JSON number
        ("18000000000000000001", "18000000000000000000"), // float, a JSON number
        ("1.8e19", "18000000000000000000"), // float, a JSON number
        ("1.844674407370955e19", "18446744073709549568"), // float, a JSON number
    ];

    #[test]
    fn every_value_pydantic_coerces_is_lax_same_as_what_it_runs_with() {
        for (sent, ran) in PYDANTIC {
            let (sent, ran) = (json(sent), json(ran));
            assert!(lax_same(&sent, &ran), "{sent} ran as {ran}");
            assert!(lax_same(&ran, &sent), "{ran} from {sent}");
        }
    }

    #[test]
    fn paths_resolve_as_a_tool_that_opens_or_normalises_them_reads_them() {
        // Python's os.path.normpath, and Linux for the leading `//`.
        for (sent, path) in [
            ("/tmp/../etc/passwd", Some("/etc/passwd")),
            ("/./etc//passwd", Some("/etc/passwd")),
            ("//etc/passwd", Some("/etc/passwd")),
            ("/../../etc/", Some("/etc")),
            ("a/b/../../../c", Some("../c")),
            ("a/./b/", Some("a/b")),
            ("./", Some(".")),
            ("/etc/passwd", None),
            ("etc", None),
            ("../x", None),
        ] {
            assert_eq!(resolved_path(sent).as_deref(), path, "{sent}");
        }
    }

    #[test]
    fn lax_sameness_stops_where_no_reader_coerces() {
        for (v, x) in [
            // Not booleans to pydantic (an error), or the other boolean.
            (r#"" true""#, "true"),
            (r#""2""#, "true"),
            ("2", "true"),
            (r#""false""#, "true"),
            ("0", "true"),
            // Other numbers, or none.
            (r#""1000.5""#, "1000"),
            ("999.9999999999999", "1000"),
            ("1e-23", "1.0000000000000001e-23"),
            (r#""0x3e8""#, "1000"),
            (r#""inf""#, "1000"),
            (r#""1234568""#, "1234567"),
            (r#""1e3""#, r#""1000x""#),
            // Strings that are no number or boolean compare as strings.
            (r#""analytics ""#, r#""analytics""#),
            (r#""Analytics""#, r#""analytics""#),
        ] {
            assert!(!lax_same(&json(v), &json(x)), "{v} is not {x}");
        }
        // A rule's own value is read as a server may read it: `equals: yes` (a string in
        // YAML 1.2) holds of `true`, and of every other spelling of it.
        assert!(lax_same(&json("true"), &json(r#""yes""#)));
        assert!(lax_same(&json(r#""ON""#), &json(r#""yes""#)));
    }
}
