//! Identifiers in the formats of the APIs sluice is compatible with.
//!
//! | id | format | example |
//! |---|---|---|
//! | organization, deployment, user | 13 digits | `1234567890123` |
//! | version | `ver-` + 16 lowercase hex | `ver-1111111111111111` |
//! | run | `run-` + 16 digits | `run-3333333333333333` |
//! | trigger | `tri-` + 16 digits | `tri-3333333333333333` |
//! | import job | `job-` + 16 digits | `job-4444444444444444` |
//! | import query | `qry-` + 16 digits | `qry-5555555555555555` |
//! | space, model, API key | `spc-`, `mdl-`, `key-` + 16 digits | `spc-6666666666666666` |
//! | datalake channel | 13 digits | `2222222222222` |
//! | datalake file | upload time + `-` + UUID | `20180101T112233-e8286a2a-100a-4a40-a7de-5c9a5794b76c` |
//!
//! New ids are random; every id parses strictly, so a malformed id in a path
//! is a clear 404/400 before any store is asked.

use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a valid {kind} id: expected {expected}")]
pub struct IdError {
    pub kind: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// What an id's text looks like after its prefix.
#[derive(Clone, Copy)]
enum Body {
    Digits(usize),
    Hex(usize),
}

impl Body {
    fn matches(self, s: &str) -> bool {
        match self {
            Body::Digits(n) => s.len() == n && s.bytes().all(|b| b.is_ascii_digit()),
            Body::Hex(n) => {
                s.len() == n
                    && s.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            }
        }
    }

