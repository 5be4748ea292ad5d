//! Making messages fit the broker's maximum packet size (MQTT 5 CONNACK `Maximum Packet Size`):
//! the exact size of a PUBLISH packet, a snapshot re-encoded smaller until it fits, and a command
//! reply cut to a page that fits.
//!
//! rumqttc refuses an oversized packet only when writing it, and then drops the connection; the
//! next connection would send the same packet again. So nothing is queued that does not fit.

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use serde_json::Value;

use crate::store::Cursor;

/// Bytes of a QoS 1 PUBLISH packet on the wire (fixed header included), as rumqttc checks it.
pub fn packet_size(topic: &str, props: Option<&PublishProperties>, payload_len: usize) -> usize {
    let mut p = Publish::new(topic, QoS::AtLeastOnce, Vec::new(), props.cloned());
    p.pkid = 1;
    let empty = p.size();
    // The remaining-length field grows by a byte at 128, 16 Ki and 2 Mi bytes.
    let varint = |n: usize| match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    let base = (1..=4)
        .map(|v| empty - 1 - v)
        .find(|&len| varint(len) == empty - 1 - len)
        .expect("a PUBLISH size has a 1-4 byte length field");
    let remaining = base + payload_len;
    1 + varint(remaining) + remaining
}

/// The largest payload that fits `max` bytes with this topic and properties.
pub fn payload_room(topic: &str, props: Option<&PublishProperties>, max: usize) -> usize {
    let overhead = packet_size(topic, props, 0);
    // The length field may grow by up to 3 bytes with the payload.
    max.saturating_sub(overhead + 3)
}

/// Re-encodings tried before giving up.
const SHRINK_TRIES: usize = 6;
/// Quality of a re-encoded snapshot.
const SHRINK_QUALITY: u8 = 70;
/// The smallest scale tried (of the width and height).
const MIN_SCALE: f32 = 0.15;

/// The snapshot re-encoded smaller until it has at most `max` bytes; `None` if even the smallest
/// try does not fit or the JPEG does not decode. JPEG size goes roughly with the pixel count (and
/// quality 70 about halves a camera's quality-85..95 picture), so the first try is scaled by
/// √(2 · max / size) with a margin, each further one by 0.8.
pub fn shrink_jpeg(jpeg: &[u8], max: usize) -> Option<Vec<u8>> {
    let img = image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg)
        .ok()?
        .to_rgb8();
    let mut scale = ((2.0 * max as f32 / jpeg.len().max(1) as f32).sqrt() * 0.9).min(1.0);
    for _ in 0..SHRINK_TRIES {
        let scale_now = scale.max(MIN_SCALE);
        let (w, h) = (
            ((img.width() as f32 * scale_now) as u32).max(16),
            ((img.height() as f32 * scale_now) as u32).max(16),
        );
        let scaled = if scale_now < 1.0 {
            image::imageops::resize(&img, w, h, image::imageops::FilterType::Triangle)
        } else {
            img.clone()
        };
        let mut out = Vec::new();
        let encoded = jpeg_encoder::Encoder::new(&mut out, SHRINK_QUALITY).encode(
            scaled.as_raw(),
            scaled.width().min(u16::MAX as u32) as u16,
            scaled.height().min(u16::MAX as u32) as u16,
            jpeg_encoder::ColorType::Rgb,
        );
        if encoded.is_ok() && out.len() <= max {
            return Some(out);
        }
        if scale_now <= MIN_SCALE {
            return None;
        }
        scale = scale_now * 0.8;
    }
    None
}

/// Cuts a command reply that serialises to more than `max` bytes: a page of events keeps as many
/// events as fit and gets the `next_cursor` of the rest (and `"truncated": true`); anything else
/// becomes a `too_large` error. Returns the bytes to send.
pub fn fit_reply(mut reply: Value, max: usize) -> Vec<u8> {
    let body = serde_json::to_vec(&reply).expect("json");
    if body.len() <= max {
        return body;
    }
    if let Some(mut events) = reply.get("events").and_then(Value::as_array).cloned() {
        let rest = reply.get("next_cursor").cloned().unwrap_or(Value::Null);
        loop {
            if let Some(body) = largest_page(&mut reply, &events, &rest, max) {
                return body;
            }
            // Not even the first event fits: it goes as a stub (fetch it over HTTP), so that
            // one large event never blocks the pages behind it.
            match events.first_mut() {
                Some(first) if first.get("omitted").is_none() => *first = stub(first),
                _ => break,
            }
        }
    }
    let error = serde_json::json!({
        "ok": false,
        "command": reply.get("command").cloned().unwrap_or(Value::Null),
        "error": "too_large",
        "reason": format!("the reply does not fit the broker's maximum packet size ({max} bytes of payload); ask for fewer events (limit)"),
    });
    serde_json::to_vec(&error).expect("json")
}

