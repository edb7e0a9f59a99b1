//! The outcome of one Kafka produce request fanned out to the shards that
//! own its partitions: what each partition is answered with. I/O-free; the
//! handler feeds it the shards' replies as they come and asks for the
//! answer at the end or at the request's deadline.
//!
//! Invariants:
//! - Each part (one partition entry of the request, in request order) is
//!   settled by exactly one source: refused before fan-out, or by the shard
//!   it was routed to. A reply from one shard never touches the parts of
//!   another: a shard that fails cannot turn a batch another shard appended
//!   into an error (a plain producer would retry it and store it twice).
//! - A part whose shard never answered is answered REQUEST_TIMED_OUT, saying
//!   that its batches may still be appended.
//! - Several batches of one part: the first offset, the first error.

use super::codec;
use super::ProduceOutcome;
use crate::error::WireError;
use std::collections::BTreeSet;

/// One partition entry of the request.
#[derive(Debug)]
struct Part {
    topic: String,
    partition: i32,
    /// The shard its batches went to; `None` when it was refused up front.
    owner: Option<usize>,
    outcome: Option<ProduceOutcome>,
}

/// Where every part of one produce request stands.
#[derive(Debug, Default)]
pub struct ProduceFanOut {
    parts: Vec<Part>,
    /// Shards that have answered (each answers once).
    answered: BTreeSet<usize>,
}

/// A part's answer: its topic, partition and outcome, in request order.
pub type PartAnswer = (String, i32, ProduceOutcome);

impl ProduceFanOut {
    pub fn new() -> ProduceFanOut {
        ProduceFanOut::default()
    }

    /// Adds a part refused before fan-out; returns its index.
    pub fn refused(&mut self, topic: &str, partition: i32, code: i16, message: String) -> usize {
        assert_ne!(code, codec::NONE, "a refusal carries an error code");
        self.parts.push(Part {
            topic: topic.to_owned(),
            partition,
            owner: None,
            outcome: Some(failed(code, message)),
        });
        self.parts.len() - 1
    }

    /// Adds a part whose batches go to shard `owner`; returns its index.
    pub fn routed(&mut self, topic: &str, partition: i32, owner: usize) -> usize {
        assert!(
            !self.answered.contains(&owner),
            "parts are routed before any shard answers"
        );
        self.parts.push(Part {
            topic: topic.to_owned(),
            partition,
            owner: Some(owner),
            outcome: None,
        });
        self.parts.len() - 1
    }

    /// Shards the request went to, each once.
    pub fn shards(&self) -> BTreeSet<usize> {
        self.parts.iter().filter_map(|p| p.owner).collect()
    }

    /// Shard `shard` appended (or refused) batches: outcomes by part index.
    /// An outcome for a part routed elsewhere is a bug on the owner side; it
    /// is ignored so that it cannot overwrite the right shard's answer.
    pub fn answer(&mut self, shard: usize, outcomes: Vec<(usize, ProduceOutcome)>) {
        let first = self.answered.insert(shard);
        debug_assert!(first, "shard {shard} answered twice");
        for (i, o) in outcomes {
            let Some(p) = self.parts.get_mut(i) else {
                debug_assert!(false, "shard {shard}: outcome for part {i} out of range");
                continue;
            };
            if p.owner != Some(shard) {
                debug_assert!(
                    false,
                    "shard {shard}: outcome for part {i} of {:?}",
                    p.owner
                );
                continue;
            }
            match &p.outcome {
                None => p.outcome = Some(o),
                Some(prev) if prev.error_code == codec::NONE && o.error_code != codec::NONE => {
                    p.outcome = Some(o)
                }
                Some(_) => {}
            }
        }
    }

    /// Shard `shard` failed as a whole: its parts, and only its, get `e`.
    pub fn fail(&mut self, shard: usize, e: &WireError) {
        let first = self.answered.insert(shard);
        debug_assert!(first, "shard {shard} answered twice");
        for p in self.parts.iter_mut().filter(|p| p.owner == Some(shard)) {
            if p.outcome.is_none() {
                p.outcome = Some(failed(codec::wire_to_kafka(e.code), e.message.clone()));
            }
        }
    }

    /// The answer per part, in request order. Parts whose shard has not
    /// answered (the deadline of `timeout_ms` passed) get REQUEST_TIMED_OUT.
    pub fn finish(self, timeout_ms: u32) -> Vec<PartAnswer> {
        let answered = self.answered;
        self.parts
            .into_iter()
            .map(|p| {
                let outcome = match (p.outcome, p.owner) {
                    (Some(o), _) => o,
                    (None, Some(s)) if !answered.contains(&s) => failed(
                        codec::REQUEST_TIMED_OUT,
                        format!(
                            "shard {s} did not answer within {timeout_ms} ms \
                             (the batch may still be appended)"
                        ),
                    ),
                    (None, owner) => {
                        debug_assert!(false, "part without an outcome from {owner:?}");
                        failed(
                            codec::UNKNOWN_SERVER_ERROR,
                            format!("shard {owner:?} answered without this partition"),
                        )
                    }
                };
                (p.topic, p.partition, outcome)
            })
            .collect()
    }
}

