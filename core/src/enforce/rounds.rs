//! The lease-round policy of a paused request: how often it may go back to the counter, how much it
//! asks for each time, and what it is told when the rounds run out.
//!
//! A request that does not fit the slices in hand pauses and asks the counter for more. Requests
//! admitted meanwhile on the same gateway take from the same slice, so a grant sized for one
//! request can be gone when it lands: each round asks for more than the last, and after
//! [`MAX_ROUNDS`] answers that still do not fit the request is decided without the counter.

use super::Refusal;
use crate::money::Micros;

/// Lease calls a paused request may make before it is treated as if the counter were unreachable.
pub const MAX_ROUNDS: u8 = 3;

/// What a request that does not fit does after `rounds` lease calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextRound {
    /// Ask the counter for this much headroom on every short scope.
    Ask { need: Micros },
    /// No more rounds: decide with [`after_last_round`].
    Stop,
}

/// The next step for a request of worst case `amount` that has made `rounds` lease calls:
/// ask for `max(amount, slice) × (rounds + 1)`, up to [`MAX_ROUNDS`] calls.
pub fn next_round(rounds: u8, amount: Micros, slice: Micros) -> NextRound {
    if rounds >= MAX_ROUNDS {
        return NextRound::Stop;
    }
    NextRound::Ask { need: amount.max(slice).saturating_mul(i64::from(rounds) + 1) }
}

/// How the rounds ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterRounds {
    /// The counter answered every round but the headroom kept going to other requests: 429 naming
    /// the budget that is short.
    Refuse(Refusal),
    /// Nothing is short any more, or the counter could not say: the failure mode decides.
    Unavailable,
}

/// The answer once the rounds ran out; `shortfall` is `chain::shortfall` on the book now.
pub fn after_last_round(shortfall: Option<Refusal>) -> AfterRounds {
    match shortfall {
        Some(refusal) => AfterRounds::Refuse(refusal),
        None => AfterRounds::Unavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_round_asks_for_more_until_the_rounds_run_out() {
        // (rounds made, worst case, slice) → next step
        let table: [(u8, Micros, Micros, NextRound); 7] = [
            (0, 500, 1_000, NextRound::Ask { need: 1_000 }),
            (1, 500, 1_000, NextRound::Ask { need: 2_000 }),
            (2, 500, 1_000, NextRound::Ask { need: 3_000 }),
            (3, 500, 1_000, NextRound::Stop),
            (0, 5_000, 1_000, NextRound::Ask { need: 5_000 }),
            (2, 5_000, 1_000, NextRound::Ask { need: 15_000 }),
            (1, i64::MAX, 1, NextRound::Ask { need: i64::MAX }),
        ];
        for (rounds, amount, slice, want) in table {
            assert_eq!(next_round(rounds, amount, slice), want, "rounds {rounds}, amount {amount}, slice {slice}");
        }
        assert_eq!(next_round(u8::MAX, 1, 1), NextRound::Stop);
    }

    #[test]
    fn after_the_last_round_a_short_budget_refuses_and_anything_else_is_unavailable() {
        let short = Refusal {
            budget_id: "b-org".to_owned(),
            scope: "org:acme".to_owned(),
            spent_micros: 900,
            hard_limit_micros: 1_000,
            needed_micros: 500,
            resets_at: Some(3_600),
        };
        assert_eq!(after_last_round(Some(short.clone())), AfterRounds::Refuse(short));
        assert_eq!(after_last_round(None), AfterRounds::Unavailable);
    }
}
