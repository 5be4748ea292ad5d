//! The center's PostgreSQL database: events (de-duplicated by `event_id`), snapshots, sites,
//! cameras and the alarm queue.
//!
//! Every write is idempotent, because every instance may see the same message (status topics
//! go to all of them; a re-sent alert carries the same `event_id`):
//! - an event is `INSERT ... ON CONFLICT (event_id) DO NOTHING`, and its alarm is raised in the
//!   same transaction only when the insert happened;
//! - a condition (a site offline, a camera offline or tampered, a site's storage failing) is one
//!   open alarm per subject (a unique partial index); it is raised again, not duplicated, while
//!   staff have not resolved it, and cleared when the condition ends.

use deadpool_postgres::{GenericClient, Pool};
use jiff::Timestamp;
use serde::Serialize;
use uuid::Uuid;

/// The schema; each statement is idempotent, run under an advisory lock so that instances
/// starting together do not race.
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS sites (
        id text PRIMARY KEY,
        district text,
        name text,
        online boolean,
        status_at timestamptz)",
    "CREATE TABLE IF NOT EXISTS cameras (
        site text NOT NULL,
        camera text NOT NULL,
        state text NOT NULL,
        since timestamptz,
        last_error text,
        updated_at timestamptz NOT NULL,
        PRIMARY KEY (site, camera))",
    "CREATE TABLE IF NOT EXISTS events (
        event_id uuid PRIMARY KEY,
        site text NOT NULL,
        camera text,
        rule text,
        kind text NOT NULL,
        time timestamptz NOT NULL,
        payload jsonb NOT NULL,
        received_at timestamptz NOT NULL DEFAULT now(),
        received_by text NOT NULL)",
    "CREATE INDEX IF NOT EXISTS events_time ON events (time DESC)",
    "CREATE INDEX IF NOT EXISTS events_site_time ON events (site, time DESC)",
    "CREATE TABLE IF NOT EXISTS snapshots (
        event_id uuid PRIMARY KEY,
        jpeg bytea NOT NULL,
        source text NOT NULL,
        stored_at timestamptz NOT NULL DEFAULT now())",
    "CREATE TABLE IF NOT EXISTS alarms (
        id bigserial PRIMARY KEY,
        kind text NOT NULL,
        site text NOT NULL,
        camera text,
        rule text,
        event_id uuid UNIQUE,
        subject text,
        state text NOT NULL DEFAULT 'new'
            CHECK (state IN ('new', 'acknowledged', 'resolved')),
        active boolean NOT NULL DEFAULT true,
        raised_at timestamptz NOT NULL,
        last_at timestamptz NOT NULL,
        occurrences integer NOT NULL DEFAULT 1,
        cleared_at timestamptz,
        acknowledged_by text,
        acknowledged_at timestamptz,
        resolved_by text,
        resolved_at timestamptz,
        outcome text,
        note text)",
    // Columns added after the first schema (a database of an older center gets them too).
    "ALTER TABLE sites ADD COLUMN IF NOT EXISTS reconciled_until timestamptz",
    "ALTER TABLE events ADD COLUMN IF NOT EXISTS source text NOT NULL DEFAULT 'mqtt'",
    "ALTER TABLE alarms ADD COLUMN IF NOT EXISTS recovered boolean NOT NULL DEFAULT false",
    "CREATE UNIQUE INDEX IF NOT EXISTS alarms_open_subject ON alarms (subject)
        WHERE state <> 'resolved' AND subject IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS alarms_open ON alarms (state, raised_at DESC)",
    // Every change of an alarm is announced to the instances' live feeds (LISTEN).
    "CREATE OR REPLACE FUNCTION kinderwatch_alarm_notify() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN PERFORM pg_notify('kinderwatch_alarms', NEW.id::text); RETURN NULL; END $$",
    "DROP TRIGGER IF EXISTS alarms_notify ON alarms",
    "CREATE TRIGGER alarms_notify AFTER INSERT OR UPDATE ON alarms
        FOR EACH ROW EXECUTE FUNCTION kinderwatch_alarm_notify()",
    "CREATE TABLE IF NOT EXISTS alarm_log (
        id bigserial PRIMARY KEY,
        alarm_id bigint NOT NULL REFERENCES alarms (id),
        at timestamptz NOT NULL DEFAULT now(),
        who text NOT NULL,
        action text NOT NULL,
        note text)",
];

