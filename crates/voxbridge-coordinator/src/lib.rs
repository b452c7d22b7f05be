//! The coordinator of distributed training: rendezvous, subject sharding, heartbeats and
//! restarts. Its decisions are a pure function ([`decide`]) of the time, what it has observed
//! and its limits; the event loop that carries them out over TCP is the next step.

pub mod decide;
