//! Frame → model input tensor, as the manifest describes: size (stretch or letterbox), layout
//! (NCHW/NHWC), dtype (f32/u8) and normalisation, in one pass with bilinear sampling straight into
//! the tensor (no intermediate image on the per-frame path).

use ndarray::Array4;

use super::manifest::{DType, InputSpec, Layout, Resize};

/// Grey used for letterbox padding (the YOLO convention).
const PAD_VALUE: u8 = 114;

/// The prepared input.
#[derive(Debug, Clone)]
pub enum InputTensor {
    F32(Array4<f32>),
    U8(Array4<u8>),
}

/// Where the frame sits inside the model input, to map model coordinates back to the frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    /// Model input size in pixels.
    pub input_w: f32,
    pub input_h: f32,
    /// The frame's content rectangle inside the input, in input pixels.
    pub off_x: f32,
    pub off_y: f32,
    pub content_w: f32,
    pub content_h: f32,
}

impl Placement {
    /// Input pixels → normalised frame coordinates.
    pub fn to_frame(&self, x: f32, y: f32) -> (f32, f32) {
        (
            (x - self.off_x) / self.content_w,
            (y - self.off_y) / self.content_h,
        )
    }

    /// Normalised input coordinates (0..1 of the input) → normalised frame coordinates.
    pub fn norm_to_frame(&self, x: f32, y: f32) -> (f32, f32) {
        self.to_frame(x * self.input_w, y * self.input_h)
    }
}

/// Prepares `rgb` (packed, `w * h * 3`) for a model with this input spec.
pub fn prepare(rgb: &[u8], w: u32, h: u32, spec: &InputSpec) -> InputTensor {
    prepare_with_placement(rgb, w, h, spec).0
}

pub fn prepare_with_placement(
    rgb: &[u8],
    w: u32,
    h: u32,
    spec: &InputSpec,
) -> (InputTensor, Placement) {
    assert_eq!(rgb.len(), (w * h * 3) as usize, "packed RGB frame");
    // Models without a fixed size (the TF SSD) take the frame as it is.
    let (iw, ih) = (spec.width.unwrap_or(w), spec.height.unwrap_or(h));
    let placement = match spec.resize {
        Resize::Stretch => Placement {
            input_w: iw as f32,
            input_h: ih as f32,
            off_x: 0.0,
            off_y: 0.0,
            content_w: iw as f32,
            content_h: ih as f32,
        },
        Resize::Letterbox => {
            let scale = (iw as f32 / w as f32).min(ih as f32 / h as f32);
            let (cw, ch) = ((w as f32 * scale).round(), (h as f32 * scale).round());
            Placement {
                input_w: iw as f32,
                input_h: ih as f32,
                off_x: ((iw as f32 - cw) / 2.0).floor(),
                off_y: ((ih as f32 - ch) / 2.0).floor(),
                content_w: cw,
                content_h: ch,
            }
        }
    };
    let shape = match spec.layout {
        Layout::Nchw => (1, 3, ih as usize, iw as usize),
        Layout::Nhwc => (1, ih as usize, iw as usize, 3),
    };
    let tensor = match spec.dtype {
        DType::F32 => {
            let scale = spec.scale;
            let (mean, std) = (spec.mean, spec.std);
            let mut t = Array4::<f32>::zeros(shape);
            fill(
                rgb,
                w,
                h,
                iw,
                ih,
                &placement,
                spec.layout,
                t.as_slice_mut().unwrap(),
                |c, v| (v * scale - mean[c]) / std[c],
            );
            InputTensor::F32(t)
        }
        DType::U8 => {
            let mut t = Array4::<u8>::zeros(shape);
            fill(
                rgb,
                w,
                h,
                iw,
                ih,
                &placement,
                spec.layout,
                t.as_slice_mut().unwrap(),
                |_, v| v.round().clamp(0.0, 255.0) as u8,
            );
            InputTensor::U8(t)
        }
    };
    (tensor, placement)
}