/// The channel of [`SCHEMA`]'s alarm notifications; the payload is the alarm's id.
pub const ALARM_CHANNEL: &str = "kinderwatch_alarms";

/// A random key for `pg_advisory_xact_lock` ("kwcenter").
const SCHEMA_LOCK: i64 = 0x6b77_6365_6e74_6572;

pub type DbError = Box<dyn std::error::Error + Send + Sync>;

/// True when the database refused the data itself (SQLSTATE class 22, a data exception such as
/// a NUL character in text or JSON, or 23, a violated constraint): storing it again fails again,
/// so the message is rejected instead of retried. Anything else (the connection, the pool) is
/// worth retrying.
pub fn is_refused_data(e: &DbError) -> bool {
    e.downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.code())
        .is_some_and(|c| {
            let c = c.code();
            c.starts_with("22") || c.starts_with("23")
        })
}

/// Creates the tables that are missing.
pub async fn migrate(pool: &Pool) -> Result<(), DbError> {
    let mut c = pool.get().await?;
    let tx = c.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .await?;
    for s in SCHEMA {
        tx.batch_execute(s).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Puts the config's directory into `sites` (district and name; the status stays).
pub async fn sync_directory(
    pool: &Pool,
    sites: &[super::config::SiteEntry],
) -> Result<(), DbError> {
    let c = pool.get().await?;
    for s in sites {
        c.execute(
            "INSERT INTO sites (id, district, name) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET district = EXCLUDED.district, name = EXCLUDED.name",
            &[&s.id, &s.district, &s.name],
        )
        .await?;
    }
    Ok(())
}

/// What an alert does to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlarmEffect {
    /// A perimeter event: an alarm of its own.
    Raise,
    /// A condition starts (camera offline, tampered, storage failed): the subject's alarm.
    Condition(&'static str),
    /// A condition ends.
    Clear(&'static str),
    /// Stored only (a person leaving a zone).
    None,
}

impl AlarmEffect {
    pub fn of(kind: &str) -> AlarmEffect {
        match kind {
            "line_crossed" | "zone_entered" | "loitering" => AlarmEffect::Raise,
            "camera_offline" => AlarmEffect::Condition("camera_offline"),
            "camera_online" => AlarmEffect::Clear("camera_offline"),
            "camera_tampered" => AlarmEffect::Condition("camera_tampered"),
            "storage_failed" => AlarmEffect::Condition("storage_failed"),
            "storage_recovered" => AlarmEffect::Clear("storage_failed"),
            _ => AlarmEffect::None,
        }
    }
}

/// The fields of an alert the center stores beside its JSON.
#[derive(Debug, Clone)]
pub struct Alert {
    pub event_id: Uuid,
    pub site: String,
    pub camera: Option<String>,
    pub rule: Option<String>,
    pub kind: String,
    pub time: Timestamp,
    pub payload: serde_json::Value,
}

/// The subject of a condition alarm: one open alarm each.
pub fn subject(kind: &str, site: &str, camera: Option<&str>) -> String {
    match camera {
        Some(c) => format!("{kind}:{site}/{c}"),
        None => format!("{kind}:{site}"),
    }
}

/// How the center got an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Live, on the alert topics.
    Mqtt,
    /// From a site's answer to `query/events` (reconciliation or the history's fan-out): an
    /// alert the live path lost. It raises an alarm (marked `recovered`) only when it is newer
    /// than [`RECOVERED_ALARM_MAX_AGE`], and never opens or clears a condition: the status topics
    /// carry the present state, an old event would only undo it.
    Query { now: Timestamp },
}

/// A lost perimeter alert found later than this is history, not an alarm for the desk.
pub const RECOVERED_ALARM_MAX_AGE: jiff::SignedDuration = jiff::SignedDuration::from_hours(1);

impl Origin {
    fn source(self) -> &'static str {
        match self {
            Origin::Mqtt => "mqtt",
            Origin::Query { .. } => "query",
        }
    }

    /// What the event does to the queue, arriving this way.
    fn effect(self, a: &Alert) -> AlarmEffect {
        let live = AlarmEffect::of(&a.kind);
        match self {
            Origin::Mqtt => live,
            Origin::Query { now } => match live {
                AlarmEffect::Raise if now.duration_since(a.time) <= RECOVERED_ALARM_MAX_AGE => {
                    AlarmEffect::Raise
                }
                _ => AlarmEffect::None,
            },
        }
    }
}

/// Stores an alert once; `true` if it was new (false: a duplicate, nothing changed).
pub async fn store_alert(
    pool: &Pool,
    a: &Alert,
    instance: &str,
    origin: Origin,
) -> Result<bool, DbError> {
    let mut c = pool.get().await?;
    let tx = c.transaction().await?;
    let inserted = tx
        .execute(
            "INSERT INTO events (event_id, site, camera, rule, kind, time, payload, received_by, source)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (event_id) DO NOTHING",
            &[
                &a.event_id,
                &a.site,
                &a.camera,
                &a.rule,
                &a.kind,
                &a.time,
                &a.payload,
                &instance,
                &origin.source(),
            ],
        )
        .await?
        == 1;
    if inserted {
        ensure_site(&tx, &a.site).await?;
        match origin.effect(a) {
            AlarmEffect::Raise => {
                let recovered = origin != Origin::Mqtt;
                tx.execute(
                    "INSERT INTO alarms (kind, site, camera, rule, event_id, active, raised_at, last_at, recovered)
                     VALUES ($1, $2, $3, $4, $5, false, $6, $6, $7)",
                    &[&a.kind, &a.site, &a.camera, &a.rule, &a.event_id, &a.time, &recovered],
                )
                .await?;
            }
            AlarmEffect::Condition(kind) => {
                raise_condition(
                    &tx,
                    kind,
                    &a.site,
                    a.camera.as_deref(),
                    a.time,
                    Some(a.event_id),
                )
                .await?;
            }
            AlarmEffect::Clear(kind) => {
                clear_condition(&tx, kind, &a.site, a.camera.as_deref(), a.time).await?;
            }
            AlarmEffect::None => {}
        }
    }
    tx.commit().await?;
    Ok(inserted)
}

async fn ensure_site(c: &impl GenericClient, site: &str) -> Result<(), DbError> {
    c.execute(
        "INSERT INTO sites (id) VALUES ($1) ON CONFLICT DO NOTHING",
        &[&site],
    )
    .await?;
    Ok(())
}

/// The event kind that ends a condition alarm of `kind` (none: cleared by status, or by staff).
fn clearing_event(kind: &str) -> Option<&'static str> {
    match kind {
        "camera_offline" => Some("camera_online"),
        "storage_failed" => Some("storage_recovered"),
        _ => None,
    }
}

