//! Rounds that complete only when every ring member has reported them: the per-step commit vote
//! (DESIGN §5 step 4, as TorchFT does) and the epoch barrier. Pure state; the service wakes the
//! waiting calls when a round completes.
//!
//! Rounds complete in increasing order, one open at a time: a round opens with the first vote
//! for a number above the last completed one (a resumed job starts at its checkpoint's step;
//! the epoch-ending round sits between two steps' rounds), and votes for any other round are
//! refused while it is open; re-votes for a completed round are answered "completed" (a
//! worker retrying a lost answer).

use std::collections::{BTreeMap, BTreeSet};

/// What a vote leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoteOutcome<P> {
    /// Every member reported the round; what each reported, in rank order.
    Completed(Vec<P>),
    /// The round completed earlier (a repeated vote).
    AlreadyCompleted,
    /// Others have not reported yet.
    Waiting,
}

/// A vote that cannot be counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VoteRefusal {
    /// Not the round being voted on.
    #[error("round {got}: the round being voted on is {expected}")]
    OutOfOrder {
        /// The round voted.
        got: u64,
        /// The round open for votes.
        expected: u64,
    },
    /// A rank outside the ring.
    #[error("rank {0} is not in the ring")]
    UnknownRank(usize),
}

/// Votes of `members` ranks on consecutive rounds, with a payload per vote.
#[derive(Debug, Clone)]
pub struct RoundVotes<P> {
    members: usize,
    /// Last completed round; `None` before the first.
    completed: Option<u64>,
    /// Votes of the open round.
    open: Option<(u64, BTreeMap<usize, P>)>,
}

impl<P: Clone> RoundVotes<P> {
    /// Votes among `members` ranks.
    pub fn new(members: usize) -> Self {
        Self {
            members: members.max(1),
            completed: None,
            open: None,
        }
    }

    /// The last completed round.
    pub fn completed(&self) -> Option<u64> {
        self.completed
    }

    /// Whether `round` has completed.
    pub fn is_completed(&self, round: u64) -> bool {
        self.completed.is_some_and(|c| round <= c)
    }

    /// Ranks that voted on the open round.
    pub fn voters(&self) -> BTreeSet<usize> {
        self.open
            .as_ref()
            .map(|(_, v)| v.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The ring changed to `members` ranks (a member died): the open round's votes, cast by
    /// ranks of the old ring, are dropped; the round is voted again in the new ring.
    pub fn abort_open(&mut self, members: usize) -> Option<u64> {
        self.members = members.max(1);
        self.open.take().map(|(round, _)| round)
    }

    /// Counts `rank`'s vote for `round`.
    pub fn vote(
        &mut self,
        rank: usize,
        round: u64,
        payload: P,
    ) -> Result<VoteOutcome<P>, VoteRefusal> {
        if rank >= self.members {
            return Err(VoteRefusal::UnknownRank(rank));
        }
        if self.is_completed(round) {
            return Ok(VoteOutcome::AlreadyCompleted);
        }
        let expected = match &self.open {
            Some((r, _)) => *r,
            None => round,
        };
        if round != expected {
            return Err(VoteRefusal::OutOfOrder {
                got: round,
                expected,
            });
        }
        let (_, votes) = self.open.get_or_insert_with(|| (round, BTreeMap::new()));
        votes.insert(rank, payload);
        if votes.len() < self.members {
            return Ok(VoteOutcome::Waiting);
        }
        let (_, votes) = self.open.take().unwrap_or_default();
        self.completed = Some(round);
        Ok(VoteOutcome::Completed(votes.into_values().collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_completes_when_every_member_voted() {
        let mut v = RoundVotes::new(3);
        assert_eq!(v.vote(0, 1, 'a'), Ok(VoteOutcome::Waiting));
        assert_eq!(v.vote(2, 1, 'c'), Ok(VoteOutcome::Waiting));
        assert!(!v.is_completed(1));
        assert_eq!(v.voters().into_iter().collect::<Vec<_>>(), [0, 2]);
        assert_eq!(
            v.vote(1, 1, 'b'),
            Ok(VoteOutcome::Completed(vec!['a', 'b', 'c']))
        );
        assert!(v.is_completed(1));
        assert_eq!(v.vote(1, 1, 'b'), Ok(VoteOutcome::AlreadyCompleted));
    }

    #[test]
    fn rounds_move_forward_one_open_at_a_time() {
        let mut v = RoundVotes::new(2);
        assert_eq!(v.vote(0, 40, ()), Ok(VoteOutcome::Waiting));
        assert_eq!(
            v.vote(1, 41, ()),
            Err(VoteRefusal::OutOfOrder {
                got: 41,
                expected: 40
            })
        );
        assert_eq!(v.vote(1, 40, ()), Ok(VoteOutcome::Completed(vec![(), ()])));
        assert_eq!(v.vote(0, 39, ()), Ok(VoteOutcome::AlreadyCompleted));
        assert_eq!(v.vote(0, 42, ()), Ok(VoteOutcome::Waiting));
        assert_eq!(
            v.vote(1, 41, ()),
            Err(VoteRefusal::OutOfOrder {
                got: 41,
                expected: 42
            })
        );
        assert_eq!(v.vote(5, 41, ()), Err(VoteRefusal::UnknownRank(5)));
    }

    #[test]
    fn an_aborted_round_is_voted_again_by_the_new_ring() {
        let mut v = RoundVotes::new(3);
        assert_eq!(v.vote(0, 5, 'a'), Ok(VoteOutcome::Waiting));
        assert_eq!(v.vote(1, 5, 'b'), Ok(VoteOutcome::Waiting));
        assert_eq!(v.abort_open(2), Some(5));
        assert!(!v.is_completed(5));
        assert_eq!(v.vote(1, 5, 'y'), Ok(VoteOutcome::Waiting));
        assert_eq!(
            v.vote(0, 5, 'x'),
            Ok(VoteOutcome::Completed(vec!['x', 'y']))
        );
        assert_eq!(v.vote(2, 6, 'z'), Err(VoteRefusal::UnknownRank(2)));
    }

    #[test]
    fn a_repeated_vote_in_the_open_round_counts_once() {
        let mut v = RoundVotes::new(2);
        assert_eq!(v.vote(0, 1, 1), Ok(VoteOutcome::Waiting));
        assert_eq!(v.vote(0, 1, 2), Ok(VoteOutcome::Waiting));
        assert_eq!(v.vote(1, 1, 3), Ok(VoteOutcome::Completed(vec![2, 3])));
    }
}