/// Writes every input pixel: bilinear samples of the frame inside the content rectangle, padding
/// outside it. Identity size is an exact copy.
#[allow(clippy::too_many_arguments)]
fn fill<T: Copy>(
    rgb: &[u8],
    w: u32,
    h: u32,
    iw: u32,
    ih: u32,
    p: &Placement,
    layout: Layout,
    out: &mut [T],
    convert: impl Fn(usize, f32) -> T,
) {
    let (w, h, iw, ih) = (w as usize, h as usize, iw as usize, ih as usize);
    let plane = iw * ih;
    // Source coordinate (pixel-centre aligned) and weights per output column, computed once.
    let sx = p.content_w / w as f32;
    let sy = p.content_h / h as f32;
    let cols: Vec<Option<(usize, usize, f32)>> = (0..iw)
        .map(|x| {
            let fx = (x as f32 + 0.5 - p.off_x) / sx - 0.5;
            if (x as f32) < p.off_x || (x as f32) >= p.off_x + p.content_w {
                return None;
            }
            let fx = fx.clamp(0.0, (w - 1) as f32);
            let x0 = fx.floor() as usize;
            Some((x0, (x0 + 1).min(w - 1), fx - x0 as f32))
        })
        .collect();
    let pad: [T; 3] = std::array::from_fn(|c| convert(c, PAD_VALUE as f32));
    for y in 0..ih {
        let inside_y = (y as f32) >= p.off_y && (y as f32) < p.off_y + p.content_h;
        let fy = ((y as f32 + 0.5 - p.off_y) / sy - 0.5).clamp(0.0, (h - 1) as f32);
        let y0 = fy.floor() as usize;
        let y1 = (y0 + 1).min(h - 1);
        let wy = fy - y0 as f32;
        let row0 = &rgb[y0 * w * 3..(y0 + 1) * w * 3];
        let row1 = &rgb[y1 * w * 3..(y1 + 1) * w * 3];
        for (x, col) in cols.iter().enumerate() {
            let px: [T; 3] = match (inside_y, col) {
                (true, Some((x0, x1, wx))) => std::array::from_fn(|c| {
                    let a = row0[x0 * 3 + c] as f32;
                    let b = row0[x1 * 3 + c] as f32;
                    let cc = row1[x0 * 3 + c] as f32;
                    let d = row1[x1 * 3 + c] as f32;
                    let top = a + (b - a) * wx;
                    let bottom = cc + (d - cc) * wx;
                    convert(c, top + (bottom - top) * wy)
                }),
                _ => pad,
            };
            match layout {
                Layout::Nchw => {
                    for (c, v) in px.into_iter().enumerate() {
                        out[c * plane + y * iw + x] = v;
                    }
                }
                Layout::Nhwc => {
                    let i = (y * iw + x) * 3;
                    out[i..i + 3].copy_from_slice(&px);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(
        w: Option<u32>,
        h: Option<u32>,
        layout: Layout,
        dtype: DType,
        resize: Resize,
    ) -> InputSpec {
        InputSpec {
            name: "x".into(),
            width: w,
            height: h,
            layout,
            dtype,
            scale: 1.0 / 255.0,
            mean: [0.0; 3],
            std: [1.0; 3],
            resize,
        }
    }

    /// A frame whose red channel encodes x and green encodes y.
    fn gradient(w: u32, h: u32) -> Vec<u8> {
        let mut v = Vec::new();
        for y in 0..h {
            for x in 0..w {
                v.extend([(x * 255 / (w - 1)) as u8, (y * 255 / (h - 1)) as u8, 7]);
            }
        }
        v
    }

    #[test]
    fn identity_size_u8_nhwc_is_an_exact_copy() {
        let rgb = gradient(16, 8);
        let t = prepare(
            &rgb,
            16,
            8,
            &spec(None, None, Layout::Nhwc, DType::U8, Resize::Stretch),
        );
        let InputTensor::U8(t) = t else { panic!() };
        assert_eq!(t.shape(), &[1, 8, 16, 3]);
        assert_eq!(t.as_slice().unwrap(), &rgb[..]);
    }

    #[test]
    fn stretch_nchw_normalises_and_keeps_geometry() {
        let rgb = gradient(64, 32);
        let t = prepare(
            &rgb,
            64,
            32,
            &spec(
                Some(32),
                Some(32),
                Layout::Nchw,
                DType::F32,
                Resize::Stretch,
            ),
        );
        let InputTensor::F32(t) = t else { panic!() };
        assert_eq!(t.shape(), &[1, 3, 32, 32]);
        // Red grows left to right, green top to bottom, blue constant 7/255.
        assert!(t[[0, 0, 5, 0]] < 0.05 && t[[0, 0, 5, 31]] > 0.95);
        assert!(t[[0, 1, 0, 5]] < 0.05 && t[[0, 1, 31, 5]] > 0.95);
        assert!((t[[0, 2, 10, 10]] - 7.0 / 255.0).abs() < 1e-4);
    }

    #[test]
    fn letterbox_pads_and_maps_back() {
        let rgb = gradient(64, 32);
        let (t, p) = prepare_with_placement(
            &rgb,
            64,
            32,
            &spec(
                Some(32),
                Some(32),
                Layout::Nchw,
                DType::F32,
                Resize::Letterbox,
            ),
        );
        let InputTensor::F32(t) = t else { panic!() };
        // 64x32 into 32x32: content 32x16, 8 rows of padding above and below.
        assert_eq!(
            (p.off_x, p.off_y, p.content_w, p.content_h),
            (0.0, 8.0, 32.0, 16.0)
        );
        assert!((t[[0, 2, 0, 0]] - 114.0 / 255.0).abs() < 1e-4, "padding");
        assert!((t[[0, 2, 31, 0]] - 114.0 / 255.0).abs() < 1e-4, "padding");
        assert!((t[[0, 2, 16, 16]] - 7.0 / 255.0).abs() < 1e-4, "content");
        // The input centre is the frame centre; the content's top-left is the frame's.
        assert_eq!(p.to_frame(16.0, 16.0), (0.5, 0.5));
        assert_eq!(p.to_frame(0.0, 8.0), (0.0, 0.0));
    }
}