/// Opens the subject's alarm, or marks its open one active again (one more occurrence) if the
/// condition had cleared; nothing if it is active already.
async fn raise_condition(
    c: &impl GenericClient,
    kind: &str,
    site: &str,
    camera: Option<&str>,
    at: Timestamp,
    event_id: Option<Uuid>,
) -> Result<(), DbError> {
    let subject = subject(kind, site, camera);
    // The raise and the clear of one subject can come through different instances in either
    // order: one at a time per subject, and a raise older than a stored clearing event of the
    // same subject is history, not a present condition.
    c.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&subject])
        .await?;
    if let Some(clearing) = clearing_event(kind) {
        let cleared_later: bool = c
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM events WHERE site = $1
                     AND camera IS NOT DISTINCT FROM $2 AND kind = $3 AND time > $4)",
                &[&site, &camera, &clearing, &at],
            )
            .await?
            .get(0);
        if cleared_later {
            return Ok(());
        }
    }
    c.execute(
        "INSERT INTO alarms (kind, site, camera, subject, event_id, active, raised_at, last_at)
         VALUES ($1, $2, $3, $4, $5, true, $6, $6)
         ON CONFLICT (subject) WHERE state <> 'resolved' AND subject IS NOT NULL
         DO UPDATE SET active = true, last_at = EXCLUDED.last_at, cleared_at = NULL,
                       occurrences = alarms.occurrences + 1
         WHERE NOT alarms.active",
        &[&kind, &site, &camera, &subject, &event_id, &at],
    )
    .await?;
    Ok(())
}

async fn clear_condition(
    c: &impl GenericClient,
    kind: &str,
    site: &str,
    camera: Option<&str>,
    at: Timestamp,
) -> Result<(), DbError> {
    let subject = subject(kind, site, camera);
    c.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&subject])
        .await?;
    // A clear older than the raise it meets (they came through different instances) clears
    // nothing.
    c.execute(
        "UPDATE alarms SET active = false, cleared_at = $2
         WHERE subject = $1 AND state <> 'resolved' AND active AND last_at <= $2",
        &[&subject, &at],
    )
    .await?;
    Ok(())
}