/// The page with the most events (at least one) that fits, with the cursor of the rest (`rest`:
/// the cursor after all of `events`).
fn largest_page(reply: &mut Value, events: &[Value], rest: &Value, max: usize) -> Option<Vec<u8>> {
    let mut fits = |n: usize| -> Option<Vec<u8>> {
        reply["events"] = Value::Array(events[..n].to_vec());
        reply["next_cursor"] = if n == events.len() {
            rest.clone()
        } else {
            events[n - 1]
                .get("id")
                .and_then(Value::as_str)
                .and_then(|id| uuid::Uuid::try_parse(id).ok())
                .map_or(Value::Null, |id| Cursor::before(id).encode().into())
        };
        reply["truncated"] = true.into();
        let body = serde_json::to_vec(reply).expect("json");
        (body.len() <= max).then_some(body)
    };
    // Binary search on the count: ~10 serialisations for 1000 events.
    let (mut lo, mut hi) = (0usize, events.len());
    let mut best = None;
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        match fits(mid) {
            Some(b) => {
                best = Some(b);
                lo = mid;
            }
            None => hi = mid - 1,
        }
    }
    best
}

/// An event reduced to what identifies it, marked `"omitted": "too_large"`.
fn stub(event: &Value) -> Value {
    let mut s = serde_json::Map::new();
    for key in ["id", "kind", "site", "camera", "rule", "started_at", "time"] {
        if let Some(v) = event.get(key) {
            s.insert(key.into(), v.clone());
        }
    }
    if let Some(id) = event.get("id").and_then(Value::as_str) {
        s.insert("api_path".into(), format!("/api/v1/events/{id}").into());
    }
    s.insert("omitted".into(), "too_large".into());
    Value::Object(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use rumqttc::v5::mqttbytes::v5::Packet;

    #[test]
    fn packet_size_matches_what_rumqttc_writes() {
        let props = PublishProperties {
            content_type: Some("application/json".into()),
            message_expiry_interval: Some(60),
            ..Default::default()
        };
        for len in [0, 1, 100, 127, 128, 5000, 16_383, 16_384, 70_000, 2_100_000] {
            let mut p = Publish::new(
                "kinderwatch/kg-7/events/gate/line_crossed",
                QoS::AtLeastOnce,
                vec![7u8; len],
                Some(props.clone()),
            );
            p.pkid = 9;
            let mut buf = BytesMut::new();
            Packet::Publish(p).write(&mut buf, None).unwrap();
            assert_eq!(
                packet_size(
                    "kinderwatch/kg-7/events/gate/line_crossed",
                    Some(&props),
                    len
                ),
                buf.len(),
                "payload {len}"
            );
        }
    }

    #[test]
    fn a_page_is_cut_to_fit_with_a_cursor() {
        let events: Vec<Value> = (0..50)
            .map(|i| {
                serde_json::json!({"id": uuid::Uuid::now_v7().to_string(), "detail": "x".repeat(100), "n": i})
            })
            .collect();
        let reply = serde_json::json!({"ok": true, "command": "query/events", "events": events, "next_cursor": null});
        let body = fit_reply(reply.clone(), 2000);
        assert!(body.len() <= 2000);
        let v: Value = serde_json::from_slice(&body).unwrap();
        let kept = v["events"].as_array().unwrap();
        assert!(!kept.is_empty() && kept.len() < 50, "{}", kept.len());
        let cursor = Cursor::parse(v["next_cursor"].as_str().unwrap()).unwrap();
        assert_eq!(
            cursor.id().to_string(),
            kept.last().unwrap()["id"].as_str().unwrap()
        );
        // Adding one more event would not have fitted.
        let mut more = v.clone();
        more["events"] = Value::Array(events[..kept.len() + 1].to_vec());
        assert!(serde_json::to_vec(&more).unwrap().len() > 2000);
        // Nothing fits: an error that fits.
        let e: Value = serde_json::from_slice(&fit_reply(reply, 150)).unwrap();
        assert_eq!(e["error"], "too_large");
        // A first event larger than the limit goes as a stub; the page goes on behind it.
        let mut big = events.clone();
        big[0]["detail"] = "w".repeat(5000).into();
        let reply = serde_json::json!({"ok": true, "events": big, "next_cursor": null});
        let v: Value = serde_json::from_slice(&fit_reply(reply, 2000)).unwrap();
        assert_eq!(v["events"][0]["omitted"], "too_large", "{v}");
        assert_eq!(v["events"][0]["id"], events[0]["id"]);
        assert!(v["events"].as_array().unwrap().len() > 1);
        // A page that fits whole once stubbed keeps the query's own cursor.
        let mut two = events[..2].to_vec();
        two[0]["detail"] = "w".repeat(5000).into();
        let reply = serde_json::json!({"ok": true, "events": two, "next_cursor": null});
        let v: Value = serde_json::from_slice(&fit_reply(reply, 2000)).unwrap();
        assert_eq!(v["events"].as_array().unwrap().len(), 2);
        assert!(v["next_cursor"].is_null(), "{v}");
    }

    #[test]
    fn a_jpeg_is_shrunk_below_a_limit() {
        let img = image::RgbImage::from_fn(640, 480, |x, y| {
            image::Rgb([((x * 7) ^ (y * 3)) as u8, (x * y) as u8, (x + y * 5) as u8])
        });
        let mut jpeg = Vec::new();
        jpeg_encoder::Encoder::new(&mut jpeg, 95)
            .encode(img.as_raw(), 640, 480, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        let limit = jpeg.len() / 4;
        let small = shrink_jpeg(&jpeg, limit).expect("fits");
        assert!(small.len() <= limit);
        let decoded = image::load_from_memory(&small).unwrap();
        assert!(decoded.width() < 640 || small.len() < jpeg.len());
        assert!(shrink_jpeg(&jpeg, 200).is_none());
        assert!(shrink_jpeg(b"not a jpeg", 10_000).is_none());
    }
}
