//! Quoting for SQL text that Siphon builds itself (DDL, catalog queries,
//! replication commands). Values from users go through bind parameters
//! wherever PostgreSQL accepts one; these are for the places it does not.

/// Largest identifier PostgreSQL keeps (NAMEDATALEN - 1).
pub const PG_IDENT_MAX: usize = 63;

/// A double-quoted identifier: `a"b` → `"a""b"`.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A single-quoted string literal (`standard_conforming_strings = on`, which
/// every session of Siphon's sets): `it's` → `'it''s'`.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// `"schema"."name"`.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_doubled_inside_their_own_kind_only() {
        assert_eq!(quote_ident("orders"), "\"orders\"");
        assert_eq!(quote_ident("a\"b'c"), "\"a\"\"b'c\"");
        assert_eq!(quote_literal("it's \"x\""), "'it''s \"x\"'");
        assert_eq!(qualified("Sales", "o\"d"), "\"Sales\".\"o\"\"d\"");
    }
}