/// A site's availability (`<root>/<site>/status`): `online` clears its offline alarm,
/// `offline` (its last will, or a clean stop) raises it.
pub async fn site_status(
    pool: &Pool,
    site: &str,
    online: bool,
    at: Timestamp,
) -> Result<(), DbError> {
    let mut c = pool.get().await?;
    let tx = c.transaction().await?;
    ensure_site(&tx, site).await?;
    // Both instances see every status, and a retained one again on every reconnect: only a
    // change counts (a site offline for weeks, its alarm resolved, raises nothing new), and
    // `status_at` keeps the time of the change ("offline since").
    let before: Option<bool> = tx
        .query_one(
            "SELECT online FROM sites WHERE id = $1 FOR UPDATE",
            &[&site],
        )
        .await?
        .get(0);
    if before == Some(online) {
        tx.commit().await?;
        return Ok(());
    }
    tx.execute(
        "UPDATE sites SET online = $2, status_at = $3 WHERE id = $1",
        &[&site, &online, &at],
    )
    .await?;
    if online {
        clear_condition(&tx, "site_offline", site, None, at).await?;
    } else {
        raise_condition(&tx, "site_offline", site, None, at, None).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A camera's retained status (`.../cameras/<camera>/status`); `None`: the camera was removed.
pub async fn camera_status(
    pool: &Pool,
    site: &str,
    camera: &str,
    status: Option<&CameraStatus>,
    at: Timestamp,
) -> Result<(), DbError> {
    let c = pool.get().await?;
    ensure_site(&c, site).await?;
    match status {
        Some(s) => {
            c.execute(
                "INSERT INTO cameras (site, camera, state, since, last_error, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (site, camera) DO UPDATE SET state = EXCLUDED.state,
                     since = EXCLUDED.since, last_error = EXCLUDED.last_error,
                     updated_at = EXCLUDED.updated_at",
                &[&site, &camera, &s.state, &s.since, &s.last_error, &at],
            )
            .await?;
        }
        None => {
            c.execute(
                "DELETE FROM cameras WHERE site = $1 AND camera = $2",
                &[&site, &camera],
            )
            .await?;
        }
    }
    Ok(())
}

/// A camera status message.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct CameraStatus {
    pub state: String,
    pub since: Option<Timestamp>,
    pub last_error: Option<String>,
}

/// Stores an alert's JPEG (from MQTT or the site's API); a second copy changes nothing.
pub async fn store_snapshot(
    pool: &Pool,
    event_id: Uuid,
    jpeg: &[u8],
    source: &str,
) -> Result<(), DbError> {
    let c = pool.get().await?;
    c.execute(
        "INSERT INTO snapshots (event_id, jpeg, source) VALUES ($1, $2, $3)
         ON CONFLICT (event_id) DO NOTHING",
        &[&event_id, &jpeg, &source],
    )
    .await?;
    Ok(())
}

pub async fn snapshot(pool: &Pool, event_id: Uuid) -> Result<Option<Vec<u8>>, DbError> {
    let c = pool.get().await?;
    Ok(c.query_opt(
        "SELECT jpeg FROM snapshots WHERE event_id = $1",
        &[&event_id],
    )
    .await?
    .map(|r| r.get(0)))
}

/// One alarm as the queue shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Alarm {
    pub id: i64,
    pub kind: String,
    pub state: String,
    pub active: bool,
    pub site: String,
    pub site_name: Option<String>,
    pub district: Option<String>,
    pub camera: Option<String>,
    pub rule: Option<String>,
    pub event_id: Option<Uuid>,
    #[schema(value_type = String)]
    pub raised_at: Timestamp,
    #[schema(value_type = String)]
    pub last_at: Timestamp,
    pub occurrences: i32,
    #[schema(value_type = Option<String>)]
    pub cleared_at: Option<Timestamp>,
    pub acknowledged_by: Option<String>,
    #[schema(value_type = Option<String>)]
    pub acknowledged_at: Option<Timestamp>,
    pub resolved_by: Option<String>,
    #[schema(value_type = Option<String>)]
    pub resolved_at: Option<Timestamp>,
    pub outcome: Option<String>,
    pub note: Option<String>,
    /// True when the center holds the alarm's snapshot.
    pub snapshot: bool,
    /// True when the live path lost the alert and the reconciliation found it at the site.
    pub recovered: bool,
    /// The alert as the site sent it (null for a site offline).
    #[schema(value_type = Option<Object>)]
    pub alert: Option<serde_json::Value>,
}

