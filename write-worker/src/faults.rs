//! The one place where a failed commit becomes a decision: retry later (the
//! database or its connection is the problem; nothing is acknowledged) or
//! refuse the write (the database will never take it; dead-letter it alone).

use crate::store::StoreError;

/// What to do about a failed commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Keep the messages unacknowledged and try again after a pause.
    Transient,
    /// The data is refused; find the write at fault and dead-letter it with this reason.
    Refused(String),
}

impl Fault {
    /// The metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Transient => "transient",
            Fault::Refused(_) => "refused",
        }
    }
}

/// Classifies a commit failure. Only the SQLSTATE classes that blame the data
/// refuse: a connection, timeout, lock, permission or failover problem must
/// never dead-letter a valid write.
pub fn classify(error: &StoreError) -> Fault {
    match error {
        StoreError::Database(sqlx::Error::Database(db)) => match db.code() {
            // 22 data exception, 23 integrity constraint, 54 program limit exceeded.
            Some(code)
                if ["22", "23", "54"]
                    .iter()
                    .any(|class| code.starts_with(class)) =>
            {
                Fault::Refused(format!("database refused the write (SQLSTATE {code})"))
            }
            _ => Fault::Transient,
        },
        StoreError::CorruptRow(what) => Fault::Refused(format!("stored record unreadable: {what}")),
        StoreError::Database(_) | StoreError::Lsn(_) => Fault::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_are_transient() {
        for e in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        ] {
            assert_eq!(classify(&StoreError::Database(e)), Fault::Transient);
        }
        assert_eq!(classify(&StoreError::Lsn("x".into())), Fault::Transient);
        assert_eq!(
            classify(&StoreError::CorruptRow("x".into())).kind(),
            "refused"
        );
    }
}
