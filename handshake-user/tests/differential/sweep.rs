//! The differential test's last look: the kernel's sweep against the
//! model's.

use handshake_common::model::Model;
use handshake_common::{Config, FlowKey, maps};
use handshake_user::testrun::Harness;

/// The kernel's sweep (the daemon's) judged at the moment when about half
/// of the entries that can expire have (the middle one's deadline: a
/// half-open attempt's timeout, a finished connection's TIME_WAIT; before
/// now if the timeouts drawn are short), against the model's sweep of the
/// same entries at the same moment: the same entries go, the same number
/// is said to have gone, and the same count is made and kept of the rest.
pub fn check(h: &Harness, cfg: &Config, now: u64, i: u64, seed: u64) {
    use handshake_common::machine::finished;
    let (half, est) = (h.flows(maps::HALF_OPEN), h.flows(maps::ESTABLISHED));
    // When `then` (an entry's tick) plus `span` is, on the ns clock.
    let at = |then: u32, span: u64| {
        now.wrapping_add_signed(-handshake_common::flow::since_ns(now, then)) + span
    };
    let mut deadlines: Vec<u64> = half
        .iter()
        .map(|(_, e)| at(e.created, cfg.half_open_timeout_ns()))
        .chain(
            est.iter()
                .filter(|(_, e)| finished(e))
                .map(|(_, e)| at(e.last_seen, cfg.time_wait_ns())),
        )
        .collect();
    deadlines.sort_unstable();
    let later = deadlines
        .get(deadlines.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(now);
    let replay = format!(
        "replay: HANDSHAKE_FUZZ_SEED={seed} HANDSHAKE_FUZZ_FROM={i} HANDSHAKE_FUZZ_SEQUENCES=1"
    );
    let mut model = Model {
        half_open: half.iter().copied().collect(),
        established: est.iter().copied().collect(),
        ..Model::default()
    };
    let (reference, swept) = model.sweep(cfg, later);
    let keep = 10_000_000_000;
    let (out, kept) = h.sweep(later, keep);
    assert_eq!(out.tally, reference, "the sweep's count; {replay}");
    assert_eq!(out.swept, swept, "entries swept from each map; {replay}");
    assert_eq!(
        (kept.taken_ns, kept.until_ns, kept.tally),
        (later, later + keep, reference),
        "the count the sweep kept; {replay}"
    );
    let sorted = |mut v: Vec<(FlowKey, handshake_common::FlowEntry)>| {
        v.sort_by_key(|(k, _)| *k);
        v
    };
    assert_eq!(
        sorted(h.flows(maps::HALF_OPEN)),
        model.half_open.into_iter().collect::<Vec<_>>(),
        "half-open entries after the sweep; {replay}"
    );
    assert_eq!(
        sorted(h.flows(maps::ESTABLISHED)),
        model.established.into_iter().collect::<Vec<_>>(),
        "established entries after the sweep; {replay}"
    );
    println!(
        "differential: the kernel's sweep deleted {swept:?} of {:?} entries, as the model does",
        [half.len(), est.len()]
    );
}
