//! `kinderwatch events`: event history from the running daemon's API, or from a stopped
//! daemon's database (sled lets one process open it at a time), printed as a table, JSON or CSV.
//!
//! Both sources take the same parameters as `GET /api/v1/events`, parsed by the same code
//! ([`crate::ops::events::parse_filter`]), so the CLI and the API cannot disagree about a filter.

use std::io::Write;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde_json::Value;

use crate::ops;
use crate::store::query::MAX_LIMIT;
use crate::store::{Store, StoreConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Csv,
}

/// Where the events come from.
pub enum Source {
    /// `base` like `http://127.0.0.1:8080`, with a bearer token.
    Api { base: String, token: String },
    /// A state directory or an `events.db` directory.
    Db(PathBuf),
}

/// Fetches up to `max` events (newest first) matching `query` (API query-string syntax),
/// following cursors across pages.
pub fn fetch(
    source: &Source,
    query: &[(String, String)],
    max: usize,
) -> anyhow::Result<Vec<Value>> {
    follow_pages(query, max, MAX_LIMIT, "events", |qs| match source {
        Source::Api { base, token } => api_page(base, token, qs),
        Source::Db(dir) => db_page(dir, qs),
    })
}

/// Asks `page` for pages (a query string with `limit` and `cursor` added to `query`) until `max`
/// items under `key` are in or no `next_cursor` comes back.
fn follow_pages(
    query: &[(String, String)],
    max: usize,
    page_limit: usize,
    key: &str,
    mut page: impl FnMut(&str) -> anyhow::Result<Value>,
) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut params: Vec<(String, String)> = query.to_vec();
        params.push((
            "limit".into(),
            (max - out.len()).min(page_limit).to_string(),
        ));
        if let Some(c) = &cursor {
            params.push(("cursor".into(), c.clone()));
        }
        let qs = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params.iter())
            .finish();
        let v = page(&qs)?;
        out.extend(
            v.get(key)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
        );
        cursor = v
            .get("next_cursor")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if cursor.is_none() || out.len() >= max {
            return Ok(out);
        }
    }
}

fn api_page(base: &str, token: &str, qs: &str) -> anyhow::Result<Value> {
    api_call("GET", base, token, &format!("/api/v1/events?{qs}"))
}

/// One API request with the bearer token; errors carry the API's reason.
fn api_call(method: &str, base: &str, token: &str, path: &str) -> anyhow::Result<Value> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let answer = ureq::request(method, &url)
        .set("Authorization", &format!("Bearer {token}"))
        .timeout(std::time::Duration::from_secs(30))
        .call();
    match answer {
        Ok(r) => Ok(r.into_json()?),
        Err(ureq::Error::Status(code, r)) => {
            let body: Value = r.into_json().unwrap_or(Value::Null);
            let reason = body.get("reason").and_then(Value::as_str).unwrap_or("");
            let param = body
                .get("parameter")
                .and_then(Value::as_str)
                .map(|p| format!(" (parameter {p})"))
                .unwrap_or_default();
            anyhow::bail!("the API answered {code}: {reason}{param}")
        }
        Err(ureq::Error::Transport(t)) => anyhow::bail!(
            "cannot reach the daemon's API at {base}: {t}; is it running? (for a stopped daemon use --db)"
        ),
    }
}

/// Fetches up to `max` audit records (newest first) matching `query` (`GET /api/v1/audit` syntax).
pub fn fetch_audit(
    source: &Source,
    query: &[(String, String)],
    max: usize,
) -> anyhow::Result<Vec<Value>> {
    follow_pages(
        query,
        max,
        crate::store::audit::MAX_LIMIT,
        "records",
        |qs| match source {
            Source::Api { base, token } => {
                api_call("GET", base, token, &format!("/api/v1/audit?{qs}"))
            }
            Source::Db(dir) => {
                let pairs = url::form_urlencoded::parse(qs.as_bytes()).into_owned();
                let q = ops::events::parse_audit_filter(pairs, Timestamp::now()).map_err(|e| {
                    anyhow::anyhow!("{}: {}", e.parameter.unwrap_or_default(), e.reason)
                })?;
                let (records, next) = open_db(dir)?.audit_query(&q)?;
                Ok(
                    serde_json::json!({ "records": records, "next_cursor": next.map(|c| c.encode()) }),
                )
            }
        },
    )
}

/// The dead letters, oldest first.
pub fn dead_letters(source: &Source) -> anyhow::Result<Vec<Value>> {
    let v = match source {
        Source::Api { base, token } => api_call("GET", base, token, "/api/v1/outbox/dead-letters")?,
        Source::Db(dir) => ops::outbox::dead_letters_json(&open_db(dir)?).map_err(cli_error)?,
    };
    Ok(v.get("dead_letters")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default())
}

