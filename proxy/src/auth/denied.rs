//! Why a request was refused by access control, and how that is said: the metric label, the
//! status, the RFC 6750 error code and challenge (RFC 9728's metadata pointer), the JSON body.

/// Why a request was refused. Each has a metric label, a status and the RFC 6750 error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    Missing,
    /// `Authorization` with another scheme (`Basic …`): answered like a request without
    /// credentials (RFC 6750 §3.1: no error code).
    UnsupportedScheme,
    Malformed,
    Expired,
    NotYetValid,
    BadSignature,
    UnknownKey,
    BadAlgorithm,
    BadIssuer,
    BadAudience,
    /// A registered claim missing (`exp`) or of the wrong JSON type.
    BadClaim,
    InsufficientScope,
    Inactive,
    BadApiKey,
    /// The authorization server could not be reached to check the token.
    IssuerUnavailable,
    /// A DPoP proof missing where the scheme needs one, malformed, for another request or
    /// token, stale, or replayed (RFC 9449 `invalid_dpop_proof`).
    InvalidDpopProof,
    /// A bearer token where the route requires DPoP: answered like another scheme.
    DpopRequired,
    /// A DPoP-bound token presented as a bearer token, or under DPoP without the key it names.
    DpopBinding,
}

/// The authentication scheme a challenge is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Bearer,
    DPoP,
}

impl Denied {
    pub fn label(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::UnsupportedScheme => "unsupported_scheme",
            Self::Malformed => "malformed",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::BadSignature => "bad_signature",
            Self::UnknownKey => "unknown_key",
            Self::BadAlgorithm => "bad_algorithm",
            Self::BadIssuer => "bad_issuer",
            Self::BadAudience => "bad_audience",
            Self::BadClaim => "bad_claim",
            Self::InsufficientScope => "insufficient_scope",
            Self::Inactive => "inactive",
            Self::BadApiKey => "bad_api_key",
            Self::IssuerUnavailable => "issuer_unavailable",
            Self::InvalidDpopProof => "invalid_dpop_proof",
            Self::DpopRequired => "dpop_required",
            Self::DpopBinding => "dpop_binding",
        }
    }

    /// Whether the request offered a credential that turned out wrong (what a guesser does),
    /// as opposed to none, another scheme, or an authorization server that cannot be asked.
    pub fn is_a_guess(self) -> bool {
        !matches!(
            self,
            Self::Missing
                | Self::UnsupportedScheme
                | Self::IssuerUnavailable
                | Self::DpopRequired
                // A valid token without a scope (a step-up), or a proof a clock skewed: not
                // a guess at a credential.
                | Self::InsufficientScope
                | Self::InvalidDpopProof
        )
    }

    pub fn status(self) -> u16 {
        match self {
            Self::InsufficientScope => 403,
            Self::IssuerUnavailable => 503,
            _ => 401,
        }
    }

    /// RFC 6750 §3.1; none for a request that carried no credentials.
    fn error_code(self) -> Option<&'static str> {
        match self {
            Self::Missing
            | Self::UnsupportedScheme
            | Self::IssuerUnavailable
            | Self::DpopRequired => None,
            Self::InsufficientScope => Some("insufficient_scope"),
            Self::InvalidDpopProof => Some("invalid_dpop_proof"),
            // A bearer credential that is not a token is an invalid token (RFC 6750 §3.1;
            // `invalid_request` is for a request that is malformed, answered 400).
            _ => Some("invalid_token"),
        }
    }

    fn description(self) -> &'static str {
        match self {
            Self::Missing => "authorization required",
            Self::UnsupportedScheme => "authorization required: use Authorization: Bearer",
            Self::Malformed => "the credentials are not a well-formed bearer token",
            Self::Expired => "the token has expired",
            Self::NotYetValid => "the token is not valid yet",
            Self::BadSignature => "the token's signature does not verify",
            Self::UnknownKey => "the token is signed by a key the issuer does not publish",
            Self::BadAlgorithm => "the token's algorithm is not accepted",
            Self::BadIssuer => "the token is from another issuer",
            Self::BadAudience => "the token was issued for another resource",
            Self::BadClaim => "the token's exp, nbf or iat is missing or not a number",
            Self::InsufficientScope => "the token lacks a required scope",
            Self::Inactive => "the token is not active",
            Self::BadApiKey => "unknown API key",
            Self::IssuerUnavailable => "the authorization server cannot be reached; try again",
            Self::InvalidDpopProof => {
                "the DPoP proof is missing, malformed, stale, replayed, or for another request"
            }
            Self::DpopRequired => "authorization required: use Authorization: DPoP",
            Self::DpopBinding => "the token is bound to a DPoP key this request does not prove",
        }
    }

    /// The `WWW-Authenticate` value (RFC 6750 §3, RFC 9728 §5.1).
    pub fn challenge(self, metadata_url: Option<&str>, scopes: &[String]) -> String {
        self.challenge_for(Scheme::Bearer, metadata_url, scopes)
    }

    /// The challenge of `scheme` (a `DPoP` one lists the proof algorithms, RFC 9449 §7.1); a
    /// proof's error is only said in the `DPoP` challenge.
    pub fn challenge_for(
        self,
        scheme: Scheme,
        metadata_url: Option<&str>,
        scopes: &[String],
    ) -> String {
        let mut parts = Vec::new();
        if scheme == Scheme::DPoP {
            parts.push(format!("algs=\"{}\"", super::dpop::algs()));
        }
        let code = self
            .error_code()
            .filter(|_| scheme == Scheme::DPoP || self != Self::InvalidDpopProof);
        if let Some(code) = code {
            parts.push(format!("error=\"{code}\""));
            parts.push(format!("error_description=\"{}\"", self.description()));
        }
        match metadata_url {
            Some(url) => parts.push(format!("resource_metadata=\"{url}\"")),
            None => parts.push("realm=\"mcp-edge\"".to_string()),
        }
        if !scopes.is_empty() {
            parts.push(format!("scope=\"{}\"", scopes.join(" ")));
        }
        let name = match scheme {
            Scheme::Bearer => "Bearer",
            Scheme::DPoP => "DPoP",
        };
        format!("{name} {}", parts.join(", "))
    }

    /// The JSON body of the refusal.
    pub fn body(self) -> String {
        serde_json::json!({
            "error": self.error_code().unwrap_or(if self == Self::IssuerUnavailable { "temporarily_unavailable" } else { "unauthorized" }),
            "error_description": self.description(),
        })
        .to_string()
    }
}
