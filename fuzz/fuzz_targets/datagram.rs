//! A gossip datagram as anyone on the network can send it: checking it
//! never panics, a forged one never opens, and chitchat's decoder never
//! panics on what a keyed peer (or anyone, without a key) may put inside.
#![no_main]

use std::net::SocketAddr;

use chitchat::{ChitchatMessage, Deserializable};
use clb::backend::gossip::transport::{Receiver, ReplayGuard, Route, open, seal};
use clb::backend::gossip::ClusterKey;
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_750_000_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(key) = ClusterKey::new("a fuzzing key of thirty-two bytes!") else {
        return;
    };
    let keys = [key];
    let me: SocketAddr = ([127, 0, 0, 1], 7001).into();
    let peer: SocketAddr = ([127, 0, 0, 2], 7002).into();
    let own = [me];
    let signed = Receiver { keys: &keys, own: &own, from: peer, unix_ms: NOW };
    let trusted = Receiver { keys: &[], own: &own, from: peer, unix_ms: NOW };

    // Arbitrary bytes, as received: a random tag never verifies.
    if open(&signed, &mut ReplayGuard::default(), data).is_ok() {
        panic!("a datagram nobody signed was accepted");
    }
    if let Ok(mut message) = open(&trusted, &mut ReplayGuard::default(), data) {
        let _ = ChitchatMessage::deserialize(&mut message);
    }

    // The same bytes as the message of a correctly signed datagram: it
    // opens exactly once, to the same bytes, and only for its recipient.
    let route = Route { from: peer, to: me };
    let datagram = seal(&keys, 7, 1, NOW, route, data);
    let mut replay = ReplayGuard::default();
    if datagram.len() <= clb::backend::gossip::transport::MAX_DATAGRAM {
        let opened = open(&signed, &mut replay, &datagram);
        assert_eq!(opened, Ok(data));
        assert!(open(&signed, &mut replay, &datagram).is_err(), "replay accepted");
        let elsewhere = Receiver { from: me, ..signed.clone() };
        assert!(open(&elsewhere, &mut ReplayGuard::default(), &datagram).is_err());
        let mut message = data;
        let _ = ChitchatMessage::deserialize(&mut message);
    }
});