/// Re-queues one dead letter (by event id) or, with `None`, all; how many.
pub fn requeue(source: &Source, id: Option<&str>) -> anyhow::Result<u64> {
    let id = id
        .map(|id| ops::outbox::parse_event_id("--requeue", id))
        .transpose()
        .map_err(|_| {
            anyhow::anyhow!("--requeue {:?}: not an event id (a UUID)", id.unwrap_or(""))
        })?;
    match source {
        Source::Api { base, token } => {
            let path = match id {
                Some(id) => format!("/api/v1/outbox/dead-letters/{id}/requeue"),
                None => "/api/v1/outbox/dead-letters/requeue".into(),
            };
            let v = api_call("POST", base, token, &path)?;
            Ok(v.get("requeued").and_then(Value::as_u64).unwrap_or(0))
        }
        Source::Db(dir) => ops::outbox::requeue(&open_db(dir)?, id.as_ref()).map_err(cli_error),
    }
}

/// An ops error as the CLI says it: its reason.
fn cli_error(e: ops::OpsError) -> anyhow::Error {
    anyhow::anyhow!("{}", e.reason)
}

/// Prints audit records: a table, or JSON.
pub fn print_audit(records: &[Value], json: bool, out: &mut impl Write) -> std::io::Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, records)?;
        return writeln!(out);
    }
    if records.is_empty() {
        return writeln!(out, "no audit records");
    }
    writeln!(
        out,
        "{:<24} {:<5} {:<20} {:<14} {:<10} TARGET",
        "TIME (UTC)", "VIA", "CALLER", "ACTION", "RESULT"
    )?;
    let s = |r: &Value, k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    for r in records {
        let time = s(r, "time");
        let time = time.split('.').next().unwrap_or("").trim_end_matches('Z');
        writeln!(
            out,
            "{:<24} {:<5} {:<20} {:<14} {:<10} {}",
            time,
            s(r, "channel"),
            s(r, "caller"),
            s(r, "action"),
            s(r, "result"),
            s(r, "target")
        )?;
    }
    Ok(())
}

/// Opens the database once per call; a CLI run reads a handful of pages.
fn db_page(dir: &Path, qs: &str) -> anyhow::Result<Value> {
    let pairs = url::form_urlencoded::parse(qs.as_bytes()).into_owned();
    let q = ops::events::parse_filter(pairs, Timestamp::now())
        .map_err(|e| anyhow::anyhow!("{}: {}", e.parameter.unwrap_or_default(), e.reason))?;
    let store = open_db(dir)?;
    let page = store.query(&q)?;
    Ok(serde_json::json!({
        "events": page.events.iter().map(ops::events::event_json).collect::<Vec<_>>(),
        "next_cursor": page.next_cursor.map(|c| c.encode()),
    }))
}

fn open_db(dir: &Path) -> anyhow::Result<Store> {
    let db = if dir.join(crate::store::DB_DIR).is_dir() {
        dir.join(crate::store::DB_DIR)
    } else {
        dir.to_owned()
    };
    if !db.join("conf").is_file() {
        anyhow::bail!(
            "no event database at {} (give the daemon's state.dir, e.g. /var/lib/kinderwatch)",
            dir.display()
        );
    }
    Ok(Store::open(&db, &StoreConfig::default())?)
}

/// Prints events in `format`.
pub fn print(events: &[Value], format: Format, out: &mut impl Write) -> std::io::Result<()> {
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, events)?;
            writeln!(out)
        }
        Format::Csv => {
            writeln!(
                out,
                "id,time,kind,camera,rule,class,score,detail,snapshot_url"
            )?;
            for e in events {
                let row = row(e);
                let cells: Vec<String> = row.iter().map(|c| csv_cell(c)).collect();
                writeln!(out, "{}", cells.join(","))?;
            }
            Ok(())
        }
        Format::Table => {
            if events.is_empty() {
                return writeln!(out, "no events");
            }
            writeln!(
                out,
                "{:<24} {:<17} {:<14} {:<18} {:<14} ID",
                "TIME (UTC)", "KIND", "CAMERA", "RULE", "OBJECT"
            )?;
            for e in events {
                let r = row(e);
                let object = if r[5].is_empty() {
                    String::new()
                } else {
                    format!("{} {}", r[5], r[6])
                };
                let time = r[1].split('.').next().unwrap_or("").trim_end_matches('Z');
                writeln!(
                    out,
                    "{:<24} {:<17} {:<14} {:<18} {:<14} {}",
                    time, r[2], r[3], r[4], object, r[0]
                )?;
            }
            writeln!(
                out,
                "{} event{}",
                events.len(),
                if events.len() == 1 { "" } else { "s" }
            )
        }
    }
}

/// id, time, kind, camera, rule, class, score, detail, snapshot_url.
fn row(e: &Value) -> [String; 9] {
    let s = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_owned();
    let object = e.get("object");
    [
        s(e.get("id")),
        s(e.get("time")),
        s(e.get("kind")),
        s(e.get("camera")),
        s(e.get("rule")),
        s(object.and_then(|o| o.get("class"))),
        object
            .and_then(|o| o.get("score"))
            .and_then(Value::as_f64)
            .map(|x| format!("{x:.2}"))
            .unwrap_or_default(),
        s(e.get("detail")),
        s(e.get("snapshot_url")),
    ]
}

fn csv_cell(c: &str) -> String {
    if c.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", c.replace('"', "\"\""))
    } else {
        c.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_quoting() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
