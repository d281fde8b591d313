//! The decision core of cluster-load-balancer: plain synchronous Rust, inputs
//! in, decisions out.
//!
//! This crate is *not* a runtime. It has no tokio, reads no clock, opens no
//! socket and draws no randomness of its own: time arrives as [`Millis`] with
//! every input, randomness through an injected [`rand_core::Rng`]. The async
//! library (`clb`), the simulator (`clb-sim`) and the tests all drive the same
//! code, which is why a simulation predicts what production does.
//!
//! # The round (SPEC §3)
//!
//! Every `round_duration`, each node:
//!
//! 1. reads its own resource count, fresh, at the tick ([`Action::ReadCount`]);
//! 2. publishes its [`Report`] ([`Action::Publish`], encoded by [`wire`]) and
//!    fetches the namespace's members as the backend holds them: raw values
//!    with their ages ([`Action::FetchView`], [`MemberRecord`]);
//! 3. assembles the view itself ([`MemberTable`]: decoding, one member per
//!    node id, duplicated ids) and discards the round if any live member
//!    lacks a usable report that changed within the last round
//!    ([`round::collect`], [`DiscardReason`]);
//! 4. otherwise runs the [`strategy`] on the complete [`Round`], applies the
//!    [`safety`] limits (hard cap, settle rounds, dry run) and sheds, paced in
//!    jittered batches ([`Action::Shed`]).
//!
//! Between rounds each node republishes its report four times a round, so a
//! healthy member is never mistaken for a stale one.
//!
//! # Driving it
//!
//! [`Balancer`] is the state machine; its docs give the driver contract. The
//! strategies are free functions over values, usable on their own:
//!
//! ```
//! use clb_core::{Config, Round, strategy::classic};
//!
//! // Node 0 holds 100, node 1 holds 59: the original sheds 10 from node 0.
//! let round = Round::from_counts(0, &[100, 59], &[0.5, 0.4]);
//! let decision = classic::decide(&round, &Config::classic());
//! assert_eq!(decision.amount, 10);
//! ```

pub mod balancer;
pub mod config;
pub mod event;
pub mod member;
pub mod report;
pub mod round;
pub mod safety;
pub mod strategy;
pub mod time;
pub mod wire;

pub use balancer::{Action, Balancer, CountFailed, Hint, ShedFailed, ViewFailed};
pub use config::{
    Config, ConfigError, Strategy, validate_address, validate_namespace, validate_node_id,
};
pub use event::{Event, HoldReason, MemberCount, RoundEvent, RoundOutcome};
pub use member::{MemberRecord, MemberTable};
pub use report::{ClusterView, MemberView, NodeId, Report, TieBreaker};
pub use round::{DiscardReason, Entry, Round};
pub use strategy::{Decision, Deficit};
pub use time::Millis;
pub use wire::ReportError;
