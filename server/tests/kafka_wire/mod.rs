//! A minimal Kafka client for tests that need exact control over what goes
//! on the wire (producer ids, sequences, timeouts, which partitions share a
//! request): requests and responses encoded with the `kafka-protocol`
//! crate's own codecs, one request at a time over a blocking socket.

#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Versions this client speaks (all within what the server serves).
pub const PRODUCE_VERSION: i16 = 9;
pub const CREATE_TOPICS_VERSION: i16 = 7;
pub const DELETE_TOPICS_VERSION: i16 = 5;
pub const LIST_OFFSETS_VERSION: i16 = 7;

pub struct WireClient {
    stream: TcpStream,
    correlation_id: i32,
}

impl WireClient {
    pub fn connect(addr: SocketAddr) -> WireClient {
        let stream = TcpStream::connect(addr).expect("connect to the Kafka listener");
        stream.set_nodelay(true).expect("nodelay");
        WireClient {
            stream,
            correlation_id: 0,
        }
    }

    /// Sends `req` and waits up to `limit` for its answer; `Err` says why
    /// there was none (the server's silence included).
    pub fn call_within<R: Request>(
        &mut self,
        version: i16,
        req: &R,
        limit: Duration,
    ) -> Result<R::Response, String> {
        self.correlation_id += 1;
        let cid = self.correlation_id;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(cid)
            .with_client_id(Some(StrBytes::from_static_str("strom-wire-test")));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, R::header_version(version))
            .map_err(|e| format!("encoding the request header: {e}"))?;
        req.encode(&mut body, version)
            .map_err(|e| format!("encoding the request: {e}"))?;
        let mut framed = Vec::with_capacity(body.len() + 4);
        framed.extend_from_slice(&(body.len() as i32).to_be_bytes());
        framed.extend_from_slice(&body);
        self.stream
            .write_all(&framed)
            .map_err(|e| format!("write: {e}"))?;
        self.stream
            .set_read_timeout(Some(limit))
            .map_err(|e| format!("set_read_timeout: {e}"))?;
        let mut size = [0u8; 4];
        self.stream
            .read_exact(&mut size)
            .map_err(|e| format!("no answer within {limit:?}: {e}"))?;
        let size = i32::from_be_bytes(size);
        if size < 0 {
            return Err(format!("negative response size {size}"));
        }
        let mut buf = vec![0u8; size as usize];
        self.stream
            .read_exact(&mut buf)
            .map_err(|e| format!("reading a {size}-byte answer: {e}"))?;
        let mut buf = Bytes::from(buf);
        let head = ResponseHeader::decode(&mut buf, R::Response::header_version(version))
            .map_err(|e| format!("decoding the response header: {e}"))?;
        if head.correlation_id != cid {
            return Err(format!(
                "answer to correlation id {}, expected {cid}",
                head.correlation_id
            ));
        }
        R::Response::decode(&mut buf, version).map_err(|e| format!("decoding the response: {e}"))
    }

    pub fn call<R: Request>(&mut self, version: i16, req: &R) -> R::Response {
        self.call_within(version, req, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("Kafka API {}: {e}", R::KEY))
    }

    /// Creates `name` with `partitions` partitions; returns Strom's topic id
    /// (the low half of the Kafka topic UUID, minus one).
    pub fn create_topic(&mut self, name: &str, partitions: i32) -> u64 {
        let req = CreateTopicsRequest::default()
            .with_timeout_ms(10_000)
            .with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_string(name.to_owned())))
                .with_num_partitions(partitions)
                .with_replication_factor(1)]);
        let resp = self.call(CREATE_TOPICS_VERSION, &req);
        let t = &resp.topics[0];
        assert_eq!(t.error_code, 0, "create {name}: {t:?}");
        let (_, low) = t.topic_id.as_u64_pair();
        assert!(low > 0, "create {name}: no topic id: {t:?}");
        low - 1
    }

    pub fn delete_topic(&mut self, name: &str) {
        let req = DeleteTopicsRequest::default()
            .with_timeout_ms(10_000)
            .with_topic_names(vec![TopicName(StrBytes::from_string(name.to_owned()))]);
        let resp = self.call(DELETE_TOPICS_VERSION, &req);
        let t = &resp.responses[0];
        assert_eq!(t.error_code, 0, "delete {name}: {t:?}");
    }

    /// The latest offset (high watermark) of each partition of `topic`.
    pub fn end_offsets(&mut self, topic: &str, partitions: i32) -> Vec<i64> {
        let req = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partitions(
                    (0..partitions)
                        .map(|p| {
                            ListOffsetsPartition::default()
                                .with_partition_index(p)
                                .with_timestamp(-1)
                        })
                        .collect(),
                )]);
        let resp = self.call(LIST_OFFSETS_VERSION, &req);
        let mut out = vec![-1; partitions as usize];
        for p in &resp.topics[0].partitions {
            assert_eq!(p.error_code, 0, "list offsets {topic}: {p:?}");
            out[p.partition_index as usize] = p.offset;
        }
        out
    }
}

/// The idempotence fields of a batch; `None` for a plain producer.
#[derive(Debug, Clone, Copy)]
pub struct Idempotent {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_seq: i32,
}

/// One uncompressed record batch v2 of `n` records with values
/// `"{tag}-{i}"`.
pub fn record_batch(tag: &str, n: usize, idem: Option<Idempotent>) -> Bytes {
    let recs: Vec<Record> = (0..n)
        .map(|i| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: idem.map_or(-1, |d| d.producer_id),
            producer_epoch: idem.map_or(-1, |d| d.epoch),
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: idem.map_or(-1, |d| d.first_seq + i as i32),
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::from(format!("{tag}-{i}"))),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        recs.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encode a record batch");
    buf.freeze()
}

/// A produce request carrying one batch per (topic, partition, batch).
pub fn produce_request(acks: i16, timeout_ms: i32, parts: &[(&str, i32, Bytes)]) -> ProduceRequest {
    let mut topics: Vec<TopicProduceData> = Vec::new();
    for (topic, p, batch) in parts {
        let pd = PartitionProduceData::default()
            .with_index(*p)
            .with_records(Some(batch.clone()));
        match topics.last_mut() {
            Some(t) if t.name.0.as_str() == *topic => t.partition_data.push(pd),
            _ => topics.push(
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_string((*topic).to_owned())))
                    .with_partition_data(vec![pd]),
            ),
        }
    }
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(timeout_ms)
        .with_topic_data(topics)
}

/// (topic, partition, error code, base offset, error message) per partition
/// of a produce response, in response order.
pub fn produce_results(r: &ProduceResponse) -> Vec<(String, i32, i16, i64, String)> {
    r.responses
        .iter()
        .flat_map(|t| {
            t.partition_responses.iter().map(|p| {
                (
                    t.name.0.as_str().to_owned(),
                    p.index,
                    p.error_code,
                    p.base_offset,
                    p.error_message
                        .as_ref()
                        .map(|m| m.as_str().to_owned())
                        .unwrap_or_default(),
                )
            })
        })
        .collect()
}
