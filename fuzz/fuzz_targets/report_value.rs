//! A report value as any peer or a hand-written Redis entry can make it:
//! decoding never panics, and what decodes re-encodes to the same report.
#![no_main]

use clb_core::NodeId;
use clb_core::wire::{decode, decode_in, encode_in};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let value = String::from_utf8_lossy(data);
    let node = NodeId::new("n1");
    let _ = decode(&node, &value);
    if let Ok(report) = decode_in(&node, &value, Some("ws")) {
        assert!(report.is_valid(), "decoded an unusable report: {value:?}");
        let again = encode_in(&report, "ws");
        assert_eq!(decode_in(&node, &again, Some("ws")), Ok(report));
    }
});
