//! InitProducerId: the one operation behind the native protocol's
//! `InitProducerIdRequest` and Kafka's InitProducerId (API 22). Each edge
//! decodes its request into [`InitProducer`], calls [`init_producer_id`]
//! and encodes the answer or the [`InitProducerIdError`] in its own codes.
//!
//! Rules (the Kafka edge's since it was written, now every protocol's):
//! - No current id: a new producer id from the process-wide allocator
//!   (`crate::producers::ProducerIds`, time-based, node residue in cluster
//!   mode), epoch 0.
//! - The caller's current id and epoch (both >= 0, KIP-360): the same id,
//!   epoch + 1; batches of the older epoch are then fenced by the owners'
//!   producer state. An exhausted epoch (`i16::MAX`) gets a new id instead.
//! - A transactional id is refused until transactions exist.
//!
//! Invariant: a returned epoch is `>= 0` and a returned id is one this
//! node allocated or the caller's own (`>= 0`).

use crate::producers::ProducerIds;
use crate::shard::Shard;

/// What a client asks for, whatever the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitProducer<'a> {
    /// Non-empty: a transactional producer (refused for now).
    pub transactional_id: Option<&'a str>,
    /// The caller's current producer id (-1: none).
    pub producer_id: i64,
    /// The caller's current epoch (-1: none).
    pub producer_epoch: i16,
}

/// Why no producer id was handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InitProducerIdError {
    #[error("transactional id {transactional_id:?}: transactions are not supported yet")]
    TransactionsUnsupported { transactional_id: String },
}

/// A producer id and epoch (see the module rules).
pub fn init_producer_id(
    shard: &Shard,
    request: InitProducer<'_>,
) -> Result<(i64, i16), InitProducerIdError> {
    decide(&shard.shared.producer_ids, request)
}

fn decide(ids: &ProducerIds, request: InitProducer<'_>) -> Result<(i64, i16), InitProducerIdError> {
    if let Some(t) = request.transactional_id.filter(|t| !t.is_empty()) {
        return Err(InitProducerIdError::TransactionsUnsupported {
            transactional_id: t.to_owned(),
        });
    }
    let (id, epoch) = if request.producer_id >= 0
        && request.producer_epoch >= 0
        && request.producer_epoch < i16::MAX
    {
        (request.producer_id, request.producer_epoch + 1)
    } else {
        (ids.allocate(), 0)
    };
    assert!(id >= 0 && epoch >= 0, "a usable producer id and epoch");
    Ok((id, epoch))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(id: i64, epoch: i16) -> InitProducer<'static> {
        InitProducer {
            transactional_id: None,
            producer_id: id,
            producer_epoch: epoch,
        }
    }

    #[test]
    fn new_ids_bumped_epochs_and_refused_transactions() {
        let ids = ProducerIds::new(0, 1_000);
        let (a, ea) = decide(&ids, ask(-1, -1)).expect("new");
        let (b, eb) = decide(&ids, ask(-1, -1)).expect("new");
        assert_ne!(a, b);
        assert_eq!((ea, eb), (0, 0));
        assert_eq!(decide(&ids, ask(a, 0)), Ok((a, 1)), "bump");
        assert_eq!(decide(&ids, ask(a, 41)), Ok((a, 42)));
        // An exhausted epoch, or half a current id: a new id.
        for (id, epoch) in [(a, i16::MAX), (a, -1), (-1, 3)] {
            let (c, ec) = decide(&ids, ask(id, epoch)).expect("new");
            assert!(c != a && ec == 0, "({id}, {epoch}) -> ({c}, {ec})");
        }
        let tx = InitProducer {
            transactional_id: Some("tx-1"),
            ..ask(-1, -1)
        };
        assert!(matches!(
            decide(&ids, tx),
            Err(InitProducerIdError::TransactionsUnsupported { .. })
        ));
        let empty = InitProducer {
            transactional_id: Some(""),
            ..ask(-1, -1)
        };
        assert!(decide(&ids, empty).is_ok(), "an empty id is no id");
    }
}
