//! Ready-made [`Resource`](crate::Resource)s for common kinds of resources.

pub mod websocket;