const ALARM_COLUMNS: &str = "a.id, a.kind, a.state, a.active, a.site, s.name, s.district, a.camera,
    a.rule, a.event_id, a.raised_at, a.last_at, a.occurrences, a.cleared_at, a.acknowledged_by,
    a.acknowledged_at, a.resolved_by, a.resolved_at, a.outcome, a.note,
    (sn.event_id IS NOT NULL), e.payload, a.recovered
    FROM alarms a LEFT JOIN sites s ON s.id = a.site
    LEFT JOIN events e ON e.event_id = a.event_id
    LEFT JOIN snapshots sn ON sn.event_id = a.event_id";

fn alarm(r: &tokio_postgres::Row) -> Alarm {
    Alarm {
        id: r.get(0),
        kind: r.get(1),
        state: r.get(2),
        active: r.get(3),
        site: r.get(4),
        site_name: r.get(5),
        district: r.get(6),
        camera: r.get(7),
        rule: r.get(8),
        event_id: r.get(9),
        raised_at: r.get(10),
        last_at: r.get(11),
        occurrences: r.get(12),
        cleared_at: r.get(13),
        acknowledged_by: r.get(14),
        acknowledged_at: r.get(15),
        resolved_by: r.get(16),
        resolved_at: r.get(17),
        outcome: r.get(18),
        note: r.get(19),
        snapshot: r.get(20),
        alert: r.get(21),
        recovered: r.get(22),
    }
}

/// Which alarms to list.
#[derive(Debug, Clone, Default)]
pub struct AlarmFilter {
    /// Any of these states (empty: all).
    pub states: Vec<String>,
    pub district: Option<String>,
    pub site: Option<String>,
    /// Only ids above this (a live view's "what is new since").
    pub after_id: Option<i64>,
    pub limit: i64,
}

pub async fn alarms(pool: &Pool, f: &AlarmFilter) -> Result<Vec<Alarm>, DbError> {
    let c = pool.get().await?;
    let sql = format!(
        "SELECT {ALARM_COLUMNS}
         WHERE (cardinality($1::text[]) = 0 OR a.state = ANY($1))
           AND ($2::text IS NULL OR s.district = $2)
           AND ($3::text IS NULL OR a.site = $3)
           AND ($4::bigint IS NULL OR a.id > $4)
         ORDER BY a.id DESC LIMIT $5"
    );
    let rows = c
        .query(
            &sql,
            &[&f.states, &f.district, &f.site, &f.after_id, &f.limit],
        )
        .await?;
    Ok(rows.iter().map(alarm).collect())
}

pub async fn alarm_by_id(pool: &Pool, id: i64) -> Result<Option<Alarm>, DbError> {
    let c = pool.get().await?;
    let sql = format!("SELECT {ALARM_COLUMNS} WHERE a.id = $1");
    Ok(c.query_opt(&sql, &[&id]).await?.as_ref().map(alarm))
}

/// Why a state change was refused.
#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    #[error("no alarm {0}")]
    NotFound(i64),
    #[error("alarm {id} is {state}; it cannot be {action}")]
    Conflict {
        id: i64,
        state: String,
        action: &'static str,
    },
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for TransitionError {
    fn from(e: tokio_postgres::Error) -> Self {
        TransitionError::Db(Box::new(e))
    }
}

