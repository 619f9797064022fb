//! The retry-loop guard's arithmetic: one counter per (principal, task, fingerprint), kept by the
//! plugin in Envoy shared data (so every worker of a gateway shares it, updated by CAS) and
//! decided here on plain data.
//!
//! An entry counts the attempts of the same work within a window. The first attempt and
//! `allowed_retries` more are let through; the next is refused (or, in observe mode, reported and
//! let through) until the window ends or a human checkpoint resets the count. A checkpoint is a
//! value (an id written by a trusted upstream filter into the configured header, or one the
//! counter hands back): a new value resets the count once; the same value again does nothing, so
//! a header left on every request cannot disable the guard.

/// One (principal, task, fingerprint)'s count, as stored in shared data (28 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryEntry {
    /// When the current window began (first attempt after a reset), ms since the epoch.
    pub window_start_ms: i64,
    /// Attempts let through in this window (the first one included).
    pub attempts: u32,
    /// Attempts refused (or, observing, that would have been) in this window.
    pub refusals: u32,
    /// The hash of the last checkpoint applied; 0 = none.
    pub checkpoint: u64,
    /// Attempts other gateways let through in this window, as the counter last answered
    /// ([`merge_others`]): this gateway's own attempts are never in it, so the sum
    /// `attempts + others` counts each attempt once.
    pub others: u32,
}

impl RetryEntry {
    pub const ENCODED_LEN: usize = 28;
    /// An entry written before `others` existed (read as `others: 0`).
    const OLD_LEN: usize = 24;

    /// From when the other gateways' attempts count against this entry (`GuardEvent::since_ms`):
    /// a window before its window start, so attempts made elsewhere before this gateway's first
    /// one count too; once a checkpoint was applied, the window start (what came before the
    /// reset must not come back through the counter).
    pub fn others_since(&self, window_ms: i64) -> i64 {
        if self.checkpoint != 0 {
            self.window_start_ms
        } else {
            self.window_start_ms.saturating_sub(window_ms).saturating_add(1)
        }
    }

    /// Attempts of this work let through in this window, on every gateway the counter has heard of.
    pub fn total(&self) -> u32 {
        self.attempts.saturating_add(self.others)
    }

    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        for (slot, b) in out.iter_mut().zip(
            self.window_start_ms
                .to_le_bytes()
                .into_iter()
                .chain(self.attempts.to_le_bytes())
                .chain(self.refusals.to_le_bytes())
                .chain(self.checkpoint.to_le_bytes())
                .chain(self.others.to_le_bytes()),
        ) {
            *slot = b;
        }
        out
    }

    /// `None` for anything that is not an encoded entry.
    pub fn decode(bytes: &[u8]) -> Option<RetryEntry> {
        if bytes.len() != Self::ENCODED_LEN && bytes.len() != Self::OLD_LEN {
            return None;
        }
        let (start, rest) = bytes.split_at(8);
        let (attempts, rest) = rest.split_at(4);
        let (refusals, rest) = rest.split_at(4);
        let (checkpoint, others) = rest.split_at(8);
        Some(RetryEntry {
            window_start_ms: i64::from_le_bytes(start.try_into().ok()?),
            attempts: u32::from_le_bytes(attempts.try_into().ok()?),
            refusals: u32::from_le_bytes(refusals.try_into().ok()?),
            checkpoint: u64::from_le_bytes(checkpoint.try_into().ok()?),
            others: if others.is_empty() { 0 } else { u32::from_le_bytes(others.try_into().ok()?) },
        })
    }
}

/// The guard's settings for one decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryLimits {
    pub allowed_retries: u32,
    pub window_ms: i64,
    /// Count and report, never refuse.
    pub observe: bool,
}

/// What the guard decided about one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Let through; `retry` is 0 for the first attempt, then 1, 2, …
    Pass { retry: u32 },
    /// Over the limit: refuse (429). `attempts` is how many went through in this window.
    Refuse { attempts: u32 },
    /// Over the limit in observe mode: let through and report.
    Observe { retry: u32 },
}

/// One attempt against `entry` (absent: never seen). `checkpoint` is the hash of a checkpoint
/// presented with this request, if any. Returns the entry to store and the decision.
pub fn attempt(entry: Option<RetryEntry>, now_ms: i64, limits: RetryLimits, checkpoint: Option<u64>) -> (RetryEntry, Decision) {
    let mut e = entry.unwrap_or_default();
    let expired = entry.is_none() || now_ms.saturating_sub(e.window_start_ms) >= limits.window_ms || now_ms < e.window_start_ms;
    let new_checkpoint = checkpoint.filter(|c| *c != 0 && *c != e.checkpoint);
    if expired || new_checkpoint.is_some() {
        e = RetryEntry { window_start_ms: now_ms, attempts: 0, refusals: 0, checkpoint: new_checkpoint.unwrap_or(e.checkpoint), others: 0 };
    }
    let allowed = limits.allowed_retries.saturating_add(1);
    if e.total() >= allowed {
        e.refusals = e.refusals.saturating_add(1);
        if limits.observe {
            let retry = e.total();
            e.attempts = e.attempts.saturating_add(1);
            return (e, Decision::Observe { retry });
        }
        return (e, Decision::Refuse { attempts: e.total() });
    }
    let retry = e.total();
    e.attempts = e.attempts.saturating_add(1);
    (e, Decision::Pass { retry })
}

