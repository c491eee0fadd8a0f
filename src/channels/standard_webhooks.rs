//! The Standard Webhooks signing scheme, both directions.
//!
//! Signed content is `{webhook-id}.{webhook-timestamp}.{raw body}`, HMAC-SHA256 with
//! the base64-decoded secret (after stripping `whsec_`). The `webhook-signature`
//! header lists one or more `v1,<base64>` signatures separated by spaces so senders
//! can rotate keys; one match is enough. Comparison is constant-time (`Mac::verify_slice`).
//! Timestamps outside the tolerance, in either direction, are refused so a captured
//! request cannot be replayed later. The body is verified as raw bytes, never
//! re-serialized.

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = hmac::Hmac<Sha256>;

/// A `whsec_…` key, decoded.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("secret must start with whsec_")]
    MissingPrefix,
    #[error("secret after whsec_ is not valid base64")]
    NotBase64,
    #[error("secret must decode to at least 16 bytes")]
    TooShort,
}

impl SigningKey {
    pub fn parse(secret: &str) -> Result<Self, KeyError> {
        let encoded = secret
            .trim()
            .strip_prefix("whsec_")
            .ok_or(KeyError::MissingPrefix)?;
        let bytes = STANDARD.decode(encoded).map_err(|_| KeyError::NotBase64)?;
        if bytes.len() < 16 {
            return Err(KeyError::TooShort);
        }
        Ok(Self(bytes))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.0)
            .expect("HMAC accepts keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `webhook-signature` header value for a message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }

    /// Verifies the three Standard Webhooks headers against the raw body.
    pub fn verify(
        &self,
        headers: &SignedHeaders<'_>,
        body: &[u8],
        now_unix: i64,
        tolerance_secs: i64,
    ) -> Result<(), VerifyError> {
        if headers.id.is_empty() || headers.id.contains('.') {
            return Err(VerifyError::MalformedHeader("webhook-id"));
        }
        let timestamp: i64 = headers
            .timestamp
            .trim()
            .parse()
            .map_err(|_| VerifyError::MalformedHeader("webhook-timestamp"))?;
        if now_unix.abs_diff(timestamp) > tolerance_secs.unsigned_abs() {
            return Err(VerifyError::TimestampOutOfTolerance {
                skew_secs: now_unix.saturating_sub(timestamp),
            });
        }
        let mut saw_v1 = false;
        for candidate in headers.signature.split(' ') {
            let Some(encoded) = candidate.strip_prefix("v1,") else {
                continue;
            };
            saw_v1 = true;
            let Ok(tag) = STANDARD.decode(encoded) else {
                continue;
            };
            if self
                .mac(headers.id, timestamp, body)
                .verify_slice(&tag)
                .is_ok()
            {
                return Ok(());
            }
        }
        if saw_v1 {
            Err(VerifyError::NoMatchingSignature)
        } else {
            Err(VerifyError::MalformedHeader("webhook-signature"))
        }
    }
}

/// The three headers a Standard Webhooks request carries.
#[derive(Debug, Clone, Copy)]
pub struct SignedHeaders<'a> {
    pub id: &'a str,
    pub timestamp: &'a str,
    pub signature: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("header {0} is malformed")]
    MalformedHeader(&'static str),
    #[error("webhook-timestamp is {skew_secs}s away from now, outside the tolerance")]
    TimestampOutOfTolerance { skew_secs: i64 },
    #[error("no v1 signature matches")]
    NoMatchingSignature,
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: i64 = 1614265330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn headers<'a>(id: &'a str, ts: &'a str, sig: &'a str) -> SignedHeaders<'a> {
        SignedHeaders {
            id,
            timestamp: ts,
            signature: sig,
        }
    }

    #[test]
    fn signs_the_spec_known_answer() {
        let key = SigningKey::parse(SPEC_SECRET).unwrap();
        assert_eq!(key.sign(SPEC_ID, SPEC_TS, SPEC_BODY), SPEC_SIG);
    }

    #[test]
    fn verifies_the_sample_vector() {
        let body = include_bytes!("../../tests/fixtures/standard_webhooks.json");
        let key = SigningKey::parse("whsec_wnZ1DmpbJjf19/rRxzrRy/YViJzl6Z9x0FBC20qkzSU=").unwrap();
        let h = headers(
            "msg_2nVQ4C1bQK8u6Xj0aWm3",
            "1767225661",
            "v1,IvbBgBXO/IgP6WtlvEWl8CEAGsaV6Qamjo4NaXalQQ4=",
        );
        assert_eq!(key.verify(&h, body, 1767225661, 300), Ok(()));
    }

    #[test]
    fn accepts_any_of_several_signatures() {
        let key = SigningKey::parse(SPEC_SECRET).unwrap();
        let sig = format!("v1,Zm9vYmFy v1a,abc {SPEC_SIG}");
        let ts = SPEC_TS.to_string();
        assert_eq!(
            key.verify(&headers(SPEC_ID, &ts, &sig), SPEC_BODY, SPEC_TS, 300),
            Ok(())
        );
    }

    #[test]
    fn refuses_a_changed_body() {
        let key = SigningKey::parse(SPEC_SECRET).unwrap();
        let ts = SPEC_TS.to_string();
        assert_eq!(
            key.verify(
                &headers(SPEC_ID, &ts, SPEC_SIG),
                br#"{"test": 2432232315}"#,
                SPEC_TS,
                300
            ),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn refuses_timestamps_outside_the_tolerance_both_ways() {
        let key = SigningKey::parse(SPEC_SECRET).unwrap();
        let ts = SPEC_TS.to_string();
        let h = headers(SPEC_ID, &ts, SPEC_SIG);
        assert!(matches!(
            key.verify(&h, SPEC_BODY, SPEC_TS + 301, 300),
            Err(VerifyError::TimestampOutOfTolerance { skew_secs: 301 })
        ));
        assert!(matches!(
            key.verify(&h, SPEC_BODY, SPEC_TS - 301, 300),
            Err(VerifyError::TimestampOutOfTolerance { .. })
        ));
        assert_eq!(key.verify(&h, SPEC_BODY, SPEC_TS + 300, 300), Ok(()));
    }

    #[test]
    fn refuses_malformed_headers() {
        let key = SigningKey::parse(SPEC_SECRET).unwrap();
        let ts = SPEC_TS.to_string();
        assert_eq!(
            key.verify(&headers("a.b", &ts, SPEC_SIG), SPEC_BODY, SPEC_TS, 300),
            Err(VerifyError::MalformedHeader("webhook-id"))
        );
        assert_eq!(
            key.verify(&headers(SPEC_ID, "soon", SPEC_SIG), SPEC_BODY, SPEC_TS, 300),
            Err(VerifyError::MalformedHeader("webhook-timestamp"))
        );
        assert_eq!(
            key.verify(
                &headers(SPEC_ID, &ts, "sha256=abc"),
                SPEC_BODY,
                SPEC_TS,
                300
            ),
            Err(VerifyError::MalformedHeader("webhook-signature"))
        );
    }

    #[test]
    fn parses_secrets_strictly() {
        assert!(SigningKey::parse(SPEC_SECRET).is_ok());
        assert_eq!(
            SigningKey::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err(),
            KeyError::MissingPrefix
        );
        assert_eq!(
            SigningKey::parse("whsec_!!").unwrap_err(),
            KeyError::NotBase64
        );
        assert_eq!(
            SigningKey::parse("whsec_YWJj").unwrap_err(),
            KeyError::TooShort
        );
    }
}
