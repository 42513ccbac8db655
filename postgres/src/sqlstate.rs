//! Which server errors are worth a retry, by SQLSTATE class.
//!
//! One rule for every connection Siphon opens. Transient: connection
//! exceptions (class 08), transaction rollbacks (40: serialization failures,
//! deadlocks), insufficient resources (53: too many connections, out of disk
//! or memory), operator intervention (57: a cancelled statement, shutdown,
//! crash recovery, a server still starting), and I/O errors of the server
//! (58030). Everything else (privileges, missing objects, bad SQL, data
//! errors) stays as it is until a person changes something, so retrying it
//! only hides the reason.

/// Whether a reconnect or a second attempt, after a backoff, may succeed.
pub fn is_transient(code: &str) -> bool {
    matches!(code.get(..2), Some("08" | "40" | "53" | "57")) || code == "58030"
}

/// The same for a tokio-postgres error: one the server did not send (the
/// connection closed, reset or timed out) is one a reconnect may cure.
pub fn is_transient_error(error: &tokio_postgres::Error) -> bool {
    error.is_closed()
        || error
            .as_db_error()
            .is_none_or(|db| is_transient(db.code().code()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_that_wait_out_and_classes_that_need_a_person() {
        for code in [
            "08006", "08001", "53300", "53100", "57P01", "57P03", "57014", "40001", "40P01",
            "58030",
        ] {
            assert!(is_transient(code), "{code}");
        }
        for code in [
            "28P01", "42501", "42P01", "42704", "55006", "22P02", "55000", "3D000", "58P01",
        ] {
            assert!(!is_transient(code), "{code}");
        }
    }
}
