//! kinderwatch: perimeter alerts from kindergarten IP cameras.
//!
//! Data flows one way: [`camera`] (RTSP ingest, one supervisor per camera) → frames → [`detect`]
//! → tracking and rules → events → store → alerts and API. [`app`] wires the stages together and
//! supervises them; [`config`] is the one TOML file that describes a site.

pub mod alert;
pub mod api;
pub mod app;
pub mod auth;
pub mod camera;
pub mod center;
pub mod config;
pub mod control;
pub mod detect;
pub mod doctor;
pub mod events;
pub mod geometry;
pub mod health;
pub mod history;
pub mod ops;
pub mod perimeter;
pub mod progress;
pub mod rules;
pub mod store;
pub mod telemetry;
pub mod validate;

/// Initialises GStreamer once; safe to call from many threads and tests.
pub fn init_gstreamer() -> Result<(), gstreamer::glib::Error> {
    gstreamer::init()
}