/// The counter's answer for this entry (`GuardCount`): other gateways let `others` attempts
/// through since `since_ms`. Taken only for the count it was asked about (a window that ended or
/// was reset since is a new count), and never lowered (answers may arrive out of order).
pub fn merge_others(entry: RetryEntry, since_ms: i64, others: u32, window_ms: i64) -> RetryEntry {
    if entry.others_since(window_ms) != since_ms {
        return entry;
    }
    RetryEntry { others: entry.others.max(others), ..entry }
}

/// A checkpoint made at the counter at `at_ms` (`GuardCheckpoint`, hashed with
/// [`crate::guard::checkpoint_hash`]): a count whose window began before it starts again now,
/// once (the same checkpoint, from the counter again or in the header, does nothing more).
/// `None` when nothing changes.
pub fn apply_checkpoint(entry: RetryEntry, checkpoint: u64, at_ms: i64, now_ms: i64) -> Option<RetryEntry> {
    if checkpoint == 0 || entry.checkpoint == checkpoint || entry.window_start_ms >= at_ms {
        return None;
    }
    Some(RetryEntry { window_start_ms: now_ms, attempts: 0, refusals: 0, checkpoint, others: 0 })
}

/// A task's failed attempts in a row ("the same task id after a failed or refused attempt"),
/// kept in a [`RetryEntry`] of its own: `attempts` is the streak of failures on this gateway,
/// `others` the failures in a row on the other gateways as the counter last answered
/// ([`merge_streak`]). Before an attempt: a new checkpoint or an ended window clears the streak;
/// past `allowed_retries` failures in a row (everywhere the gateway has heard of) the attempt is
/// refused (observe: reported). Returns the entry to store and the decision.
pub fn task_attempt(entry: Option<RetryEntry>, now_ms: i64, limits: RetryLimits, checkpoint: Option<u64>) -> (RetryEntry, Decision) {
    let mut e = entry.unwrap_or_default();
    let expired = entry.is_none() || now_ms.saturating_sub(e.window_start_ms) >= limits.window_ms || now_ms < e.window_start_ms;
    let new_checkpoint = checkpoint.filter(|c| *c != 0 && *c != e.checkpoint);
    if expired || new_checkpoint.is_some() {
        e = RetryEntry { window_start_ms: now_ms, attempts: 0, refusals: 0, checkpoint: new_checkpoint.unwrap_or(e.checkpoint), others: 0 };
    }
    let failures = e.total();
    if failures > limits.allowed_retries {
        e.refusals = e.refusals.saturating_add(1);
        let decision = if limits.observe { Decision::Observe { retry: failures } } else { Decision::Refuse { attempts: failures } };
        return (e, decision);
    }
    (e, Decision::Pass { retry: failures })
}

/// After an attempt of a task settled: a failure (an error status, or cut before one) lengthens
/// the streak; a success ends it, the other gateways' failures included, and the next streak is
/// counted from now (so an answer about the old one no longer applies: [`merge_streak`]).
pub fn task_outcome(entry: Option<RetryEntry>, now_ms: i64, failed: bool) -> RetryEntry {
    let mut e = entry.unwrap_or(RetryEntry { window_start_ms: now_ms, ..RetryEntry::default() });
    if failed {
        e.attempts = e.attempts.saturating_add(1);
    } else if e.attempts != 0 || e.others != 0 {
        e = RetryEntry { window_start_ms: now_ms, attempts: 0, refusals: 0, checkpoint: e.checkpoint, others: 0 };
    }
    e
}

