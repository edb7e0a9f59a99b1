//! The authorizer's decision, I/O-free (foundation layer): Kafka's ACL
//! model and its rules, over a list of bindings.
//!
//! NOT WIRED YET: no request path consults it, no API creates bindings and
//! nothing stores them. It is the decision the shared operations layer
//! (`crate::ops`) is meant to call once per operation for both protocol
//! edges; see ARCHITECTURE.md ("Authentication ...") for what is missing.
//!
//! Rules (Kafka's `AclAuthorizer`):
//! - A super user is allowed everything.
//! - A binding matches a request when its principal is the request's or
//!   `User:*`, its host is the client's or `*`, its operation is the
//!   requested one or `All`, and its resource type is the requested one
//!   with a literal name equal to the resource's (or the literal `*`) or a
//!   prefixed name the resource's name starts with.
//! - Any matching DENY refuses, whatever allows (deny wins).
//! - Otherwise a matching ALLOW permits; ALLOW of Read, Write, Delete or
//!   Alter implies Describe, and ALLOW of AlterConfigs implies
//!   DescribeConfigs.
//! - No match: refused.

use serde::{Deserialize, Serialize};

/// Bindings one authorizer holds.
pub const ACL_BINDINGS_MAX: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResourceType {
    Topic,
    Group,
    Cluster,
    TransactionalId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PatternType {
    Literal,
    Prefixed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operation {
    All,
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    ClusterAction,
    DescribeConfigs,
    AlterConfigs,
    IdempotentWrite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Permission {
    Allow,
    Deny,
}

/// One ACL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclBinding {
    pub resource_type: ResourceType,
    pub resource_name: String,
    pub pattern: PatternType,
    /// `User:NAME` or `User:*`.
    pub principal: String,
    /// An address or `*`.
    pub host: String,
    pub operation: Operation,
    pub permission: Permission,
}

/// What a request asks to do.
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    pub principal: &'a str,
    pub host: &'a str,
    pub operation: Operation,
    pub resource_type: ResourceType,
    pub resource_name: &'a str,
}

impl AclBinding {
    fn matches_resource(&self, a: &Access<'_>) -> bool {
        self.resource_type == a.resource_type
            && match self.pattern {
                PatternType::Literal => {
                    self.resource_name == "*" || self.resource_name == a.resource_name
                }
                PatternType::Prefixed => a.resource_name.starts_with(&self.resource_name),
            }
    }

    fn matches_who(&self, a: &Access<'_>) -> bool {
        (self.principal == a.principal || self.principal == "User:*")
            && (self.host == "*" || self.host == a.host)
    }
}

/// Operations an ALLOW of `op` also permits (besides `op` itself).
fn implied_by(op: Operation, requested: Operation) -> bool {
    op == requested
        || op == Operation::All
        || (requested == Operation::Describe
            && matches!(
                op,
                Operation::Read | Operation::Write | Operation::Delete | Operation::Alter
            ))
        || (requested == Operation::DescribeConfigs && op == Operation::AlterConfigs)
}

/// Decides one access against `bindings`.
pub fn authorize(bindings: &[AclBinding], super_user: bool, a: &Access<'_>) -> bool {
    if super_user {
        return true;
    }
    let relevant = || {
        bindings
            .iter()
            .filter(|b| b.matches_resource(a) && b.matches_who(a))
    };
    let denied = relevant().any(|b| {
        b.permission == Permission::Deny
            && (b.operation == a.operation || b.operation == Operation::All)
    });
    if denied {
        return false;
    }
    relevant().any(|b| b.permission == Permission::Allow && implied_by(b.operation, a.operation))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(
        name: &str,
        pattern: PatternType,
        principal: &str,
        op: Operation,
        perm: Permission,
    ) -> AclBinding {
        AclBinding {
            resource_type: ResourceType::Topic,
            resource_name: name.into(),
            pattern,
            principal: principal.into(),
            host: "*".into(),
            operation: op,
            permission: perm,
        }
    }

    fn topic<'a>(principal: &'a str, op: Operation, name: &'a str) -> Access<'a> {
        Access {
            principal,
            host: "10.0.0.1",
            operation: op,
            resource_type: ResourceType::Topic,
            resource_name: name,
        }
    }

    #[test]
    fn prefixed_write_allows_its_prefix_only_and_implies_describe() {
        let b = vec![acl(
            "orders.",
            PatternType::Prefixed,
            "User:alice",
            Operation::Write,
            Permission::Allow,
        )];
        assert!(authorize(
            &b,
            false,
            &topic("User:alice", Operation::Write, "orders.eu")
        ));
        assert!(authorize(
            &b,
            false,
            &topic("User:alice", Operation::Describe, "orders.eu")
        ));
        assert!(!authorize(
            &b,
            false,
            &topic("User:alice", Operation::Write, "payments")
        ));
        assert!(!authorize(
            &b,
            false,
            &topic("User:alice", Operation::Read, "orders.eu")
        ));
        assert!(!authorize(
            &b,
            false,
            &topic("User:bob", Operation::Write, "orders.eu")
        ));
    }

    #[test]
    fn deny_beats_allow_and_super_users_bypass() {
        let b = vec![
            acl(
                "*",
                PatternType::Literal,
                "User:*",
                Operation::All,
                Permission::Allow,
            ),
            acl(
                "secret",
                PatternType::Literal,
                "User:alice",
                Operation::Read,
                Permission::Deny,
            ),
        ];
        assert!(!authorize(
            &b,
            false,
            &topic("User:alice", Operation::Read, "secret")
        ));
        assert!(authorize(
            &b,
            false,
            &topic("User:alice", Operation::Write, "secret")
        ));
        assert!(authorize(
            &b,
            false,
            &topic("User:bob", Operation::Read, "secret")
        ));
        assert!(authorize(
            &b,
            true,
            &topic("User:alice", Operation::Read, "secret")
        ));
        assert!(!authorize(
            &[],
            false,
            &topic("User:alice", Operation::Read, "x")
        ));
    }

    #[test]
    fn host_and_resource_type_must_match() {
        let mut g = acl(
            "g",
            PatternType::Literal,
            "User:alice",
            Operation::Read,
            Permission::Allow,
        );
        g.resource_type = ResourceType::Group;
        g.host = "10.0.0.2".into();
        let b = vec![g];
        let mut a = topic("User:alice", Operation::Read, "g");
        assert!(!authorize(&b, false, &a), "a topic is no group");
        a.resource_type = ResourceType::Group;
        assert!(!authorize(&b, false, &a), "another host");
        a.host = "10.0.0.2";
        assert!(authorize(&b, false, &a));
    }
}
