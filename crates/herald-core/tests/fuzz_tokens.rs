//! Property tests: the token verifier and the claims/pattern parsers never panic on arbitrary
//! input, and never accept a token that was not signed with the configured key.

use herald_core::auth::{TokenKind, patterns};
use herald_core::{AuthConfig, Verifier};
use proptest::prelude::*;

fn verifier() -> Verifier {
    Verifier::from_config(&AuthConfig {
        hmac_secret: Some("proptest-secret-proptest-secret-proptest".into()),
        ..Default::default()
    })
    .expect("verifier")
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_strings_are_rejected(token in "[ -~]{0,300}") {
        let v = verifier();
        prop_assert!(v.verify(&token, TokenKind::Connection).is_err());
        prop_assert!(v.verify(&token, TokenKind::Channel).is_err());
    }

    #[test]
    fn well_formed_but_unsigned_tokens_are_rejected(
        alg in prop_oneof![Just("HS256".to_owned()), Just("none".to_owned()), Just("RS256".to_owned()), Just("ES256".to_owned()), Just("EdDSA".to_owned()), "[A-Za-z0-9]{0,8}"],
        claims in "[ -~]{0,200}",
        sig in "[A-Za-z0-9_-]{0,90}",
    ) {
        let header = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
        let token = format!("{}.{}.{sig}", b64(&header), b64(&claims));
        prop_assert!(verifier().verify(&token, TokenKind::Connection).is_err());
        let token = format!(
            "{}.{}.{sig}",
            b64(&header),
            b64(r#"{"sub":"x","exp":99999999999,"channels":["*"]}"#)
        );
        prop_assert!(verifier().verify(&token, TokenKind::Connection).is_err());
    }

    #[test]
    fn patterns_never_panic(p in "[a-z*:#,]{0,20}", c in "[a-z:#,]{0,40}") {
        let m = patterns::matches(&p, &c);
        if !p.contains('*') {
            prop_assert_eq!(m, p == c);
        }
        let _ = patterns::user_allowed(&c, "a");
    }
}
