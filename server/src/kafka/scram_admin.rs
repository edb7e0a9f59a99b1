//! DescribeUserScramCredentials and AlterUserScramCredentials (v0) against
//! the credential store (`crate::auth`).
//!
//! Invariants:
//! - With SASL on, only super users (`[sasl] super_users`) may describe or
//!   alter credentials (CLUSTER_AUTHORIZATION_FAILED otherwise); ACLs on the
//!   cluster resource are not done yet. With SASL off the listener has no
//!   principals and these APIs are open like every other one.
//! - An alteration is written to `security.json` (fsync, off the shard's
//!   thread through `spawn_blocking`) before it is answered. A (user,
//!   mechanism) named twice in one request is refused (DUPLICATE_RESOURCE),
//!   as Kafka does; the answer has one result per user (its first error,
//!   if any), in the order users first appear.
//! - Passwords never reach the broker: an upsertion carries the salt and
//!   the salted password, from which the stored keys are derived.

use super::handlers::Ctx;
use crate::auth::{Alteration, CredentialError, ScramCredential, ScramMechanism};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use std::collections::HashMap;

pub const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
pub const DUPLICATE_RESOURCE: i16 = 92;
pub const RESOURCE_NOT_FOUND: i16 = 91;
pub const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
pub const UNACCEPTABLE_CREDENTIAL: i16 = 93;
pub const USERS_PER_REQUEST_MAX: usize = 1_000;

/// A change's result: an error code and message on failure.
type Outcome = Result<(), (i16, String)>;

fn allowed(ctx: &Ctx) -> bool {
    let store = &ctx.shard.shared.auth;
    !store.settings.kafka || store.is_super_user(&ctx.principal.borrow())
}

fn s(x: &str) -> StrBytes {
    StrBytes::from_string(x.to_owned())
}

pub fn describe(
    ctx: &Ctx,
    r: DescribeUserScramCredentialsRequest,
) -> DescribeUserScramCredentialsResponse {
    let resp = DescribeUserScramCredentialsResponse::default();
    if !allowed(ctx) {
        return resp
            .with_error_code(CLUSTER_AUTHORIZATION_FAILED)
            .with_error_message(Some(s("only super users may describe credentials")));
    }
    let all = ctx.shard.shared.auth.describe();
    let names: Vec<String> = match r.users {
        Some(u) if !u.is_empty() => u
            .iter()
            .take(USERS_PER_REQUEST_MAX)
            .map(|u| u.name.as_str().to_owned())
            .collect(),
        _ => all.keys().cloned().collect(),
    };
    let results = names
        .into_iter()
        .map(|name| match all.get(&name) {
            None => describe_user_scram_credentials_response::DescribeUserScramCredentialsResult::default()
                .with_user(s(&name))
                .with_error_code(RESOURCE_NOT_FOUND)
                .with_error_message(Some(s("no credentials for this user"))),
            Some(creds) => describe_user_scram_credentials_response::DescribeUserScramCredentialsResult::default()
                .with_user(s(&name))
                .with_credential_infos(
                    creds
                        .iter()
                        .map(|(m, it)| {
                            describe_user_scram_credentials_response::CredentialInfo::default()
                                .with_mechanism(m.kafka_code())
                                .with_iterations(i32::try_from(*it).unwrap_or(i32::MAX))
                        })
                        .collect(),
                ),
        })
        .collect();
    resp.with_results(results)
}

fn code_of(e: &CredentialError) -> i16 {
    match e {
        CredentialError::NotFound => RESOURCE_NOT_FOUND,
        CredentialError::Io { .. } => super::codec::KAFKA_STORAGE_ERROR,
        _ => UNACCEPTABLE_CREDENTIAL,
    }
}

pub async fn alter(
    ctx: &Ctx,
    r: AlterUserScramCredentialsRequest,
) -> AlterUserScramCredentialsResponse {
    let mut results: Vec<(String, Outcome)> = Vec::new();
    let deny = !allowed(ctx);
    // Per (user, mechanism): how often it is named (Kafka refuses twice).
    let mut named: HashMap<(String, i8), usize> = HashMap::new();
    for k in r
        .deletions
        .iter()
        .map(|d| (d.name.as_str().to_owned(), d.mechanism))
        .chain(
            r.upsertions
                .iter()
                .map(|u| (u.name.as_str().to_owned(), u.mechanism)),
        )
    {
        *named.entry(k).or_default() += 1;
    }
    let mut changes = Vec::new();
    let mut slots = Vec::new();
    let total = r.deletions.len() + r.upsertions.len();
    for (i, (key, change)) in r
        .deletions
        .into_iter()
        .map(|d| {
            let m = ScramMechanism::from_kafka_code(d.mechanism);
            let name = d.name.as_str().to_owned();
            (
                (name.clone(), d.mechanism),
                m.map(|mechanism| {
                    Ok(Alteration::Delete {
                        user: name,
                        mechanism,
                    })
                }),
            )
        })
        .chain(r.upsertions.into_iter().map(|u| {
            let m = ScramMechanism::from_kafka_code(u.mechanism);
            let name = u.name.as_str().to_owned();
            (
                (name.clone(), u.mechanism),
                m.map(|mechanism| {
                    ScramCredential::from_salted_password(
                        mechanism,
                        &u.salt,
                        u.iterations,
                        &u.salted_password,
                    )
                    .map(|credential| Alteration::Upsert {
                        user: name,
                        mechanism,
                        credential,
                    })
                }),
            )
        }))
        .enumerate()
    {
        let outcome = if deny {
            Err((
                CLUSTER_AUTHORIZATION_FAILED,
                "only super users may alter credentials".to_owned(),
            ))
        } else if i >= USERS_PER_REQUEST_MAX.min(total) {
            Err((
                UNACCEPTABLE_CREDENTIAL,
                "too many changes in one request".into(),
            ))
        } else if named.get(&key).copied().unwrap_or(0) > 1 {
            Err((
                DUPLICATE_RESOURCE,
                "user and mechanism named more than once".into(),
            ))
        } else {
            match change {
                None => Err((UNSUPPORTED_SASL_MECHANISM, "unknown SCRAM mechanism".into())),
                Some(Err(e)) => Err((code_of(&e), e.to_string())),
                Some(Ok(c)) => {
                    slots.push(results.len());
                    changes.push(c);
                    Ok(())
                }
            }
        };
        results.push((key.0, outcome));
    }
    if !changes.is_empty() {
        let store = ctx.shard.shared.auth.clone();
        let applied = glommio::executor()
            .spawn_blocking(move || store.alter(changes))
            .await;
        for (slot, res) in slots.into_iter().zip(applied) {
            if let Err(e) = res {
                results[slot].1 = Err((code_of(&e), e.to_string()));
            }
        }
    }
    // One result per user, its first error if any.
    let mut per_user: Vec<(String, Outcome)> = Vec::new();
    for (user, r) in results {
        match per_user.iter_mut().find(|(u, _)| *u == user) {
            Some((_, prev)) => {
                if prev.is_ok() {
                    *prev = r;
                }
            }
            None => per_user.push((user, r)),
        }
    }
    AlterUserScramCredentialsResponse::default().with_results(
        per_user
            .into_iter()
            .map(|(user, r)| {
                let (code, msg) = match r {
                    Ok(()) => (0, None),
                    Err((c, m)) => (c, Some(s(&m))),
                };
                alter_user_scram_credentials_response::AlterUserScramCredentialsResult::default()
                    .with_user(s(&user))
                    .with_error_code(code)
                    .with_error_message(msg)
            })
            .collect(),
    )
}
