//! Output tensors → detections, per model family, and per-class non-maximum suppression.
//!
//! Every decoder returns boxes in normalised frame coordinates (through the [`Placement`] of the
//! input) and only for the classes kept by [`DecodeParams::keep`].

use std::sync::Arc;

use ndarray::{ArrayViewD, Axis};

use super::preprocess::Placement;
use super::{BBox, Detection};

#[derive(Debug, Clone)]
pub struct DecodeParams {
    /// Detections below this score are dropped before NMS.
    pub min_score: f32,
    /// Two boxes of the same class overlapping more than this are one object.
    pub nms_iou: f32,
    /// Per class id: keep it?
    pub keep: Vec<bool>,
    pub max_detections: usize,
}

impl DecodeParams {
    fn keeps(&self, class: usize) -> bool {
        self.keep.get(class).copied().unwrap_or(false)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("model output {name}: {message}")]
pub struct DecodeError {
    pub name: String,
    pub message: String,
}

fn shape_err(name: &str, message: impl Into<String>) -> DecodeError {
    DecodeError {
        name: name.to_owned(),
        message: message.into(),
    }
}

/// NanoDet GFL heads: per stride, class scores `[1, cells, C]` (already sigmoid) and box
/// distributions `[1, cells, 4 * bins]` (left, top, right, bottom; softmax over the bins, expected
/// value times the stride is the distance from the cell centre).
#[allow(clippy::too_many_arguments)]
pub fn nanodet(
    scores: &[(&str, ArrayViewD<f32>)],
    boxes: &[(&str, ArrayViewD<f32>)],
    strides: &[u32],
    bins: usize,
    placement: &Placement,
    labels: &[Arc<str>],
    params: &DecodeParams,
) -> Result<Vec<Detection>, DecodeError> {
    let mut found = Vec::new();
    let mut dist = vec![0f32; bins];
    for ((&stride, (sname, s)), (bname, b)) in strides.iter().zip(scores).zip(boxes) {
        let s = s
            .view()
            .into_dimensionality::<ndarray::Ix3>()
            .map_err(|e| shape_err(sname, e.to_string()))?;
        let b = b
            .view()
            .into_dimensionality::<ndarray::Ix3>()
            .map_err(|e| shape_err(bname, e.to_string()))?;
        let (cells, classes) = (s.shape()[1], s.shape()[2]);
        if b.shape()[1] != cells || b.shape()[2] != 4 * bins {
            return Err(shape_err(
                bname,
                format!("shape {:?}, expected [1, {cells}, {}]", b.shape(), 4 * bins),
            ));
        }
        let nx = (placement.input_w / stride as f32).ceil() as usize;
        if nx == 0 || !cells.is_multiple_of(nx) {
            return Err(shape_err(
                sname,
                format!("{cells} cells do not fit a grid {nx} wide"),
            ));
        }
        let s = s.index_axis(Axis(0), 0);
        let b = b.index_axis(Axis(0), 0);
        // Only the kept classes' scores are read: a person-only site looks at 1 of 80 per cell.
        let kept: Vec<usize> = (0..classes.min(labels.len()))
            .filter(|&c| params.keeps(c))
            .collect();
        for cell in 0..cells {
            let row = s.index_axis(Axis(0), cell);
            for &class in &kept {
                let score = row[class];
                if score < params.min_score {
                    continue;
                }
                let cx = ((cell % nx) as f32 + 0.5) * stride as f32;
                let cy = ((cell / nx) as f32 + 0.5) * stride as f32;
                let reg = b.index_axis(Axis(0), cell);
                let mut side = [0f32; 4];
                for (k, d) in side.iter_mut().enumerate() {
                    for (j, v) in dist.iter_mut().enumerate() {
                        *v = reg[k * bins + j];
                    }
                    *d = expected_bin(&mut dist) * stride as f32;
                }
                found.push(detection(
                    labels,
                    class,
                    score,
                    placement.to_frame(cx - side[0], cy - side[1]),
                    placement.to_frame(cx + side[2], cy + side[3]),
                ));
            }
        }
    }
    Ok(nms(found, params.nms_iou, params.max_detections))
}

/// Softmax over the bins, then the expected bin index.
fn expected_bin(logits: &mut [f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in logits.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    logits
        .iter()
        .enumerate()
        .map(|(k, p)| k as f32 * p)
        .sum::<f32>()
        / sum
}

/// TF Object Detection API SSD (NMS inside the model): boxes `[1, N, 4]` as ymin, xmin, ymax, xmax
/// normalised to the input, scores `[1, N]`, classes `[1, N]` (label indices), count `[1]`.
pub fn ssd(
    boxes: ArrayViewD<f32>,
    scores: ArrayViewD<f32>,
    classes: ArrayViewD<f32>,
    count: Option<ArrayViewD<f32>>,
    placement: &Placement,
    labels: &[Arc<str>],
    params: &DecodeParams,
) -> Result<Vec<Detection>, DecodeError> {
    let boxes = boxes
        .into_dimensionality::<ndarray::Ix3>()
        .map_err(|e| shape_err("boxes", e.to_string()))?;
    let n = boxes.shape()[1];
    let scores = scores.iter().copied().collect::<Vec<_>>();
    let classes = classes.iter().copied().collect::<Vec<_>>();
    if scores.len() < n || classes.len() < n || boxes.shape()[2] != 4 {
        return Err(shape_err(
            "scores",
            "boxes, scores and classes disagree in length",
        ));
    }
    let valid = count
        .and_then(|c| c.iter().next().copied())
        .map(|c| (c.max(0.0) as usize).min(n))
        .unwrap_or(n);
    let mut found = Vec::new();
    for i in 0..valid {
        let class = classes[i].round().max(0.0) as usize;
        if scores[i] < params.min_score || !params.keeps(class) || class >= labels.len() {
            continue;
        }
        found.push(detection(
            labels,
            class,
            scores[i],
            placement.norm_to_frame(boxes[[0, i, 1]], boxes[[0, i, 0]]),
            placement.norm_to_frame(boxes[[0, i, 3]], boxes[[0, i, 2]]),
        ));
    }
    // The model already suppressed overlaps; this only sorts and caps.
    Ok(nms(found, 1.0, params.max_detections))
}

/// The common YOLO export (v5u/v8/v11): one output `[1, 4+C, N]` (or transposed `[1, N, 4+C]`)
/// with cx, cy, w, h in input pixels followed by C class scores.
pub fn yolo(
    output: ArrayViewD<f32>,
    placement: &Placement,
    labels: &[Arc<str>],
    params: &DecodeParams,
) -> Result<Vec<Detection>, DecodeError> {
    let out = output
        .into_dimensionality::<ndarray::Ix3>()
        .map_err(|e| shape_err("output", e.to_string()))?;
    let c = labels.len();
    let out = out.index_axis(Axis(0), 0);
    // Rows = attributes (4 + C), columns = candidates.
    let out = if out.shape()[0] == 4 + c {
        out
    } else if out.shape()[1] == 4 + c {
        out.reversed_axes()
    } else {
        return Err(shape_err(
            "output",
            format!("shape {:?} does not match 4 + {c} labels", out.shape()),
        ));
    };
    let mut found = Vec::new();
    for i in 0..out.shape()[1] {
        for class in 0..c {
            let score = out[[4 + class, i]];
            if score < params.min_score || !params.keeps(class) {
                continue;
            }
            let (cx, cy, w, h) = (out[[0, i]], out[[1, i]], out[[2, i]], out[[3, i]]);
            found.push(detection(
                labels,
                class,
                score,
                placement.to_frame(cx - w / 2.0, cy - h / 2.0),
                placement.to_frame(cx + w / 2.0, cy + h / 2.0),
            ));
        }
    }
    Ok(nms(found, params.nms_iou, params.max_detections))
}

/// A detection from two corners in normalised frame coordinates, clipped to the frame.
fn detection(
    labels: &[Arc<str>],
    class: usize,
    score: f32,
    (x1, y1): (f32, f32),
    (x2, y2): (f32, f32),
) -> Detection {
    Detection {
        class_id: class as u32,
        label: labels[class].clone(),
        score,
        bbox: BBox::new(x1, y1, x2, y2).clamped(),
    }
}

/// Greedy non-maximum suppression per class, highest score first; at most `max` survive.
pub fn nms(mut dets: Vec<Detection>, iou: f32, max: usize) -> Vec<Detection> {
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::new();
    for d in dets {
        if kept.len() >= max {
            break;
        }
        if kept
            .iter()
            .all(|k| k.class_id != d.class_id || k.bbox.iou(&d.bbox) <= iou)
        {
            kept.push(d);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array, IxDyn};

    fn labels(n: usize) -> Vec<Arc<str>> {
        (0..n)
            .map(|i| Arc::from(format!("c{i}").as_str()))
            .collect()
    }

    fn params(classes: usize) -> DecodeParams {
        DecodeParams {
            min_score: 0.3,
            nms_iou: 0.45,
            keep: vec![true; classes],
            max_detections: 100,
        }
    }

    fn stretch(w: f32, h: f32) -> Placement {
        Placement {
            input_w: w,
            input_h: h,
            off_x: 0.0,
            off_y: 0.0,
            content_w: w,
            content_h: h,
        }
    }

    fn det(class: u32, score: f32, b: (f32, f32, f32, f32)) -> Detection {
        Detection {
            class_id: class,
            label: "x".into(),
            score,
            bbox: BBox::new(b.0, b.1, b.2, b.3),
        }
    }

    #[test]
    fn nms_suppresses_overlaps_within_a_class_only() {
        let out = nms(
            vec![
                det(0, 0.9, (0.1, 0.1, 0.5, 0.5)),
                det(0, 0.8, (0.12, 0.1, 0.52, 0.5)), // same object, lower score
                det(1, 0.7, (0.1, 0.1, 0.5, 0.5)),   // other class, same place
                det(0, 0.6, (0.6, 0.6, 0.9, 0.9)),   // elsewhere
            ],
            0.45,
            100,
        );
        let scores: Vec<f32> = out.iter().map(|d| d.score).collect();
        assert_eq!(scores, vec![0.9, 0.7, 0.6]);
    }

    /// A YOLO output with two known objects among noise, in both layouts.
    #[test]
    fn yolo_decodes_known_boxes() {
        let c = 3;
        let n = 6;
        let mut t = Array::<f32, _>::zeros(IxDyn(&[1, 4 + c, n]));
        let mut put = |i: usize, cx: f32, cy: f32, w: f32, h: f32, class: usize, score: f32| {
            t[[0, 0, i]] = cx;
            t[[0, 1, i]] = cy;
            t[[0, 2, i]] = w;
            t[[0, 3, i]] = h;
            t[[0, 4 + class, i]] = score;
        };
        put(0, 320.0, 320.0, 64.0, 128.0, 0, 0.9); // person in the middle of a 640x640 input
        put(1, 322.0, 318.0, 60.0, 130.0, 0, 0.8); // duplicate of it
        put(2, 100.0, 500.0, 40.0, 40.0, 2, 0.7); // class 2 object
        put(3, 500.0, 100.0, 40.0, 40.0, 1, 0.1); // below threshold
        let p = stretch(640.0, 640.0);
        let check = |dets: Vec<Detection>| {
            assert_eq!(dets.len(), 2, "{dets:?}");
            assert_eq!(dets[0].class_id, 0);
            let b = dets[0].bbox;
            assert!(
                (b.x1 - 0.45).abs() < 1e-5 && (b.x2 - 0.55).abs() < 1e-5,
                "{b:?}"
            );
            assert!(
                (b.y1 - 0.4).abs() < 1e-5 && (b.y2 - 0.6).abs() < 1e-5,
                "{b:?}"
            );
            assert_eq!(dets[1].class_id, 2);
            assert!((dets[1].bbox.x1 - 80.0 / 640.0).abs() < 1e-5);
        };
        check(yolo(t.view(), &p, &labels(c), &params(c)).unwrap());
        let transposed = t.view().permuted_axes(IxDyn(&[0, 2, 1])).to_owned();
        check(yolo(transposed.view(), &p, &labels(c), &params(c)).unwrap());
        // Only class 2 kept.
        let mut only2 = params(c);
        only2.keep = vec![false, false, true];
        let dets = yolo(t.view(), &p, &labels(c), &only2).unwrap();
        assert_eq!(dets.len(), 1);
        assert_eq!(dets[0].class_id, 2);
    }

    #[test]
    fn yolo_letterbox_maps_back_to_the_frame() {
        // A 1280x720 frame letterboxed into 640x640: content 640x360 at y offset 140.
        let p = Placement {
            input_w: 640.0,
            input_h: 640.0,
            off_x: 0.0,
            off_y: 140.0,
            content_w: 640.0,
            content_h: 360.0,
        };
        let mut t = Array::<f32, _>::zeros(IxDyn(&[1, 5, 1]));
        t[[0, 0, 0]] = 320.0;
        t[[0, 1, 0]] = 320.0;
        t[[0, 2, 0]] = 64.0;
        t[[0, 3, 0]] = 180.0;
        t[[0, 4, 0]] = 0.9;
        let d = yolo(t.view(), &p, &labels(1), &params(1)).unwrap();
        assert!(
            (d[0].bbox.y1 - 0.25).abs() < 1e-5 && (d[0].bbox.y2 - 0.75).abs() < 1e-5,
            "{:?}",
            d[0].bbox
        );
    }

    #[test]
    fn yolo_rejects_a_mismatched_shape() {
        let t = Array::<f32, _>::zeros(IxDyn(&[1, 9, 5]));
        assert!(yolo(t.view(), &stretch(640.0, 640.0), &labels(3), &params(3)).is_err());
    }

    #[test]
    fn nanodet_decodes_a_constructed_cell() {
        // One stride-8 head on a 16x16 input: a 2x2 grid. Cell 3 (x=1, y=1, centre 12,12) holds a
        // class-0 object whose sides are all at bin 2 exactly (distance 2 * 8 = 16 px).
        let bins = 4;
        let mut scores = Array::<f32, _>::zeros(IxDyn(&[1, 4, 2]));
        scores[[0, 3, 0]] = 0.8;
        scores[[0, 1, 1]] = 0.2; // below threshold
        let mut boxes = Array::<f32, _>::from_elem(IxDyn(&[1, 4, 4 * bins]), -20.0);
        for side in 0..4 {
            boxes[[0, 3, side * bins + 2]] = 20.0;
        }
        let p = stretch(16.0, 16.0);
        let dets = nanodet(
            &[("s", scores.view())],
            &[("b", boxes.view())],
            &[8],
            bins,
            &p,
            &labels(2),
            &params(2),
        )
        .unwrap();
        assert_eq!(dets.len(), 1, "{dets:?}");
        // centre 12 ± 16 → (-4, 28) clamped to the 16 px frame → (0, 1).
        let b = dets[0].bbox;
        assert_eq!((b.x1, b.y1, b.x2, b.y2), (0.0, 0.0, 1.0, 1.0));
        assert!((dets[0].score - 0.8).abs() < 1e-6);
    }

    #[test]
    fn nanodet_reads_only_the_kept_classes() {
        // Cell 0 holds a confident class-0 object and cell 2 a class-1 one; only class 1 is kept.
        let bins = 4;
        let mut scores = Array::<f32, _>::zeros(IxDyn(&[1, 4, 2]));
        scores[[0, 0, 0]] = 0.9;
        scores[[0, 2, 1]] = 0.7;
        let boxes = Array::<f32, _>::zeros(IxDyn(&[1, 4, 4 * bins]));
        let mut p = params(2);
        p.keep = vec![false, true];
        let dets = nanodet(
            &[("s", scores.view())],
            &[("b", boxes.view())],
            &[8],
            bins,
            &stretch(16.0, 16.0),
            &labels(2),
            &p,
        )
        .unwrap();
        assert_eq!(dets.len(), 1, "{dets:?}");
        assert_eq!(&*dets[0].label, "c1");
        assert!((dets[0].score - 0.7).abs() < 1e-6);
    }

    #[test]
    fn expected_bin_of_a_peak_is_its_index() {
        let mut v = vec![-30.0, -30.0, 30.0, -30.0];
        assert!((expected_bin(&mut v) - 2.0).abs() < 1e-4);
        let mut flat = vec![0.0; 3];
        assert!((expected_bin(&mut flat) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn ssd_respects_count_and_class_filter() {
        let mut boxes = Array::<f32, _>::zeros(IxDyn(&[1, 3, 4]));
        for (i, b) in [
            [0.1, 0.2, 0.5, 0.4],
            [0.5, 0.5, 0.9, 0.9],
            [0.0, 0.0, 1.0, 1.0],
        ]
        .iter()
        .enumerate()
        {
            for k in 0..4 {
                boxes[[0, i, k]] = b[k];
            }
        }
        let scores = Array::from_shape_vec(IxDyn(&[1, 3]), vec![0.9, 0.8, 0.95]).unwrap();
        let classes = Array::from_shape_vec(IxDyn(&[1, 3]), vec![1.0, 2.0, 1.0]).unwrap();
        let count = Array::from_shape_vec(IxDyn(&[1]), vec![2.0]).unwrap();
        let mut p = params(3);
        p.keep = vec![false, true, false];
        let d = ssd(
            boxes.view(),
            scores.view(),
            classes.view(),
            Some(count.view()),
            &stretch(300.0, 300.0),
            &labels(3),
            &p,
        )
        .unwrap();
        // Entry 2 is beyond the count, entry 1 is another class.
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].bbox.x1, d[0].bbox.y1, d[0].bbox.x2, d[0].bbox.y2),
            (0.2, 0.1, 0.4, 0.5)
        );
    }
}
