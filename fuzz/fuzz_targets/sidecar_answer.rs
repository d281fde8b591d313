//! What a service answers the sidecar's count and shed calls: a number is
//! taken only when the body is exactly one, anything else is refused with a
//! reason, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match clb_cli::cmd::sidecar::parse_answer(data) {
        Ok(n) => {
            let text = std::str::from_utf8(data).expect("a number from bytes that are not text");
            let digits = text.trim().trim_start_matches(['+', '-']);
            assert!(!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()), "{text:?}");
            assert_eq!(digits.parse::<u64>().ok(), Some(n), "{text:?}");
        }
        Err((reason, _)) => assert!(["not_a_number", "negative"].contains(&reason), "{reason}"),
    }
});
