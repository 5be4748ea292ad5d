//! Tracking and perimeter rules. Pure code: no tokio, GStreamer or ort; times come in as
//! arguments, so everything here is unit- and property-tested.
//!
//! - [`geometry`]: polygons, sides of lines, segment intersection (on `geo`; [`crate::geometry`],
//!   re-exported here);
//! - [`tracker`]: per-camera tracks with stable ids, paths and best snapshots;
//! - [`tripwire`]: line crossings with direction and hysteresis (ONVIF LineDetector);
//! - [`zone`]: entering, leaving and loitering in polygons (FieldDetector, LoiteringDetector);
//! - [`schedule`]: weekly arming windows in the site's time zone, with dated exceptions;
//! - [`engine`]: rules per camera (filters, masks, arming, schedules, cooldowns) → rule hits;
//! - [`config`]: the `[[zones]]` and `[[rules]]` sections, compiled into [`spec`]: each camera's
//!   checked rules, which its engine is built from;
//! - [`edit`]: a camera's zones, masks and rules as the console's editor reads them and writes
//!   them back into the config file (`toml_edit`, comments kept).

pub use crate::geometry;

pub mod config;
pub mod edit;
pub mod engine;
pub mod schedule;
pub mod spec;
pub mod tracker;
pub mod tripwire;
pub mod zone;