    fn random(self) -> String {
        let mut rng = rand::thread_rng();
        match self {
            // A leading non-zero digit keeps the id the same length as a number.
            Body::Digits(n) => (0..n)
                .map(|i| {
                    let d = if i == 0 {
                        rng.gen_range(1..10)
                    } else {
                        rng.gen_range(0..10)
                    };
                    char::from(b'0' + d as u8)
                })
                .collect(),
            Body::Hex(n) => (0..n)
                .map(|_| char::from_digit(rng.gen_range(0..16), 16).unwrap_or('0'))
                .collect(),
        }
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $prefix:literal, $body:expr, $expected:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// A new random id.
            pub fn generate() -> Self {
                Self(format!("{}{}", $prefix, $body.random()))
            }

            /// Parses an id, refusing anything not in the documented format.
            pub fn parse(value: &str) -> Result<Self, IdError> {
                match value.strip_prefix($prefix) {
                    Some(body) if $body.matches(body) => Ok(Self(value.to_owned())),
                    _ => Err(IdError { kind: $kind, value: value.to_owned(), expected: $expected }),
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::parse(&value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }
    };
}

id_type!(
    /// An organization: the tenant every request and every stored row belongs to.
    OrganizationId, "organization", "", Body::Digits(13), "13 digits"
);
id_type!(
    /// A user of an organization.
    UserId, "user", "", Body::Digits(13), "13 digits"
);
id_type!(
    /// A deployment: a named piece of user code with versions.
    DeploymentId, "deployment", "", Body::Digits(13), "13 digits"
);
id_type!(
    /// A version of a deployment's code.
    VersionId, "version", "ver-", Body::Hex(16), "`ver-` followed by 16 hex digits"
);
id_type!(
    /// One run of a deployment version.
    RunId, "run", "run-", Body::Digits(16), "`run-` followed by 16 digits"
);
id_type!(
    /// A trigger that starts runs when data arrives.
    TriggerId, "trigger", "tri-", Body::Digits(16), "`tri-` followed by 16 digits"
);

id_type!(
    /// A table import job.
    JobId, "job", "job-", Body::Digits(16), "`job-` followed by 16 digits"
);
id_type!(
    /// One query (run) of a table import job.
    QueryId, "query", "qry-", Body::Digits(16), "`qry-` followed by 16 digits"
);

id_type!(
    /// A space of an organization (Arize-style).
    SpaceId, "space", "spc-", Body::Digits(16), "`spc-` followed by 16 digits"
);
id_type!(
    /// A model of a space (Arize-style).
    ModelId, "model", "mdl-", Body::Digits(16), "`mdl-` followed by 16 digits"
);
id_type!(
    /// An API key (its id; the key itself is a secret).
    ApiKeyId, "api key", "key-", Body::Digits(16), "`key-` followed by 16 digits"
);

id_type!(
    /// A datalake channel: a named stream of files.
    ChannelId, "channel", "", Body::Digits(13), "13 digits"
);

/// A file in a datalake channel: its upload time (UTC, to the second) and a
/// random UUID, so ids sort roughly by arrival and never collide.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FileId(String);

impl FileId {
    const EXPECTED: &'static str = "`YYYYMMDDTHHMMSS-` followed by a lowercase UUID";

    pub fn generate(at: chrono::DateTime<chrono::Utc>) -> FileId {
        let mut b: [u8; 16] = rand::thread_rng().gen();
        b[6] = (b[6] & 0x0f) | 0x40; // version 4
        b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
        let h =
            |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
        FileId(format!(
            "{}-{}-{}-{}-{}-{}",
            at.format("%Y%m%dT%H%M%S"),
            h(0..4),
            h(4..6),
            h(6..8),
            h(8..10),
            h(10..16)
        ))
    }

    pub fn parse(value: &str) -> Result<FileId, IdError> {
        let err = || IdError {
            kind: "file",
            value: value.to_owned(),
            expected: Self::EXPECTED,
        };
        let (stamp, uuid) = value.split_at_checked(15).ok_or_else(err)?;
        let stamp_ok = chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%S").is_ok();
        let uuid = uuid.strip_prefix('-').ok_or_else(err)?;
        let groups: Vec<&str> = uuid.split('-').collect();
        let uuid_ok = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
            && groups.iter().all(|g| {
                g.bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
            });
        if stamp_ok && uuid_ok {
            Ok(FileId(value.to_owned()))
        } else {
            Err(err())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for FileId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, IdError> {
        Self::parse(&value)
    }
}

impl From<FileId> for String {
    fn from(id: FileId) -> String {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_back() {
        for _ in 0..200 {
            let org = OrganizationId::generate();
            assert_eq!(OrganizationId::parse(org.as_str()).unwrap(), org);
            assert_eq!(org.as_str().len(), 13);
            let ver = VersionId::generate();
            assert!(ver.as_str().starts_with("ver-") && ver.as_str().len() == 20);
            assert_eq!(VersionId::parse(ver.as_str()).unwrap(), ver);
            let run = RunId::generate();
            assert!(run.as_str().starts_with("run-") && run.as_str().len() == 20);
            assert_eq!(RunId::parse(run.as_str()).unwrap(), run);
            let tri = TriggerId::generate();
            assert_eq!(TriggerId::parse(tri.as_str()).unwrap(), tri);
        }
    }

    #[test]
    fn seed_examples_parse() {
        OrganizationId::parse("1234567890123").unwrap();
        DeploymentId::parse("1111111111111").unwrap();
        VersionId::parse("ver-1111111111111111").unwrap();
        VersionId::parse("ver-abc1111111111111").unwrap();
        RunId::parse("run-3333333333333333").unwrap();
        TriggerId::parse("tri-3333333333333333").unwrap();
        ChannelId::parse("2222222222222").unwrap();
        FileId::parse("20190101T000000-e8286a2a-100a-4a40-a7de-5c9a5794b76c").unwrap();
    }

    #[test]
    fn file_ids_carry_their_upload_time_and_a_uuid() {
        let at = chrono::DateTime::parse_from_rfc3339("2018-01-01T11:22:33.5Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let id = FileId::generate(at);
        assert!(id.as_str().starts_with("20180101T112233-"), "{id}");
        assert_eq!(id.as_str().len(), 15 + 1 + 36);
        assert_eq!(FileId::parse(id.as_str()).unwrap(), id);
        assert_ne!(FileId::generate(at), id);
        for bad in [
            "20180101T112233",
            "20181301T112233-e8286a2a-100a-4a40-a7de-5c9a5794b76c",
            "20180101T112233-E8286A2A-100A-4A40-A7DE-5C9A5794B76C",
            "20180101T112233-e8286a2a100a-4a40-a7de-5c9a5794b76c",
            "20180101T112233_e8286a2a-100a-4a40-a7de-5c9a5794b76c",
            "../../etc/passwd",
        ] {
            let err = FileId::parse(bad).unwrap_err();
            assert!(err.to_string().contains("UUID"), "{bad}: {err}");
        }
    }

    #[test]
    fn malformed_ids_are_refused_with_what_was_expected() {
        let err = RunId::parse("run-12").unwrap_err();
        assert_eq!(err.kind, "run");
        assert!(err.to_string().contains("16 digits"), "{err}");
        assert!(OrganizationId::parse("123456789012").is_err());
        assert!(OrganizationId::parse("12345678901234").is_err());
        assert!(OrganizationId::parse("123456789012x").is_err());
        assert!(VersionId::parse("ver-ABCDEF1111111111").is_err());
        assert!(VersionId::parse("1111111111111111").is_err());
        assert!(TriggerId::parse("run-3333333333333333").is_err());
        assert!(serde_json::from_str::<RunId>("\"run-1\"").is_err());
    }
}
