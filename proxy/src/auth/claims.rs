//! The registered claims of a JWT access token (RFC 7519 §4.1, RFC 9068 §4), checked by type
//! here whatever the JWT library does with them: a claim of the wrong JSON type is refused,
//! never taken as absent (CVE-2026-25537 made `"nbf": "99999999999"` pass in jsonwebtoken < 10.3).

use serde_json::Value;

use super::Denied;

/// What a token must say to be accepted here.
pub struct Expected<'a> {
    /// The issuer identifier, compared byte for byte with `iss`.
    pub issuer: &'a str,
    /// The audiences of which the token must name one (in `aud`, a string or an array of
    /// strings), compared byte for byte.
    pub audiences: &'a [&'a str],
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    pub leeway: u64,
}

/// A NumericDate claim (RFC 7519 §2): absent, or a finite JSON number; anything else is refused.
fn numeric_date(claims: &Value, name: &str) -> Result<Option<f64>, Denied> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or(Denied::BadClaim),
        Some(_) => Err(Denied::BadClaim),
    }
}

/// Checks `claims` at Unix time `now`; on success the token's expiry (whole seconds, rounded
/// down, so a cache never keeps it past its `exp`).
pub fn check(claims: &Value, expected: &Expected<'_>, now: u64) -> Result<u64, Denied> {
    if !claims.is_object() {
        return Err(Denied::BadClaim);
    }
    let exp = numeric_date(claims, "exp")?.ok_or(Denied::BadClaim)?;
    let nbf = numeric_date(claims, "nbf")?;
    numeric_date(claims, "iat")?;
    // Floats keep the comparison exact for every integer a token carries in practice (< 2^53).
    let (now, leeway) = (now as f64, expected.leeway as f64);
    if now >= exp + leeway {
        return Err(Denied::Expired);
    }
    if nbf.is_some_and(|nbf| nbf > now + leeway) {
        return Err(Denied::NotYetValid);
    }
    match claims.get("iss") {
        Some(Value::String(iss)) if iss == expected.issuer => {}
        _ => return Err(Denied::BadIssuer),
    }
    let accepted = |a: &str| expected.audiences.contains(&a);
    let named = match claims.get("aud") {
        Some(Value::String(aud)) => accepted(aud),
        Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str().is_some_and(accepted)),
        _ => false,
    };
    if !named {
        return Err(Denied::BadAudience);
    }
    // `exp` is finite and past `now - leeway` (≥ 0 after the check above, give or take the
    // leeway): the cast saturates rather than wraps for the rest.
    Ok(exp.floor().max(0.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;
    const ISS: &str = "https://as.example/tenant/v2.0";
    const AUD: &str = "https://edge.example/mcp";

    fn expected() -> Expected<'static> {
        Expected {
            issuer: ISS,
            audiences: &[AUD],
            leeway: 30,
        }
    }

    fn good() -> Value {
        json!({"iss": ISS, "aud": AUD, "exp": NOW + 600, "iat": NOW, "nbf": NOW - 10})
    }

    fn with(over: Value) -> Value {
        let mut c = good();
        for (k, v) in over.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    }

    fn verdict(c: &Value) -> Result<u64, Denied> {
        check(c, &expected(), NOW)
    }

    #[test]
    fn a_well_formed_token_passes_and_reports_its_expiry() {
        assert_eq!(verdict(&good()), Ok(NOW + 600));
        // Fractional NumericDates are legal; the expiry is rounded down.
        assert_eq!(
            verdict(&with(json!({"exp": NOW as f64 + 600.7}))),
            Ok(NOW + 600)
        );
        // `nbf` and `iat` are optional.
        assert!(verdict(&with(json!({"nbf": null, "iat": null}))).is_ok());
    }

    #[test]
    fn registered_time_claims_of_the_wrong_type_are_refused_not_skipped() {
        for (claim, value) in [
            ("exp", json!("never")),
            ("exp", json!(format!("{}", NOW + 600))),
            ("exp", json!(null)),
            ("exp", json!(true)),
            ("nbf", json!("99999999999")),
            ("nbf", json!([NOW])),
            ("iat", json!("now")),
            ("iat", json!({"t": NOW})),
        ] {
            let mut c = good();
            c[claim] = value.clone();
            assert_eq!(verdict(&c), Err(Denied::BadClaim), "{claim}: {value}");
            // Reject twin: the same claim well-formed passes.
            let mut c = good();
            c[claim] = json!(NOW - 5);
            if claim == "exp" {
                c[claim] = json!(NOW + 5);
            }
            assert!(verdict(&c).is_ok(), "{claim} well-formed");
        }
        assert_eq!(verdict(&with(json!({"exp": null}))), Err(Denied::BadClaim));
        assert_eq!(verdict(&json!([good()])), Err(Denied::BadClaim));
    }

    #[test]
    fn time_windows_allow_the_leeway_and_no_more() {
        assert_eq!(
            verdict(&with(json!({"exp": NOW - 31}))),
            Err(Denied::Expired)
        );
        assert!(verdict(&with(json!({"exp": NOW - 29}))).is_ok());
        assert_eq!(
            verdict(&with(json!({"nbf": NOW + 31}))),
            Err(Denied::NotYetValid)
        );
        assert!(verdict(&with(json!({"nbf": NOW + 29}))).is_ok());
        assert_eq!(
            verdict(&with(json!({"nbf": 99_999_999_999u64}))),
            Err(Denied::NotYetValid)
        );
    }

    #[test]
    fn issuer_is_compared_exactly() {
        for iss in [
            json!(format!("{ISS}/")),
            json!(ISS.to_uppercase()),
            json!([ISS]),
            json!(null),
        ] {
            assert_eq!(
                verdict(&with(json!({ "iss": iss.clone() }))),
                Err(Denied::BadIssuer),
                "{iss}"
            );
        }
    }

    #[test]
    fn audience_may_be_a_string_or_an_array() {
        assert!(verdict(&with(json!({"aud": [AUD]}))).is_ok());
        assert!(verdict(&with(json!({"aud": ["api://other", AUD]}))).is_ok());
        for aud in [
            json!(format!("{AUD}/")),
            json!(["api://other"]),
            json!([]),
            json!({"aud": AUD}),
            json!(null),
        ] {
            assert_eq!(
                verdict(&with(json!({ "aud": aud.clone() }))),
                Err(Denied::BadAudience),
                "{aud}"
            );
        }
    }
}
