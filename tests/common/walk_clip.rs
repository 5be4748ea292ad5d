//! A synthetic clip with known truth: a person (cut from scikit-image's `camera.png`) walks down
//! over a background for 4 s, across y = 0.62, into the bottom quarter, and stands there 8 s.
//! 10 fps, H.264 byte stream.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};

pub const FPS: u32 = 10;
pub const WALK_FRAMES: u32 = 40; // 4 s walking down
pub const STAND_FRAMES: u32 = 80; // 8 s standing in the zone

/// Feet height (fraction of the frame) at clip frame `i`.
fn feet_y(i: u32) -> f32 {
    let t = (i.min(WALK_FRAMES)) as f32 / WALK_FRAMES as f32;
    0.48 + t * (0.92 - 0.48)
}

/// Encodes the clip into `dir`; its path.
pub fn make(dir: &Path) -> PathBuf {
    let cam = image::open(super::media_dir().join("camera.png"))
        .unwrap()
        .to_rgb8();
    let person = image::imageops::crop_imm(&cam, 0, 66, 312, 446).to_image();
    let (pw, ph) = (150u32, 214u32);
    let person = image::imageops::resize(&person, pw, ph, image::imageops::FilterType::Triangle);
    let background = RgbImage::from_fn(640, 480, |x, y| {
        let v = (110 + (x / 7 + y / 5) % 20) as u8;
        Rgb([v, v + 5, v - 10])
    });
    for i in 0..WALK_FRAMES + STAND_FRAMES {
        let mut img = background.clone();
        let feet = (feet_y(i) * 480.0) as i64;
        image::imageops::overlay(&mut img, &person, 320 - pw as i64 / 2, feet - ph as i64);
        img.save(dir.join(format!("f{i:04}.png"))).unwrap();
    }
    let out = dir.join("synthetic.h264");
    let status = std::process::Command::new("gst-launch-1.0")
        .args([
            "-q",
            "multifilesrc",
            &format!("location={}/f%04d.png", dir.display()),
            "index=0",
            &format!("caps=image/png,framerate={FPS}/1"),
            "!",
            "pngdec",
            "!",
            "videoconvert",
            "!",
            "video/x-raw,format=I420",
            "!",
            "x264enc",
            "tune=zerolatency",
            "speed-preset=ultrafast",
            "key-int-max=10",
            "!",
            "h264parse",
            "config-interval=-1",
            "!",
            "video/x-h264,stream-format=byte-stream",
            "!",
            "filesink",
            &format!("location={}", out.display()),
        ])
        .status()
        .unwrap();
    assert!(status.success(), "encoding the synthetic clip");
    out
}
