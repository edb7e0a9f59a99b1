//! SASL on the Kafka listener: SaslHandshake (v0-v1) and SaslAuthenticate
//! (v0-v2) answered in the connection's reader, in order, against the
//! process's credential store (`crate::auth`).
//!
//! Invariants:
//! - With `[sasl] kafka = true`, a connection that has not authenticated
//!   gets answers to ApiVersions, SaslHandshake and SaslAuthenticate only;
//!   any other request closes it before it is decoded.
//! - A failed authentication (wrong password, unknown user, a malformed
//!   token, an address locked out for failed logins) is answered with
//!   SASL_AUTHENTICATION_FAILED and the connection is closed; the failure
//!   counts against the client's address.
//! - Only the raw-token-free flow (handshake, then SaslAuthenticate) is
//!   served: a v0 handshake is answered, but tokens sent afterwards without
//!   a SaslAuthenticate envelope do not frame as requests and close the
//!   connection. Every maintained client (librdkafka, the Java client,
//!   kafka-python, KafkaJS) uses SaslAuthenticate when it is advertised.
//! - Re-authentication (KIP-368) is not offered: session_lifetime_ms is 0,
//!   and a second handshake on an authenticated connection is refused.

use super::codec::{self, RequestHead};
use crate::auth::{Exchange, Step, Store};
use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use std::net::IpAddr;

pub const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
pub const ILLEGAL_SASL_STATE: i16 = 34;
pub const SASL_AUTHENTICATION_FAILED: i16 = 58;

/// One connection's authentication state.
#[derive(Default)]
pub struct SaslState {
    exchange: Option<Exchange>,
    /// `User:NAME` once authenticated.
    pub principal: Option<String>,
}

/// What the reader does with a request.
pub enum Gate {
    /// Serve it as usual.
    Pass,
    /// Send these bytes (in order with the other answers); close after if
    /// `close`.
    Answer { bytes: Bytes, close: bool },
    /// Close without an answer.
    Close,
}

/// Whether SASL is required on the Kafka listener.
pub fn required(store: &Store) -> bool {
    store.settings.kafka
}

/// First gate, on the request head only: before authentication, only
/// ApiVersions and the SASL requests go on to be decoded.
pub fn admit_head(store: &Store, st: &SaslState, head: &RequestHead) -> bool {
    if !required(store) || st.principal.is_some() {
        return true;
    }
    matches!(
        ApiKey::try_from(head.api_key),
        Ok(ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate)
    )
}

fn mechanisms(store: &Store) -> Vec<StrBytes> {
    store
        .settings
        .mechanisms
        .iter()
        .map(|m| StrBytes::from_string(m.clone()))
        .collect()
}

fn encode(cid: i32, key: ApiKey, version: i16, resp: ResponseKind, close: bool) -> Gate {
    match codec::encode_response(cid, key, version, &resp) {
        Ok(b) => Gate::Answer {
            bytes: b.freeze(),
            close,
        },
        Err(_) => Gate::Close,
    }
}

fn auth_failed(cid: i32, version: i16, message: &str) -> Gate {
    encode(
        cid,
        ApiKey::SaslAuthenticate,
        version,
        ResponseKind::SaslAuthenticate(
            SaslAuthenticateResponse::default()
                .with_error_code(SASL_AUTHENTICATION_FAILED)
                .with_error_message(Some(StrBytes::from_string(message.to_owned()))),
        ),
        true,
    )
}

/// Second gate, on a decoded request: answers the SASL requests.
pub fn gate(store: &Store, st: &mut SaslState, peer: Option<IpAddr>, d: &codec::Decoded) -> Gate {
    let cid = d.header.correlation_id;
    let v = d.version;
    match &d.body {
        RequestKind::SaslHandshake(r) => {
            let mech = r.mechanism.as_str();
            let ok = required(store) && st.principal.is_none() && st.exchange.is_none();
            let exchange = if ok { store.start(mech) } else { None };
            let code = match (&exchange, ok) {
                (Some(_), _) => codec::NONE,
                (None, true) => UNSUPPORTED_SASL_MECHANISM,
                (None, false) => ILLEGAL_SASL_STATE,
            };
            st.exchange = exchange;
            let offered = if required(store) {
                mechanisms(store)
            } else {
                Vec::new()
            };
            encode(
                cid,
                d.key,
                v,
                ResponseKind::SaslHandshake(
                    SaslHandshakeResponse::default()
                        .with_error_code(code)
                        .with_mechanisms(offered),
                ),
                code != codec::NONE && required(store),
            )
        }
        RequestKind::SaslAuthenticate(r) => {
            if store.locked_out(peer) {
                return auth_failed(cid, v, "Authentication failed: too many failed logins");
            }
            let Some(ex) = st.exchange.as_mut() else {
                return encode(
                    cid,
                    d.key,
                    v,
                    ResponseKind::SaslAuthenticate(
                        SaslAuthenticateResponse::default().with_error_code(ILLEGAL_SASL_STATE),
                    ),
                    required(store),
                );
            };
            match ex.step(&r.auth_bytes) {
                Step::Continue(out) => encode(
                    cid,
                    d.key,
                    v,
                    ResponseKind::SaslAuthenticate(
                        SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from(out)),
                    ),
                    false,
                ),
                Step::Done { principal, out } => {
                    st.exchange = None;
                    st.principal = Some(principal);
                    encode(
                        cid,
                        d.key,
                        v,
                        ResponseKind::SaslAuthenticate(
                            SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from(out)),
                        ),
                        false,
                    )
                }
                Step::Failed(message) => {
                    st.exchange = None;
                    store.failed(peer);
                    auth_failed(cid, v, &message)
                }
            }
        }
        _ => Gate::Pass,
    }
}
