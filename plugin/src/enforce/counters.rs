//! Enforcement's counters and its queue gauge, each defined by name with its meaning beside it
//! (`wasmcustom.<name>`; docs/enforcement.md lists the same names). One list: the struct, its
//! definition in the host, the tick's flush and [`ALL`] are generated from it, so adding a counter
//! cannot relabel another.

use crate::host;
use crate::metrics::Counter;

macro_rules! counters {
    ($( $field:ident = $name:literal, $help:literal; )*) => {
        /// Enforcement's counters (see the module doc).
        pub(super) struct Counters {
            $( #[doc = $help] pub(super) $field: Option<Counter>, )*
            /// The queue gauge's host id (`u32::MAX` if the host refused it).
            pub(super) usage_unacked: u32,
        }

        /// Every metric enforcement defines, with its meaning: (name, help).
        pub const ALL: &[(&str, &str)] = &[ $( ($name, $help), )* (UNACKED_GAUGE, UNACKED_HELP) ];

        impl Counters {
            pub(super) fn define() -> Counters {
                Counters {
                    $( $field: Counter::define($name), )*
                    usage_unacked: host::define_gauge(UNACKED_GAUGE).unwrap_or(u32::MAX),
                }
            }

            /// Hands the pending counts to the host.
            pub(super) fn flush(&self) {
                $( if let Some(c) = &self.$field { c.flush(); } )*
            }
        }
    };
}

counters! {
    admitted = "tollgate_enforce_admitted_total", "requests admitted with a reservation";
    pooled = "tollgate_enforce_pooled_total", "requests admitted from this worker's lease pools (no shared-data call)";
    paused = "tollgate_enforce_paused_total", "requests that waited for a lease call";
    refused = "tollgate_enforce_refused_total", "429s";
    unavailable = "tollgate_enforce_unavailable_total", "503s (counter unreachable, fail-closed)";
    fail_open = "tollgate_enforce_fail_open_total", "requests admitted without reservation (counter unreachable, fail-open)";
    would_refuse = "tollgate_enforce_observe_would_refuse_total", "requests an observe-mode budget would have refused";
    soft_warning = "tollgate_enforce_soft_warning_total", "responses with a soft-threshold warning";
    excess_micros = "tollgate_enforce_excess_micros_total", "term (1) of the bound: the sum of (actual - reserved)+";
    p99_excess_micros = "tollgate_enforce_p99_excess_micros_total", "reserve: p99 budgets: cost beyond the p99 reservation, summed over requests (the largest per request)";
    unreserved_micros = "tollgate_enforce_unreserved_micros_total", "term (2): cost of requests settled without reservation";
    settled = "tollgate_enforce_settled_total", "requests settled (real cost charged, record queued)";
    released_unsettled = "tollgate_enforce_released_unsettled_total", "reservations given back without a charge";
    double_settle = "tollgate_enforce_double_settle_prevented_total", "second settlements ignored (should stay 0)";
    late_settlements = "tollgate_enforce_late_settlements_total", "settlements that found the worker busy and were taken in on its next use (should stay 0)";
    lease_calls = "tollgate_lease_calls_total", "lease calls";
    lease_failures = "tollgate_lease_call_failures_total", "lease calls that failed";
    topups = "tollgate_lease_topups_total", "background lease top-ups";
    usage_posts = "tollgate_usage_posts_total", "usage batches posted";
    usage_post_failures = "tollgate_usage_post_failures_total", "usage batches that failed";
    usage_acked = "tollgate_usage_records_acked_total", "records acknowledged by the counter";
    usage_requeued = "tollgate_usage_records_requeued_total", "records put back for redelivery";
    usage_dropped = "tollgate_usage_dropped_total", "records dropped (queue full or unreadable)";
}

/// The queue gauge: records queued or in flight, not yet acknowledged (process-wide).
const UNACKED_GAUGE: &str = "tollgate_usage_unacked";
const UNACKED_HELP: &str = "records queued or in flight, not yet acknowledged (gauge)";

/// Adds to a counter the host defined (a refused one is skipped).
pub(super) fn inc(counter: &Option<Counter>, by: u64) {
    Counter::add(counter, by);
}

#[cfg(test)]
mod tests {
    use super::ALL;

    #[test]
    fn every_metric_has_one_name_and_is_documented() {
        let docs = include_str!("../../../docs/enforcement.md");
        for (i, (name, help)) in ALL.iter().enumerate() {
            assert!(!help.is_empty(), "{name} has a meaning");
            assert!(!ALL.iter().skip(i + 1).any(|(other, _)| other == name), "{name} is defined twice");
            assert!(docs.contains(&format!("`{name}`")), "docs/enforcement.md lists `{name}`");
        }
    }
}
