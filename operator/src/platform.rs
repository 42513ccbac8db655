//! Where the database runs, told apart by the roles each managed service
//! installs, and the fixes that fit it. Pure: preflight reads the role
//! names, this module decides.
//!
//! On Amazon RDS and Aurora no role may hold the REPLICATION attribute;
//! replication comes from membership in `rds_replication`, and
//! `wal_level` follows the parameter `rds.logical_replication`. Google Cloud
//! SQL turns logical decoding on with the flag `cloudsql.logical_decoding`;
//! Azure Database for PostgreSQL Flexible Server with the server parameter
//! `wal_level` (older servers: `azure.replication_support`).

/// A PostgreSQL service with its own way to grant replication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// Amazon RDS or Aurora (role `rds_replication` exists).
    Rds,
    /// Google Cloud SQL (role `cloudsqlsuperuser` exists).
    CloudSql,
    /// Azure Database for PostgreSQL (role `azure_pg_admin` exists).
    Azure,
    /// Anything else: a server whose configuration the user controls.
    SelfHosted,
}

/// The roles preflight asks about.
pub const MARKER_ROLES: [&str; 3] = ["rds_replication", "cloudsqlsuperuser", "azure_pg_admin"];

impl Platform {
    /// Tell the platform from the marker roles that exist (pure).
    pub fn detect(existing_roles: &[String]) -> Self {
        let has = |r: &str| existing_roles.iter().any(|e| e == r);
        if has("rds_replication") {
            Platform::Rds
        } else if has("cloudsqlsuperuser") {
            Platform::CloudSql
        } else if has("azure_pg_admin") {
            Platform::Azure
        } else {
            Platform::SelfHosted
        }
    }

    /// How the capture's role gets replication here.
    pub fn grant_replication(self, user: &str) -> String {
        let role = crate::database::quote_ident(user);
        match self {
            Platform::Rds => format!(
                "grant it membership in rds_replication: GRANT rds_replication TO {role} (Amazon RDS and Aurora allow no REPLICATION attribute)"
            ),
            Platform::CloudSql | Platform::Azure | Platform::SelfHosted => {
                format!("run ALTER ROLE {role} WITH REPLICATION")
            }
        }
    }

    /// How `wal_level` becomes `logical` here.
    pub fn enable_logical(self) -> &'static str {
        match self {
            Platform::Rds => {
                "set rds.logical_replication = 1 in the DB (cluster) parameter group and reboot the instance"
            }
            Platform::CloudSql => {
                "set the database flag cloudsql.logical_decoding = on (the instance restarts)"
            }
            Platform::Azure => {
                "set the server parameter wal_level = logical (older servers: azure.replication_support = logical) and restart the server"
            }
            Platform::SelfHosted => {
                "set wal_level = logical in postgresql.conf and restart PostgreSQL"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_platform_comes_from_the_roles_it_installs() {
        let roles = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            Platform::detect(&roles(&["rds_replication"])),
            Platform::Rds
        );
        assert_eq!(
            Platform::detect(&roles(&["cloudsqlsuperuser"])),
            Platform::CloudSql
        );
        assert_eq!(
            Platform::detect(&roles(&["azure_pg_admin"])),
            Platform::Azure
        );
        assert_eq!(Platform::detect(&[]), Platform::SelfHosted);
    }

    #[test]
    fn the_fix_fits_the_platform() {
        assert!(
            Platform::Rds
                .grant_replication("cdc")
                .contains("GRANT rds_replication TO \"cdc\"")
        );
        assert!(
            !Platform::Rds
                .grant_replication("cdc")
                .contains("ALTER ROLE")
        );
        assert!(
            Platform::SelfHosted
                .grant_replication("cdc")
                .contains("ALTER ROLE \"cdc\" WITH REPLICATION")
        );
        assert!(
            Platform::Rds
                .enable_logical()
                .contains("rds.logical_replication")
        );
        assert!(
            Platform::CloudSql
                .enable_logical()
                .contains("cloudsql.logical_decoding")
        );
        assert!(
            Platform::SelfHosted
                .enable_logical()
                .contains("postgresql.conf")
        );
    }
}
