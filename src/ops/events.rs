//! Event history: the filter every transport parses its parameters into, and the event view.

use jiff::Timestamp;
use serde_json::Value;

use super::OpsError;
use crate::events::EventKind;
use crate::store::query::{DEFAULT_LIMIT, MAX_LIMIT};
use crate::store::{AuditQuery, Cursor, EventQuery, StoredEvent};

/// An event filter from request parameters (`camera`, `kind`, `rule`, `from`, `to`, `since`,
/// `limit`, `cursor`), whatever carried them (an HTTP query string, an MQTT request's JSON, CLI
/// flags); every problem names its parameter.
pub fn parse_filter(
    pairs: impl IntoIterator<Item = (String, String)>,
    now: Timestamp,
) -> Result<EventQuery, OpsError> {
    let mut q = EventQuery {
        limit: DEFAULT_LIMIT,
        ..EventQuery::default()
    };
    let mut since = None;
    for (k, v) in pairs {
        let k = k.as_str();
        match k {
            "camera" => q.camera = Some(v),
            "rule" => q.rule = Some(v),
            "kind" => {
                q.kind = Some(
                    serde_json::from_value::<EventKind>(Value::String(v.clone())).map_err(
                        |_| {
                            OpsError::bad_parameter(
                                "kind",
                                format!("unknown event kind {v:?}; use one of {}", kinds()),
                            )
                        },
                    )?,
                )
            }
            "from" | "to" => {
                let t: Timestamp = v.parse().map_err(|_| {
                    OpsError::bad_parameter(
                        k,
                        format!("{v:?} is not an RFC 3339 time such as 2026-11-22T08:00:00Z"),
                    )
                })?;
                if k == "from" {
                    q.from = Some(t);
                } else {
                    q.to = Some(t);
                }
            }
            "since" => {
                let d = humantime::parse_duration(&v).map_err(|_| {
                    OpsError::bad_parameter(
                        "since",
                        format!("{v:?} is not a duration such as 2h or 30m"),
                    )
                })?;
                since = Some(d);
            }
            "limit" => {
                q.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        OpsError::bad_parameter(
                            "limit",
                            format!("use a number from 1 to {MAX_LIMIT}"),
                        )
                    })?
            }
            "cursor" => {
                q.cursor = Some(
                    Cursor::parse(&v)
                        .map_err(|e| OpsError::bad_parameter("cursor", e.to_string()))?,
                )
            }
            other => {
                return Err(OpsError::bad_parameter(
                    other,
                    "unknown parameter; use camera, kind, rule, from, to, since, limit or cursor",
                ));
            }
        }
    }
    if let Some(d) = since {
        if q.from.is_some() {
            return Err(OpsError::bad_parameter(
                "since",
                "give either since or from, not both",
            ));
        }
        let d = jiff::SignedDuration::try_from(d)
            .map_err(|_| OpsError::bad_parameter("since", "too long"))?;
        q.from = Some(now.checked_sub(d).unwrap_or(Timestamp::MIN));
    }
    if let (Some(from), Some(to)) = (q.from, q.to)
        && from >= to
    {
        return Err(OpsError::bad_parameter("to", "must be after from"));
    }
    Ok(q)
}

fn kinds() -> String {
    [
        EventKind::LineCrossed,
        EventKind::ZoneEntered,
        EventKind::ZoneLeft,
        EventKind::Loitering,
        EventKind::CameraOffline,
        EventKind::CameraOnline,
        EventKind::CameraTampered,
        EventKind::StorageFailed,
        EventKind::StorageRecovered,
    ]
    .map(EventKind::as_str)
    .join(", ")
}

/// An event as the API shows it: the stored JSON plus where its snapshot is.
pub fn event_json(s: &StoredEvent) -> Value {
    let mut v = serde_json::to_value(&s.event).unwrap_or(Value::Null);
    if s.snapshot_len > 0 {
        v["snapshot_url"] = format!("/api/v1/events/{}/snapshot.jpg", s.event.id).into();
    }
    v
}

/// An audit-trail filter (`from`, `to`, `since`, `caller`, `limit`, `cursor`) from any transport's
/// parameters; the time and paging ones read as for events.
pub fn parse_audit_filter(
    pairs: impl IntoIterator<Item = (String, String)>,
    now: Timestamp,
) -> Result<AuditQuery, OpsError> {
    let mut caller = None;
    let mut rest = Vec::new();
    for (k, v) in pairs {
        match k.as_str() {
            "caller" => caller = Some(v),
            "from" | "to" | "since" | "limit" | "cursor" => rest.push((k, v)),
            other => {
                return Err(OpsError::bad_parameter(
                    other,
                    "unknown parameter; use from, to, since, caller, limit or cursor",
                ));
            }
        }
    }
    let q = parse_filter(rest, now)?;
    Ok(AuditQuery {
        from: q.from,
        to: q.to,
        caller,
        limit: q.limit,
        cursor: q.cursor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_filter_parses_from_any_transports_pairs_and_names_the_bad_parameter() {
        let now: Timestamp = "2026-12-02T12:00:00Z".parse().unwrap();
        let q = parse_filter(
            pairs(&[("camera", "gate"), ("limit", "5"), ("since", "2h")]),
            now,
        )
        .unwrap();
        assert_eq!(q.camera.as_deref(), Some("gate"));
        assert_eq!(q.limit, 5);
        assert_eq!(q.from, Some("2026-12-02T10:00:00Z".parse().unwrap()));
        // A value with characters a query string would need to escape arrives as it is.
        let q = parse_filter(pairs(&[("rule", "fence & gate=1")]), now).unwrap();
        assert_eq!(q.rule.as_deref(), Some("fence & gate=1"));
        let e = parse_filter(pairs(&[("limit", "0")]), now).unwrap_err();
        assert_eq!(
            (e.code, e.parameter.as_deref()),
            ("bad_parameter", Some("limit"))
        );
        assert_eq!(e.kind, crate::ops::ErrorKind::BadRequest);
    }
}