fn failed(code: i16, message: String) -> ProduceOutcome {
    ProduceOutcome {
        error_code: code,
        message: Some(message),
        base_offset: -1,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strom_flatbuffers::protocol::ErrorCode;

    fn ok(base: i64) -> ProduceOutcome {
        ProduceOutcome {
            base_offset: base,
            log_append_time_ms: -1,
            ..Default::default()
        }
    }

    fn codes(a: &[PartAnswer]) -> Vec<(i32, i16, i64)> {
        a.iter()
            .map(|(_, p, o)| (*p, o.error_code, o.base_offset))
            .collect()
    }

    /// The regression: shard 1 fails first, shard 0's success comes later
    /// and must stand.
    #[test]
    fn a_failed_shard_fails_only_its_own_parts_whatever_the_order() {
        for failure_first in [true, false] {
            let mut f = ProduceFanOut::new();
            let p0 = f.routed("t", 0, 0);
            let p1 = f.routed("t", 1, 1);
            let p2 = f.routed("t", 2, 0);
            let p3 = f.routed("t", 3, 1);
            assert_eq!(f.shards().into_iter().collect::<Vec<_>>(), vec![0, 1]);
            let e = WireError::new(ErrorCode::ShuttingDown, "shard 1 is gone");
            if failure_first {
                f.fail(1, &e);
            }
            f.answer(0, vec![(p2, ok(7)), (p0, ok(40))]);
            if !failure_first {
                f.fail(1, &e);
            }
            let a = f.finish(1000);
            let gone = codec::wire_to_kafka(ErrorCode::ShuttingDown);
            assert_eq!(
                codes(&a),
                vec![(0, 0, 40), (1, gone, -1), (2, 0, 7), (3, gone, -1)],
                "failure first: {failure_first}"
            );
            assert_eq!(a[p1].2.message.as_deref(), Some("shard 1 is gone"));
            assert_eq!(a[p3].2.message.as_deref(), Some("shard 1 is gone"));
        }
    }

    #[test]
    fn parts_of_a_shard_that_never_answered_time_out() {
        let mut f = ProduceFanOut::new();
        f.routed("a", 0, 0);
        f.routed("b", 5, 1);
        f.answer(0, vec![(0, ok(3))]);
        let a = f.finish(250);
        assert_eq!(
            codes(&a),
            vec![(0, 0, 3), (5, codec::REQUEST_TIMED_OUT, -1)]
        );
        assert_eq!(a[1].0, "b");
        let msg = a[1].2.message.as_deref().unwrap_or_default();
        assert!(
            msg.contains("250 ms") && msg.contains("may still be appended"),
            "{msg}"
        );
    }

    #[test]
    fn refusals_stand_and_several_batches_keep_the_first_offset_and_first_error() {
        let mut f = ProduceFanOut::new();
        let r = f.refused(
            "t",
            -1,
            codec::UNKNOWN_TOPIC_OR_PARTITION,
            "negative".into(),
        );
        f.refused("t", 1, codec::INVALID_RECORD, "no record batch".into());
        let m = f.routed("t", 2, 0);
        let n = f.routed("t", 3, 0);
        assert_eq!(f.shards().len(), 1);
        let bad = ProduceOutcome {
            error_code: codec::CORRUPT_MESSAGE,
            base_offset: -1,
            ..Default::default()
        };
        // Part m: two batches appended; part n: one appended, one refused.
        f.answer(0, vec![(m, ok(10)), (n, ok(20)), (m, ok(12)), (n, bad)]);
        let a = f.finish(1000);
        assert_eq!(
            codes(&a),
            vec![
                (-1, codec::UNKNOWN_TOPIC_OR_PARTITION, -1),
                (1, codec::INVALID_RECORD, -1),
                (2, 0, 10),
                (3, codec::CORRUPT_MESSAGE, -1),
            ]
        );
        assert_eq!(r, 0);
    }

    #[test]
    fn an_outcome_for_another_shards_part_is_ignored_in_release() {
        if cfg!(debug_assertions) {
            return; // a debug build asserts instead
        }
        let mut f = ProduceFanOut::new();
        let p = f.routed("t", 0, 0);
        f.answer(1, vec![(p, ok(5))]);
        f.answer(0, vec![(p, ok(9))]);
        assert_eq!(codes(&f.finish(1)), vec![(0, 0, 9)]);
    }
}