/// Moves an alarm New → Acknowledged, or New/Acknowledged → Resolved, with who and a note
/// (and for a resolution, its outcome); every move is in `alarm_log`.
pub async fn transition(
    pool: &Pool,
    id: i64,
    to: Transition<'_>,
    who: &str,
) -> Result<Alarm, TransitionError> {
    let mut c = pool
        .get()
        .await
        .map_err(|e| TransitionError::Db(Box::new(e)))?;
    let tx = c.transaction().await?;
    let Some(row) = tx
        .query_opt("SELECT state FROM alarms WHERE id = $1 FOR UPDATE", &[&id])
        .await?
    else {
        return Err(TransitionError::NotFound(id));
    };
    let state: String = row.get(0);
    let (action, note) = match to {
        Transition::Acknowledge { note } => {
            if state != "new" {
                return Err(TransitionError::Conflict {
                    id,
                    state,
                    action: "acknowledged",
                });
            }
            tx.execute(
                "UPDATE alarms SET state = 'acknowledged', acknowledged_by = $2,
                     acknowledged_at = now(), note = COALESCE($3, note) WHERE id = $1",
                &[&id, &who, &note],
            )
            .await?;
            ("acknowledged", note)
        }
        Transition::Resolve { outcome, note } => {
            if state == "resolved" {
                return Err(TransitionError::Conflict {
                    id,
                    state,
                    action: "resolved",
                });
            }
            tx.execute(
                "UPDATE alarms SET state = 'resolved', resolved_by = $2, resolved_at = now(),
                     outcome = $3, note = COALESCE($4, note),
                     acknowledged_by = COALESCE(acknowledged_by, $2),
                     acknowledged_at = COALESCE(acknowledged_at, now())
                 WHERE id = $1",
                &[&id, &who, &outcome, &note],
            )
            .await?;
            ("resolved", note)
        }
    };
    tx.execute(
        "INSERT INTO alarm_log (alarm_id, who, action, note) VALUES ($1, $2, $3, $4)",
        &[&id, &who, &action, &note],
    )
    .await?;
    tx.commit().await?;
    drop(c);
    alarm_by_id(pool, id)
        .await?
        .ok_or(TransitionError::NotFound(id))
}

#[derive(Debug, Clone, Copy)]
pub enum Transition<'a> {
    Acknowledge {
        note: Option<&'a str>,
    },
    Resolve {
        outcome: &'a str,
        note: Option<&'a str>,
    },
}

/// How a resolved alarm turned out.
pub const OUTCOMES: &[&str] = &[
    "false_alarm",
    "intruder",
    "drill",
    "staff",
    "technical",
    "other",
];

/// A site as the center knows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Site {
    pub id: String,
    pub name: Option<String>,
    pub district: Option<String>,
    pub online: Option<bool>,
    #[schema(value_type = Option<String>)]
    pub status_at: Option<Timestamp>,
    pub cameras: i64,
    pub cameras_streaming: i64,
    pub open_alarms: i64,
}

pub async fn sites(pool: &Pool, district: Option<&str>) -> Result<Vec<Site>, DbError> {
    let c = pool.get().await?;
    let rows = c
        .query(
            "SELECT s.id, s.name, s.district, s.online, s.status_at,
                (SELECT count(*) FROM cameras c WHERE c.site = s.id),
                (SELECT count(*) FROM cameras c WHERE c.site = s.id AND c.state = 'streaming'),
                (SELECT count(*) FROM alarms a WHERE a.site = s.id AND a.state <> 'resolved')
             FROM sites s WHERE ($1::text IS NULL OR s.district = $1) ORDER BY s.id",
            &[&district],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Site {
            id: r.get(0),
            name: r.get(1),
            district: r.get(2),
            online: r.get(3),
            status_at: r.get(4),
            cameras: r.get(5),
            cameras_streaming: r.get(6),
            open_alarms: r.get(7),
        })
        .collect())
}

/// Which events the city-wide history lists.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub site: Option<String>,
    pub district: Option<String>,
    pub kind: Option<String>,
    pub camera: Option<String>,
    pub rule: Option<String>,
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
    pub limit: i64,
}

