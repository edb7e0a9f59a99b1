//! Coordinator-side assignors (range and round-robin, as Kafka's
//! `RangeAssignor` and `RoundRobinAssignor`) for native clients that ask the
//! coordinator to assign, and the byte encodings of subscriptions and
//! assignments.
//!
//! Encodings are Kafka's `ConsumerProtocolSubscription` and
//! `ConsumerProtocolAssignment`, version 0, big-endian: a Kafka consumer's
//! metadata and assignment bytes decode with the same functions, and a
//! native client may use them for leader-side assignment too.
//!
//! Invariants of [`assign`]: every partition of every topic subscribed by at
//! least one member goes to exactly one member that subscribes to its topic;
//! the result names every member (possibly with nothing) and is a pure
//! function of its inputs (members sorted by id).

use std::collections::BTreeMap;

/// (topic, partitions) lists, topics and partitions ascending.
pub type Assignment = BTreeMap<String, Vec<u32>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignor {
    Range,
    RoundRobin,
}

impl Assignor {
    /// The protocol names a member offers to select an assignor.
    pub fn from_name(name: &str) -> Option<Assignor> {
        match name {
            "range" => Some(Assignor::Range),
            "roundrobin" => Some(Assignor::RoundRobin),
            _ => None,
        }
    }

    #[allow(dead_code)] // API for the Kafka listener and tests
    pub fn name(self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::RoundRobin => "roundrobin",
        }
    }
}

/// Assigns the partitions of the subscribed topics (`partitions(topic)`;
/// unknown topics have none) to `members` (member id -> subscribed topics).
pub fn assign(
    assignor: Assignor,
    members: &BTreeMap<String, Vec<String>>,
    partitions: impl Fn(&str) -> Option<u32>,
) -> BTreeMap<String, Assignment> {
    let mut out: BTreeMap<String, Assignment> = members
        .keys()
        .map(|m| (m.clone(), Assignment::new()))
        .collect();
    // topic -> subscribers (sorted, because `members` is).
    let mut subscribers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (m, topics) in members {
        for t in topics {
            let subs = subscribers.entry(t.as_str()).or_default();
            if subs.last() != Some(&m.as_str()) && !subs.contains(&m.as_str()) {
                subs.push(m.as_str());
            }
        }
    }
    match assignor {
        Assignor::Range => {
            for (topic, subs) in &subscribers {
                let n = partitions(topic).unwrap_or(0);
                let m = subs.len() as u32;
                let (per, extra) = (n / m, n % m);
                let mut next = 0u32;
                for (i, member) in subs.iter().enumerate() {
                    let count = per + u32::from((i as u32) < extra);
                    if count > 0 {
                        let ps: Vec<u32> = (next..next + count).collect();
                        out.get_mut(*member)
                            .expect("subscriber is a member")
                            .insert(topic.to_string(), ps);
                    }
                    next += count;
                }
                debug_assert_eq!(next, n);
            }
        }
        Assignor::RoundRobin => {
            let ids: Vec<&str> = members.keys().map(|m| m.as_str()).collect();
            let mut cursor = 0usize;
            for (topic, subs) in &subscribers {
                for p in 0..partitions(topic).unwrap_or(0) {
                    // Next member (circularly) that subscribes to `topic`.
                    loop {
                        let m = ids[cursor % ids.len()];
                        cursor += 1;
                        if subs.contains(&m) {
                            out.get_mut(m)
                                .expect("member")
                                .entry(topic.to_string())
                                .or_default()
                                .push(p);
                            break;
                        }
                    }
                }
            }
        }
    }
    out
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = s.len().min(i16::MAX as usize);
    out.extend_from_slice(&(len as i16).to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..len]);
}

/// Encodes a `ConsumerProtocolAssignment` v0 (no user data).
pub fn encode_assignment(a: &Assignment) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0i16.to_be_bytes());
    out.extend_from_slice(&(a.len() as i32).to_be_bytes());
    for (topic, ps) in a {
        put_str(&mut out, topic);
        out.extend_from_slice(&(ps.len() as i32).to_be_bytes());
        for p in ps {
            out.extend_from_slice(&(*p as i32).to_be_bytes());
        }
    }
    out.extend_from_slice(&(-1i32).to_be_bytes());
    out
}

