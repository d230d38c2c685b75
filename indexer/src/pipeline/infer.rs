//! The model stage: batches prepared images through the image tower and forwards every other
//! outcome unchanged, in order.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use spotter_model::{ImageTower, PreparedImage};

use super::plan::WorkItem;
use super::prepare::Prepared;
use super::write::Written;
use super::IndexRequest;
use crate::error::Result;
use crate::metadata::PhotoMetadata;

/// A batch being gathered: its files (with hash and photo metadata) and their prepared tensors,
/// side by side (the tensors go to the model as one slice, without copying them).
type Pending = (Vec<(WorkItem, [u8; 32], PhotoMetadata)>, Vec<PreparedImage>);

/// Runs batches of `batch` images (or fewer, when nothing arrives for 100 ms) until `input`
/// closes or the writer hangs up; model time is added to `model_time`.
pub(super) fn infer(
    tower: &ImageTower,
    request: &IndexRequest,
    batch: usize,
    input: Receiver<Prepared>,
    output: Sender<Result<Written>>,
    model_time: &Mutex<Duration>,
) {
    let mut pending: Pending = (Vec::with_capacity(batch), Vec::with_capacity(batch));
    let flush = |pending: &mut Pending| -> bool {
        if pending.0.is_empty() {
            return true;
        }
        let t = Instant::now();
        let result = tower.detect(&pending.1, &request.params);
        if let Ok(mut total) = model_time.lock() {
            *total += t.elapsed();
        }
        match result {
            Ok(all) => {
                let images = std::mem::take(&mut pending.1);
                for (((item, hash, photo), prepared), proposals) in
                    pending.0.drain(..).zip(images).zip(all)
                {
                    let msg = Written::Model {
                        item,
                        hash,
                        photo,
                        width: prepared.letterbox.src_width,
                        height: prepared.letterbox.src_height,
                        proposals,
                    };
                    if output.send(Ok(msg)).is_err() {
                        return false;
                    }
                }
                true
            }
            Err(e) => {
                pending.0.clear();
                pending.1.clear();
                let _ = output.send(Err(e.into()));
                false
            }
        }
    };
    loop {
        match input.recv_timeout(Duration::from_millis(100)) {
            Ok(Prepared::Model {
                item,
                hash,
                photo,
                image,
            }) => {
                pending.0.push((item, hash, photo));
                pending.1.push(image);
                if pending.0.len() >= batch && !flush(&mut pending) {
                    return;
                }
            }
            Ok(other) => {
                if output.send(Ok(Written::Other(other))).is_err() {
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if !flush(&mut pending) {
                    return;
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                flush(&mut pending);
                return;
            }
        }
    }
}