/// The stored alerts (as the sites sent them), newest first.
pub async fn events(pool: &Pool, f: &EventFilter) -> Result<Vec<serde_json::Value>, DbError> {
    let c = pool.get().await?;
    let rows = c
        .query(
            "SELECT e.payload FROM events e LEFT JOIN sites s ON s.id = e.site
             WHERE ($1::text IS NULL OR e.site = $1)
               AND ($2::text IS NULL OR s.district = $2)
               AND ($3::text IS NULL OR e.kind = $3)
               AND ($4::timestamptz IS NULL OR e.time >= $4)
               AND ($5::timestamptz IS NULL OR e.time < $5)
               AND ($7::text IS NULL OR e.camera = $7)
               AND ($8::text IS NULL OR e.rule = $8)
             ORDER BY e.time DESC LIMIT $6",
            &[
                &f.site,
                &f.district,
                &f.kind,
                &f.from,
                &f.to,
                &f.limit,
                &f.camera,
                &f.rule,
            ],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Which of `ids` the center holds.
pub async fn known_events(
    pool: &Pool,
    ids: &[Uuid],
) -> Result<std::collections::HashSet<Uuid>, DbError> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let c = pool.get().await?;
    let rows = c
        .query(
            "SELECT event_id FROM events WHERE event_id = ANY($1)",
            &[&ids],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// A site the reconciliation asks: online now, and how far it has been reconciled.
#[derive(Debug, Clone)]
pub struct ReconcileTarget {
    pub site: String,
    pub reconciled_until: Option<Timestamp>,
}

/// The sites whose last status is `online`.
pub async fn online_sites(pool: &Pool) -> Result<Vec<ReconcileTarget>, DbError> {
    let c = pool.get().await?;
    let rows = c
        .query(
            "SELECT id, reconciled_until FROM sites WHERE online ORDER BY id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| ReconcileTarget {
            site: r.get(0),
            reconciled_until: r.get(1),
        })
        .collect())
}

/// Records that `site` answered for everything before `until`.
pub async fn set_reconciled(pool: &Pool, site: &str, until: Timestamp) -> Result<(), DbError> {
    let c = pool.get().await?;
    c.execute(
        "UPDATE sites SET reconciled_until = GREATEST(reconciled_until, $2) WHERE id = $1",
        &[&site, &until],
    )
    .await?;
    Ok(())
}

/// The online status of these sites as last heard (`None`: never heard, or not in `sites`).
pub async fn site_online(
    pool: &Pool,
    ids: &[String],
) -> Result<std::collections::HashMap<String, (Option<bool>, Option<Timestamp>)>, DbError> {
    let c = pool.get().await?;
    let rows = c
        .query(
            "SELECT id, online, status_at FROM sites WHERE id = ANY($1)",
            &[&ids],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}

/// The ids of the sites in the directory, of `district` or all.
pub async fn site_ids(pool: &Pool, district: Option<&str>) -> Result<Vec<String>, DbError> {
    let c = pool.get().await?;
    let rows = c
        .query(
            "SELECT id FROM sites WHERE ($1::text IS NULL OR district = $1) ORDER BY id",
            &[&district],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// An event whose JPEG the center does not hold although the site has one.
#[derive(Debug, Clone)]
pub struct MissingSnapshot {
    pub event_id: Uuid,
    pub site: String,
    /// The site's API path of the JPEG (`snapshot.api_path` of the alert).
    pub api_path: String,
}

/// Events of `sites` older than `older_than` (the MQTT JPEG had its chance) and newer than
/// `newer_than`, with a snapshot at the site and none here, oldest first; not those `waiting`
/// for their next try (so that failures, however many, never hide the rest).
pub async fn missing_snapshots(
    pool: &Pool,
    sites: &[String],
    older_than: Timestamp,
    newer_than: Timestamp,
    waiting: &[Uuid],
    limit: i64,
) -> Result<Vec<MissingSnapshot>, DbError> {
    let c = pool.get().await?;
    let rows = c
        .query(
            "SELECT e.event_id, e.site, e.payload #>> '{snapshot,api_path}' FROM events e
             WHERE e.site = ANY($1) AND e.received_at < $2 AND e.received_at >= $3
               AND e.payload #>> '{snapshot,api_path}' IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM snapshots s WHERE s.event_id = e.event_id)
               AND NOT (e.event_id = ANY($5))
             ORDER BY e.received_at LIMIT $4",
            &[&sites, &older_than, &newer_than, &limit, &waiting],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| MissingSnapshot {
            event_id: r.get(0),
            site: r.get(1),
            api_path: r.get(2),
        })
        .collect())
}

/// A session-level advisory lock of `key`, held by a connection taken out of the pool: the lock
/// goes when the returned client is dropped (its connection closes), whatever happens in
/// between. `None`: another instance holds it.
pub async fn try_lock(
    pool: &Pool,
    key: i64,
) -> Result<Option<deadpool_postgres::ClientWrapper>, DbError> {
    let c = pool.get().await?;
    let got: bool = c
        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
        .await?
        .get(0);
    Ok(got.then(|| deadpool_postgres::Object::take(c)))
}
