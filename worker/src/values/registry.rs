//! What the worker knows about types that are not built in: domains, arrays,
//! enums, composites, ranges and extension types (`hstore`, `citext`, …).
//!
//! pgoutput sends only a column's type OID. Built-in OIDs are fixed
//! ([`super::oid`]); everything else is read from `pg_type` when the worker
//! starts ([`TypeRegistry::load`]) and again when a Relation message names an
//! OID the registry does not know ([`TypeRegistry::knows`]).

use std::collections::HashMap;

use super::oid;

/// One attribute of a composite type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribute {
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// The kind of a type, as far as encoding its values needs to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TypeKind {
    /// A domain: its values are those of `base`, with the domain's type
    /// modifier (`typtypmod`, e.g. 3 for a domain over `timestamp(3)`).
    Domain { base: u32, typmod: i32 },
    /// An array of `element`; `delimiter` separates elements in the text form
    /// (`,` for every type but `box`, which uses `;`).
    Array { element: u32, delimiter: u8 },
    /// An enum: values are its labels.
    Enum,
    /// A composite type (`CREATE TYPE … AS (…)`): its attributes in order.
    Composite { attributes: Vec<Attribute> },
    /// A range or multirange over `subtype`.
    Range { subtype: u32 },
    /// Any other type, such as a base type of an extension.
    Base,
}

/// A type read from `pg_type`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeInfo {
    pub schema: String,
    pub name: String,
    pub kind: TypeKind,
}

/// Type OIDs the worker can resolve beyond the built-in ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypeRegistry {
    types: HashMap<u32, TypeInfo>,
}

/// Reading the catalog failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "reading types from pg_type failed (the capture user needs to be able to read pg_catalog): {0}"
    )]
    Query(#[source] tokio_postgres::Error),
    #[error("pg_type row for type {oid} has an unexpected {column}: {value:?}")]
    Unexpected {
        oid: u32,
        column: &'static str,
        value: String,
    },
}

/// Non-built-in types plus every true array type (built-in arrays included,
/// so arrays of less common built-in types resolve too; `int2vector` and
/// `oidvector`, whose text is not `{…}`, are not arrays here). Table row types
/// are skipped: only stand-alone composite types (`relkind = 'c'`) are read.
const TYPES_SQL: &str = "\
SELECT t.oid, n.nspname::text, t.typname::text, t.typtype::text,
       t.typinput = 'array_in'::regproc AND t.typelem <> 0,
       t.typbasetype, t.typtypmod, t.typelem, t.typdelim::text,
       COALESCE(r.rngsubtype, mr.rngsubtype, 0::oid)
FROM pg_type t
JOIN pg_namespace n ON n.oid = t.typnamespace
LEFT JOIN pg_class c ON c.oid = t.typrelid
LEFT JOIN pg_range r ON r.rngtypid = t.oid
LEFT JOIN pg_range mr ON mr.rngmultitypid = t.oid
WHERE (t.oid >= 16384 AND (t.typtype <> 'c' OR c.relkind = 'c'))
   OR (t.typinput = 'array_in'::regproc AND t.typelem <> 0)";

const ATTRIBUTES_SQL: &str = "\
SELECT t.oid, a.attname::text, a.atttypid, a.atttypmod
FROM pg_type t
JOIN pg_class c ON c.oid = t.typrelid AND c.relkind = 'c'
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE t.typtype = 'c' AND t.oid >= 16384
ORDER BY t.oid, a.attnum";

impl TypeRegistry {
    /// A registry that knows only the built-in types.
    pub fn builtin() -> Self {
        Self::default()
    }

    /// Reads every non-built-in type (and every array type) from `pg_type`.
    pub async fn load(client: &tokio_postgres::Client) -> Result<Self, RegistryError> {
        let mut registry = Self::default();
        let mut attributes: HashMap<u32, Vec<Attribute>> = HashMap::new();
        for row in client
            .query(ATTRIBUTES_SQL, &[])
            .await
            .map_err(RegistryError::Query)?
        {
            attributes.entry(row.get(0)).or_default().push(Attribute {
                name: row.get(1),
                type_oid: row.get(2),
                type_modifier: row.get(3),
            });
        }
        for row in client
            .query(TYPES_SQL, &[])
            .await
            .map_err(RegistryError::Query)?
        {
            let oid: u32 = row.get(0);
            let typtype: String = row.get(3);
            let is_array: bool = row.get(4);
            let base: u32 = row.get(5);
            let typmod: i32 = row.get(6);
            let element: u32 = row.get(7);
            let delimiter: String = row.get(8);
            let subtype: u32 = row.get(9);
            let kind = match typtype.as_str() {
                "d" => TypeKind::Domain { base, typmod },
                "e" => TypeKind::Enum,
                "c" => TypeKind::Composite {
                    attributes: attributes.remove(&oid).unwrap_or_default(),
                },
                "r" | "m" => TypeKind::Range { subtype },
                "b" if is_array => TypeKind::Array {
                    element,
                    delimiter: match delimiter.as_bytes() {
                        [d] => *d,
                        _ => {
                            return Err(RegistryError::Unexpected {
                                oid,
                                column: "typdelim",
                                value: delimiter,
                            });
                        }
                    },
                },
                "b" | "p" => TypeKind::Base,
                _ => {
                    return Err(RegistryError::Unexpected {
                        oid,
                        column: "typtype",
                        value: typtype,
                    });
                }
            };
            registry.insert(
                oid,
                TypeInfo {
                    schema: row.get(1),
                    name: row.get(2),
                    kind,
                },
            );
        }
        Ok(registry)
    }

    /// Adds or replaces one type.
    pub fn insert(&mut self, oid: u32, info: TypeInfo) {
        self.types.insert(oid, info);
    }

    /// The registered type of `oid`, if any.
    pub fn get(&self, oid: u32) -> Option<&TypeInfo> {
        self.types.get(&oid)
    }

    /// Whether values of `oid` can be encoded by their type (else they are
    /// written as strings): built-in types and registered ones. A Relation
    /// message naming an unknown OID is the cue to [`TypeRegistry::load`] again.
    pub fn knows(&self, type_oid: u32) -> bool {
        type_oid < oid::FIRST_NORMAL_OBJECT_ID || self.types.contains_key(&type_oid)
    }

    /// Number of registered types.
    pub fn len(&self) -> usize {
        self.types.len()
    }

    /// True when nothing beyond the built-in types is registered.
    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }
}
