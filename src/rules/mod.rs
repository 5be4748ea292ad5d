//! Tracking and perimeter rules. Pure code: no tokio, GStreamer or ort; times come in as
//! arguments, so everything here is unit- and property-tested.
//!
//! - [`geometry`]: polygons, sides of lines, segment intersection (on `geo`; [`crate::geometry`],
//!   re-exported here);
//! - [`tracker`]: per-camera tracks with stable ids, paths and best snapshots;
//! - [`tripwire`]: line crossings with direction and hysteresis (ONVIF LineDetector);
//! - [`zone`]: entering, leaving and loitering in polygons (FieldDetector, LoiteringDetector);
//! - [`schedule`]: weekly arming windows in the site's time zone, with dated exceptions.
//! - [`engine`]: rules per camera (filters, masks, arming, schedules, cooldowns) → rule hits.

pub use crate::geometry;

pub mod engine;
pub mod schedule;
pub mod tracker;
pub mod tripwire;
pub mod zone;
