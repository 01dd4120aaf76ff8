//! Which plan ids this run is working on, and the copies of those plans that arrived meanwhile.
//!
//! The journal tells runs apart: an id finished by an earlier run is replayed. Within one run
//! the same id can arrive again while its first copy is still being worked on: the same batch
//! piped again after a crash (the first copy was resumed from the journal), a duplicate line,
//! or a `submit` of an id that stdin is running. Answering such a copy "already in progress"
//! would give one input line a rejection for a plan that then succeeds; instead the copy
//! *follows* the run, and gets its result, flagged replayed, at its own place in its input.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex};

use super::result::InputPosition;

/// A copy of a plan waiting for the result of the run of its id.
#[derive(Debug)]
pub(super) struct Follower<S> {
    pub sink: S,
    pub position: InputPosition,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Claim {
    /// Nobody in this run had the id: the caller admits it to the journal and runs it.
    Run,
    /// The id is being worked on; the caller was added to its followers.
    Follow,
}

/// The ids this run works on, each with its followers. Held briefly by the tasks that admit
/// and finish plans; never across an await.
pub(super) struct Claims<S> {
    ids: Arc<Mutex<HashMap<String, Vec<Follower<S>>>>>,
}

impl<S> Clone for Claims<S> {
    fn clone(&self) -> Self {
        Self {
            ids: self.ids.clone(),
        }
    }
}

impl<S> Default for Claims<S> {
    fn default() -> Self {
        Self {
            ids: Arc::default(),
        }
    }
}

impl<S> Claims<S> {
    /// Claims `id` for a run, or, when this run already works on it, adds a follower.
    pub fn claim(&self, id: &str, sink: S, position: InputPosition) -> Claim {
        let mut ids = self
            .ids
            .lock()
            .expect("no code panics while holding the claims");
        match ids.entry(id.to_owned()) {
            Entry::Occupied(mut followers) => {
                followers.get_mut().push(Follower { sink, position });
                Claim::Follow
            }
            Entry::Vacant(slot) => {
                slot.insert(Vec::new());
                Claim::Run
            }
        }
    }

    /// Claims an id resumed from the journal, which no other copy can hold yet.
    pub fn claim_resumed(&self, id: &str) {
        let mut ids = self
            .ids
            .lock()
            .expect("no code panics while holding the claims");
        ids.entry(id.to_owned()).or_default();
    }

    /// Gives up the claim on `id` and hands back the copies that followed it, which the caller
    /// answers with what became of the run.
    pub fn release(&self, id: &str) -> Vec<Follower<S>> {
        let mut ids = self
            .ids
            .lock()
            .expect("no code panics while holding the claims");
        ids.remove(id).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: usize) -> InputPosition {
        InputPosition {
            line: Some(line),
            element: None,
        }
    }

    #[test]
    fn the_first_copy_runs_and_later_ones_follow_until_it_is_released() {
        let claims = Claims::default();
        assert_eq!(claims.claim("a", "stdin", at(1)), Claim::Run);
        assert_eq!(claims.claim("a", "stdin", at(2)), Claim::Follow);
        assert_eq!(claims.claim("a", "submit", at(1)), Claim::Follow);
        assert_eq!(claims.claim("b", "stdin", at(3)), Claim::Run);
        let followers = claims.release("a");
        let seen: Vec<(&str, Option<usize>)> = followers
            .iter()
            .map(|f| (f.sink, f.position.line))
            .collect();
        assert_eq!(seen, [("stdin", Some(2)), ("submit", Some(1))]);
        assert_eq!(claims.claim("a", "stdin", at(4)), Claim::Run);
        assert!(claims.release("b").is_empty());
    }

    #[test]
    fn a_resumed_plan_is_followed_by_the_same_id_piped_again() {
        let claims = Claims::default();
        claims.claim_resumed("again-2");
        assert_eq!(claims.claim("again-2", (), at(2)), Claim::Follow);
        assert_eq!(claims.release("again-2").len(), 1);
        assert!(claims.release("again-2").is_empty());
    }
}
