//! Replication slots: their names, as a person writes them (`spec.slotName`,
//! checked the way PostgreSQL would refuse them) or as Siphon derives them
//! from the capture's namespace and name (always valid, never colliding);
//! and the three things Siphon does to a slot: read its state, create it,
//! drop it.
//!
//! Invariants:
//! - Creating a slot that exists is not an error (a retried step, or two
//!   processes racing, end with one slot).
//! - Dropping ends the session streaming from the slot first, and waits for
//!   the server to release it; a slot already gone is not an error.

use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use crate::ident::PG_IDENT_MAX;

/// A replication slot name: lowercase letters, digits, underscores, ≤ 63 bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SlotName(String);

impl SlotName {
    /// Accept a name written by a person, or say why not.
    pub fn parse(name: &str) -> Result<Self, String> {
        if name.is_empty() || name.len() > PG_IDENT_MAX {
            return Err(format!("slot name {name:?} must be 1 to 63 bytes"));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(format!(
                "slot name {name:?} may hold only lowercase letters, digits and underscores"
            ));
        }
        Ok(Self(name.to_string()))
    }

    /// `siphon_<namespace>_<name>`, sanitized; names too long keep a hash
    /// suffix so that two long names never collide.
    pub fn derive(namespace: &str, name: &str) -> Self {
        let raw = format!("siphon_{namespace}_{name}");
        let mut s: String = raw
            .chars()
            .map(|c| {
                let c = c.to_ascii_lowercase();
                if c.is_ascii_lowercase() || c.is_ascii_digit() {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if s.len() > PG_IDENT_MAX {
            let hash = hex::encode(&Sha256::digest(raw.as_bytes())[..4]);
            s.truncate(PG_IDENT_MAX - hash.len() - 1);
            s.push('_');
            s.push_str(&hash);
        }
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SlotName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What `pg_replication_slots` says of a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotState {
    /// The session streaming from it, if any.
    pub active_pid: Option<i32>,
    /// `wal_status = 'lost'`: the server removed WAL the slot still needed.
    pub lost: bool,
}

/// The slot's state, or `None` when it does not exist.
pub async fn state(
    client: &Client,
    slot: &str,
) -> Result<Option<SlotState>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT active_pid, coalesce(wal_status = 'lost', false) \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(row.map(|row| SlotState {
        active_pid: row.get(0),
        lost: row.get(1),
    }))
}

/// Create a pgoutput slot (a failover slot when asked: PostgreSQL 17 and
/// later). `Ok(false)` when it existed already.
pub async fn create(
    client: &Client,
    slot: &str,
    failover: bool,
) -> Result<bool, tokio_postgres::Error> {
    let created = if failover {
        client
            .query(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput', false, false, true)",
                &[&slot],
            )
            .await
    } else {
        client
            .query(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&slot],
            )
            .await
    };
    match created {
        Ok(_) => Ok(true),
        Err(e) if e.code().map(|c| c.code()) == Some("42710") => Ok(false),
        Err(e) => Err(e),
    }
}

/// End the slot's session and drop the slot; a slot already gone is fine.
pub async fn drop(client: &Client, slot: &str) -> Result<(), tokio_postgres::Error> {
    client
        .query(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
             WHERE slot_name = $1 AND active_pid IS NOT NULL",
            &[&slot],
        )
        .await?;
    // The ended session releases the slot asynchronously: retry for ~5 s.
    let mut attempt = 0;
    loop {
        let res = client
            .query(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await;
        match res {
            Ok(_) => return Ok(()),
            Err(e) if e.code().map(|c| c.code()) == Some("55006") && attempt < 50 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_slot_names_are_valid_postgres_identifiers() {
        assert_eq!(
            SlotName::derive("default", "shop-orders").as_str(),
            "siphon_default_shop_orders"
        );
        let long = SlotName::derive(
            "a-very-long-namespace-name-indeed",
            "and-an-even-longer-capture-name-here",
        );
        assert!(long.as_str().len() <= 63);
        assert!(SlotName::parse(long.as_str()).is_ok());
        let other = SlotName::derive(
            "a-very-long-namespace-name-indeed",
            "and-an-even-longer-capture-name-herf",
        );
        assert_ne!(long, other, "hash suffix keeps long names apart");
    }

    #[test]
    fn parse_refuses_what_postgres_would() {
        assert!(SlotName::parse("ok_slot_1").is_ok());
        assert!(SlotName::parse("Bad").is_err());
        assert!(SlotName::parse("with-dash").is_err());
        assert!(SlotName::parse(&"x".repeat(64)).is_err());
    }
}
