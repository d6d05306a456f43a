//! The one timestamp format of the wire: `2018-01-01T00:00:00.000000Z`.

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};

pub type Timestamp = DateTime<Utc>;

/// Now, truncated to microseconds (what the wire and both stores keep).
pub fn now() -> Timestamp {
    from_micros(Utc::now().timestamp_micros())
}

pub fn from_micros(us: i64) -> Timestamp {
    Utc.timestamp_micros(us).single().unwrap_or_default()
}

/// `2018-01-01T00:00:00.000000Z`
pub fn format(ts: &Timestamp) -> String {
    ts.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Parses what clients send as a time: `%Y-%m-%dT%H:%M:%S` (UTC, no zone, as
/// the SDK sends it), the wire format, or any RFC 3339 time.
pub fn parse(s: &str) -> Option<Timestamp> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S%.f",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s.trim_end_matches('Z'), fmt) {
            return Some(Utc.from_utc_datetime(&t));
        }
    }
    None
}

/// Serde helper: a [`Timestamp`] in the wire format.
pub mod wire {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ts: &super::Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(ts))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<super::Timestamp, D::Error> {
        let s = String::deserialize(d)?;
        super::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("bad time `{s}`")))
    }
}

/// Serde helper: an optional [`Timestamp`] in the wire format (null when absent).
pub mod wire_opt {
    use serde::Serializer;

    pub fn serialize<S: Serializer>(
        ts: &Option<super::Timestamp>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match ts {
            Some(t) => s.serialize_str(&super::format(t)),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_the_seeds() {
        let t = parse("2018-01-01T00:00:00").unwrap();
        assert_eq!(format(&t), "2018-01-01T00:00:00.000000Z");
        let t = parse("2018-06-05T08:52:02.428441Z").unwrap();
        assert_eq!(format(&t), "2018-06-05T08:52:02.428441Z");
        assert_eq!(from_micros(t.timestamp_micros()), t);
        assert!(parse("yesterday").is_none());
    }
}
