//! Approvals: actions that a policy marks `ask` wait here until a person decides.
//!
//! The kernel side (fanotify holds for exec and writes, the egress path) stops the
//! action, describes it as a [`HoldRequest`] and [`HoldService::submit`]s it. The
//! service answers at once when it can (a live `approve --for` grant, the
//! identity's `approvals.max_pending` cap, the rate limit), and otherwise holds the
//! request and hands back a receiver that gets exactly one [`Resolution`]: a
//! person's decision ([`HoldService::decide`]), the policy's `on_timeout` at the
//! deadline ([`HoldService::expire`]), or a denial when the daemon stops
//! ([`HoldService::cancel_all`]). A held action is never let through without one
//! of those.
//!
//! ```text
//! kernel ──submit──▶ HoldService ──Held{id, wait}──▶ kernel awaits `wait`
//!                       │  ▲
//!        HoldEvent ◀────┘  └── decide(id) / expire(now) / cancel_all(now)
//!   (watch CLI, webhook)
//! ```
//!
//! The service is plain data: no I/O, no threads, no clock. The caller passes the
//! time in, keeps it behind a lock, and runs the timer that calls `expire` at
//! [`HoldService::next_deadline`].
#![forbid(unsafe_code)]

pub mod service;
pub mod webhook;

pub use service::{
    Decider, Decision, Grant, HoldError, HoldEvent, HoldKind, HoldRequest, HoldService, How, Pending, RateLimit,
    Resolution, Submitted, Verdict, MAX_GRANT,
};
