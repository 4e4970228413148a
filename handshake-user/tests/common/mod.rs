//! Shared support for the privileged tests: the CLI against a lab, and
//! (re-exported) the test-run harness and the packet builder.
#![allow(
    dead_code,
    unused_imports,
    reason = "each test binary uses part of this module"
)]

pub mod cli;
pub mod daemon;
pub mod xdptools;
pub use cli::{Attached, GATE, ack_flood, cli, cli_with, flood, pin_dir, spoofed_flood};

pub use handshake_lab::packet::*;
pub use handshake_user::testrun::*;