/// The counter's answer about a task's failure streak (`GuardStreak`): the other gateways failed
/// `others` times in a row since `since_ms` (after the newest success anywhere); `ended` is their
/// newest success and this gateway's own failures the counter holds after it. Taken only for the
/// streak it was asked about. Unlike a retry count, `others` may go down (a success elsewhere
/// ends the streak), so the answer replaces it; a success elsewhere after this streak began also
/// ends this gateway's own failures before it, and the streak is counted from that success on
/// (so the same answer does not end it twice).
pub fn merge_streak(entry: RetryEntry, since_ms: i64, others: u32, ended: Option<(i64, u32)>, window_ms: i64) -> RetryEntry {
    if entry.others_since(window_ms) != since_ms {
        return entry;
    }
    match ended {
        Some((at, own)) if at > entry.window_start_ms => RetryEntry { window_start_ms: at, attempts: own.min(entry.attempts), refusals: 0, checkpoint: entry.checkpoint, others },
        _ => RetryEntry { others, ..entry },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RetryLimits = RetryLimits { allowed_retries: 2, window_ms: 60_000, observe: false };

    fn run(limits: RetryLimits, steps: &[(i64, Option<u64>)]) -> Vec<Decision> {
        let mut entry = None;
        steps
            .iter()
            .map(|(now, checkpoint)| {
                let (e, d) = attempt(entry, *now, limits, *checkpoint);
                entry = Some(e);
                d
            })
            .collect()
    }

    #[test]
    fn two_retries_pass_and_the_third_is_refused() {
        assert_eq!(
            run(LIMITS, &[(0, None), (1, None), (2, None), (3, None), (4, None)]),
            [Decision::Pass { retry: 0 }, Decision::Pass { retry: 1 }, Decision::Pass { retry: 2 }, Decision::Refuse { attempts: 3 }, Decision::Refuse { attempts: 3 }]
        );
    }

    #[test]
    fn allowed_retries_is_the_number_let_through_after_the_first() {
        for allowed in [0u32, 1, 5] {
            let limits = RetryLimits { allowed_retries: allowed, ..LIMITS };
            let steps: Vec<(i64, Option<u64>)> = (0..10).map(|i| (i, None)).collect();
            let passed = run(limits, &steps).iter().filter(|d| matches!(d, Decision::Pass { .. })).count();
            assert_eq!(passed, allowed as usize + 1, "allowed_retries {allowed}");
        }
    }

    #[test]
    fn a_new_checkpoint_resets_the_count_once() {
        assert_eq!(
            run(LIMITS, &[(0, None), (1, None), (2, None), (3, None), (4, Some(7)), (5, Some(7)), (6, Some(7)), (7, Some(7))]),
            [
                Decision::Pass { retry: 0 },
                Decision::Pass { retry: 1 },
                Decision::Pass { retry: 2 },
                Decision::Refuse { attempts: 3 },
                Decision::Pass { retry: 0 },
                Decision::Pass { retry: 1 },
                Decision::Pass { retry: 2 },
                Decision::Refuse { attempts: 3 },
            ],
            "the same checkpoint again does not reset"
        );
    }

    #[test]
    fn the_window_ends_the_count() {
        let d = run(LIMITS, &[(0, None), (1, None), (2, None), (3, None), (60_000, None)]);
        assert_eq!(d[3], Decision::Refuse { attempts: 3 });
        assert_eq!(d[4], Decision::Pass { retry: 0 }, "a window after the first attempt, counting starts again");
    }

    #[test]
    fn observe_mode_counts_but_never_refuses() {
        let limits = RetryLimits { observe: true, ..LIMITS };
        assert_eq!(
            run(limits, &[(0, None), (1, None), (2, None), (3, None), (4, None)]),
            [Decision::Pass { retry: 0 }, Decision::Pass { retry: 1 }, Decision::Pass { retry: 2 }, Decision::Observe { retry: 3 }, Decision::Observe { retry: 4 }]
        );
    }

    #[test]
    fn a_task_that_keeps_failing_is_stopped_after_the_allowed_retries_and_a_success_ends_the_streak() {
        let mut entry = None;
        let mut decisions = Vec::new();
        // Each attempt is a different request; all fail, then a checkpoint, then one succeeds.
        for (now, checkpoint, failed) in [(0, None, true), (1, None, true), (2, None, true), (3, None, true), (4, Some(9), true), (5, None, false), (6, None, true)] {
            let (e, d) = task_attempt(entry, now, LIMITS, checkpoint);
            decisions.push(d);
            entry = Some(e);
            if matches!(d, Decision::Pass { .. }) {
                entry = Some(task_outcome(entry, now, failed));
            }
        }
        assert_eq!(
            decisions,
            [
                Decision::Pass { retry: 0 },
                Decision::Pass { retry: 1 },
                Decision::Pass { retry: 2 },
                Decision::Refuse { attempts: 3 },
                Decision::Pass { retry: 0 },
                Decision::Pass { retry: 1 },
                Decision::Pass { retry: 0 },
            ],
            "three failures in a row stop the task; a checkpoint clears it; a success ends the streak"
        );
    }

    #[test]
    fn a_tasks_failures_on_other_gateways_join_its_streak_and_a_success_anywhere_ends_it() {
        let w = LIMITS.window_ms;
        // One failure here; the counter says two more happened elsewhere: the next is refused.
        let (e, d) = task_attempt(None, 0, LIMITS, None);
        assert_eq!(d, Decision::Pass { retry: 0 });
        let e = task_outcome(Some(e), 1, true);
        let since = e.others_since(w);
        let heard = merge_streak(e, since, 2, None, w);
        assert_eq!(task_attempt(Some(heard), 2, LIMITS, None).1, Decision::Refuse { attempts: 3 }, "one here and two elsewhere, in a row");
        assert_eq!(merge_streak(heard, since + 1, 0, None, w), heard, "an answer about another streak is ignored");
        assert_eq!(merge_streak(heard, since, 1, None, w).others, 1, "the streak elsewhere may shrink: the answer replaces it");
        // A success elsewhere after this streak began ends this gateway's own failures too, once.
        let ended = merge_streak(heard, since, 0, Some((1, 0)), w);
        assert_eq!((ended.attempts, ended.others, ended.window_start_ms), (0, 0, 1));
        let two_here = task_outcome(Some(e), 2, true);
        assert_eq!(merge_streak(two_here, since, 0, Some((1, 1)), w).attempts, 1, "the own failure after the success elsewhere starts the new streak");
        assert_eq!(task_attempt(Some(ended), 3, LIMITS, None).1, Decision::Pass { retry: 0 });
        let failed_again = task_outcome(Some(ended), 4, true);
        assert_eq!(merge_streak(failed_again, failed_again.others_since(w), 0, Some((1, 0)), w).attempts, 1, "the same success does not end a later streak");
        // A success here ends the others' failures too, and answers about the old streak no longer apply.
        let done = task_outcome(Some(heard), 5, false);
        assert_eq!((done.attempts, done.others), (0, 0));
        assert_eq!(merge_streak(done, since, 2, None, w), done, "an answer computed before the success is ignored");
        assert_eq!(task_outcome(None, 6, false), RetryEntry { window_start_ms: 6, ..RetryEntry::default() }, "a success with no streak changes nothing");
    }

    #[test]
    fn other_gateways_attempts_count_against_the_allowance_once_merged() {
        let (e, d) = attempt(None, 0, LIMITS, None);
        assert_eq!(d, Decision::Pass { retry: 0 });
        let since = e.others_since(LIMITS.window_ms);
        assert_eq!(since, 1 - LIMITS.window_ms, "attempts elsewhere up to a window before this one's first count");
        let e = merge_others(e, since, 2, LIMITS.window_ms);
        assert_eq!(attempt(Some(e), 10, LIMITS, None).1, Decision::Refuse { attempts: 3 }, "one here and two elsewhere: the allowance is spent");
        assert_eq!(merge_others(merge_others(e, since, 1, LIMITS.window_ms), since, 0, LIMITS.window_ms).others, 2, "an older, smaller answer never lowers the count");
        assert_eq!(merge_others(e, 5, 7, LIMITS.window_ms), e, "an answer about another count is ignored");
        let (fresh, _) = attempt(Some(e), 60_000, LIMITS, None);
        assert_eq!(fresh.others, 0, "a new window starts without the others' old attempts");
    }

    #[test]
    fn a_counter_checkpoint_resets_a_count_begun_before_it_once() {
        let mut e = None;
        for now in 0..4 {
            e = Some(attempt(e, now, LIMITS, None).0);
        }
        let e = e.unwrap();
        assert_eq!(attempt(Some(e), 5, LIMITS, None).1, Decision::Refuse { attempts: 3 });
        let reset = apply_checkpoint(e, 77, 6, 8).expect("a count begun before the checkpoint starts again");
        assert_eq!(reset.others_since(LIMITS.window_ms), 8, "after a checkpoint only the others' later attempts count");
        assert_eq!(attempt(Some(reset), 9, LIMITS, None).1, Decision::Pass { retry: 0 });
        assert_eq!(apply_checkpoint(reset, 77, 6, 20), None, "the same checkpoint again does nothing");
        assert_eq!(attempt(Some(reset), 9, LIMITS, Some(77)).1, Decision::Pass { retry: 0 }, "nor the same value in the header");
        let later = RetryEntry { window_start_ms: 10, ..e };
        assert_eq!(apply_checkpoint(later, 78, 6, 20), None, "a count begun after the checkpoint is left alone");
    }

    #[test]
    fn entries_round_trip_and_garbage_is_none() {
        let e = RetryEntry { window_start_ms: 1_767_225_600_000, attempts: 3, refusals: 2, checkpoint: u64::MAX - 1, others: 4 };
        assert_eq!(RetryEntry::decode(&e.encode()), Some(e));
        let old = e.encode();
        assert_eq!(RetryEntry::decode(old.get(..24).unwrap()), Some(RetryEntry { others: 0, ..e }), "an entry written before `others` reads as 0 others");
        assert_eq!(RetryEntry::decode(b"short"), None);
        assert_eq!(RetryEntry::decode(&[0; 25]), None);
    }
}