/// Encodes a `ConsumerProtocolSubscription` v0 (no user data).
#[allow(dead_code)] // API for the Kafka listener and tests
pub fn encode_subscription(topics: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0i16.to_be_bytes());
    out.extend_from_slice(&(topics.len() as i32).to_be_bytes());
    for t in topics {
        put_str(&mut out, t);
    }
    out.extend_from_slice(&(-1i32).to_be_bytes());
    out
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.buf.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn string(&mut self) -> Option<String> {
        let len = usize::try_from(self.i16()?).ok()?;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
    /// An array count, bounded by the bytes left (each element >= `min` bytes).
    fn count(&mut self, min: usize) -> Option<usize> {
        let n = usize::try_from(self.i32()?).ok()?;
        (n.saturating_mul(min) <= self.buf.len() - self.at).then_some(n)
    }
}

/// Decodes a `ConsumerProtocolAssignment` (any version: fields past v0's
/// are ignored); `None` for bytes in another format.
pub fn decode_assignment(bytes: &[u8]) -> Option<Assignment> {
    let mut r = Reader { buf: bytes, at: 0 };
    if r.i16()? < 0 {
        return None;
    }
    let mut out = Assignment::new();
    for _ in 0..r.count(6)? {
        let topic = r.string()?;
        let mut ps = Vec::new();
        for _ in 0..r.count(4)? {
            ps.push(u32::try_from(r.i32()?).ok()?);
        }
        ps.sort_unstable();
        out.entry(topic).or_default().extend(ps);
    }
    Some(out)
}

/// Decodes the topics of a `ConsumerProtocolSubscription` (any version).
#[allow(dead_code)] // API for the Kafka listener and tests
pub fn decode_subscription(bytes: &[u8]) -> Option<Vec<String>> {
    let mut r = Reader { buf: bytes, at: 0 };
    if r.i16()? < 0 {
        return None;
    }
    let mut out = Vec::new();
    for _ in 0..r.count(2)? {
        out.push(r.string()?);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(spec: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        spec.iter()
            .map(|(m, ts)| (m.to_string(), ts.iter().map(|t| t.to_string()).collect()))
            .collect()
    }

    #[test]
    fn range_gives_leading_members_the_extra_partitions() {
        let ms = members(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]);
        let out = assign(Assignor::Range, &ms, |_| Some(7));
        assert_eq!(out["a"]["t"], vec![0, 1, 2]);
        assert_eq!(out["b"]["t"], vec![3, 4]);
        assert_eq!(out["c"]["t"], vec![5, 6]);
    }

    #[test]
    fn round_robin_skips_members_not_subscribed() {
        let ms = members(&[("a", &["t", "u"]), ("b", &["t"])]);
        let out = assign(Assignor::RoundRobin, &ms, |t| {
            Some(if t == "t" { 3 } else { 2 })
        });
        let total: usize = out.values().flat_map(|a| a.values()).map(|v| v.len()).sum();
        assert_eq!(total, 5);
        assert!(!out["b"].contains_key("u"));
        assert_eq!(out["a"]["u"], vec![0, 1]);
    }

    #[test]
    fn more_members_than_partitions_leaves_some_empty() {
        let ms = members(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]);
        for a in [Assignor::Range, Assignor::RoundRobin] {
            let out = assign(a, &ms, |_| Some(2));
            assert_eq!(out.len(), 3);
            let total: usize = out.values().flat_map(|a| a.values()).map(|v| v.len()).sum();
            assert_eq!(total, 2);
        }
    }

    #[test]
    fn encodings_round_trip_and_reject_garbage() {
        let mut a = Assignment::new();
        a.insert("t".into(), vec![0, 2]);
        a.insert("u".into(), vec![1]);
        assert_eq!(decode_assignment(&encode_assignment(&a)), Some(a));
        let topics = vec!["x".to_string(), "y".to_string()];
        assert_eq!(
            decode_subscription(&encode_subscription(&topics)),
            Some(topics)
        );
        assert_eq!(decode_assignment(&[0, 0, 0x7f, 0xff, 0xff, 0xff]), None);
        assert_eq!(decode_assignment(b"x"), None);
    }
}
