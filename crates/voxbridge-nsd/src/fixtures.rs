//! Small inputs in exactly the release's formats (for tests and `voxbridge data import-nsd`
//! examples): an HDF5 betas file with dataset `betas`, webdataset tars of
//! `sample%09d.behav.npy` (with the `past_behav`/`future_behav`/`olds_behav` members MindEye2
//! also ships), and a targets file.

use std::path::Path;

use crate::npy;

/// One trial of a fixture: `[image, subject, session, run, trial, global_trial, shared1000]`.
#[derive(Debug, Clone, Copy)]
pub struct FixtureTrial {
    pub image: u32,
    pub session: u16,
    pub global_trial: u32,
    pub shared1000: bool,
}

/// A subject with `sessions` sessions of `per_session` trials over `voxels` voxels; every
/// session shows the shared images 0–2 once (so each is seen `sessions` times) and new images
/// otherwise. Returns the trials in global order.
pub fn design(sessions: u16, per_session: u32) -> Vec<FixtureTrial> {
    let mut out = Vec::new();
    let mut next_image = 1000;
    for s in 0..sessions {
        for t in 0..per_session {
            let global_trial = u32::from(s) * per_session + t;
            let shared1000 = t < 3;
            let image = if shared1000 {
                t
            } else {
                next_image += 1;
                next_image
            };
            out.push(FixtureTrial { image, session: s + 1, global_trial, shared1000 });
        }
    }
    out
}

/// A behaviour row as MindEye2 stores it (float64, −1 = missing).
pub fn behav_row(subject: u8, t: &FixtureTrial) -> [f64; 17] {
    let mut row = [-1.0; 17];
    row[0] = f64::from(t.image);
    row[1] = f64::from(subject);
    row[2] = f64::from(t.session);
    row[3] = f64::from(t.global_trial % 12 / 4 + 1);
    row[4] = f64::from(t.global_trial % 4 + 1);
    row[5] = f64::from(t.global_trial);
    row[16] = f64::from(u8::from(t.shared1000));
    row
}

/// A webdataset tar of `rows` (key, 1×17 row) with the other behaviour members beside them.
pub fn write_tar(path: &Path, rows: &[(String, [f64; 17])]) -> std::io::Result<()> {
    let mut builder = tar::Builder::new(std::fs::File::create(path)?);
    for (key, row) in rows {
        let members = [
            ("behav.npy", npy::write_f64(&[1, 17], row)),
            ("past_behav.npy", npy::write_f64(&[15, 17], &[-1.0; 15 * 17])),
            ("future_behav.npy", npy::write_f64(&[15, 17], &[-1.0; 15 * 17])),
            ("olds_behav.npy", npy::write_f64(&[3, 17], &[-1.0; 3 * 17])),
        ];
        for (suffix, bytes) in members {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, format!("{key}.{suffix}"), bytes.as_slice())?;
        }
    }
    builder.into_inner()?.sync_all()
}

/// `wds/subj0X/train/{session-1}.tar` and `wds/subj0X/new_test/0.tar` for `trials`.
pub fn write_wds(wds: &Path, subject: u8, trials: &[FixtureTrial]) -> std::io::Result<()> {
    let dir = wds.join(format!("subj{subject:02}"));
    std::fs::create_dir_all(dir.join("train"))?;
    std::fs::create_dir_all(dir.join("new_test"))?;
    let key = |t: &FixtureTrial| format!("sample{:09}", t.global_trial);
    let sessions: std::collections::BTreeSet<u16> = trials.iter().map(|t| t.session).collect();
    for s in sessions {
        let rows: Vec<_> = trials
            .iter()
            .filter(|t| t.session == s && !t.shared1000)
            .map(|t| (key(t), behav_row(subject, t)))
            .collect();
        write_tar(&dir.join("train").join(format!("{}.tar", s - 1)), &rows)?;
    }
    let test: Vec<_> = trials.iter().filter(|t| t.shared1000).map(|t| (key(t), behav_row(subject, t))).collect();
    write_tar(&dir.join("new_test").join("0.tar"), &test)
}

/// An HDF5 file with dataset `betas` `[rows, voxels]` (float32): row r, voxel v = f(r, v).
pub fn write_betas(
    path: &Path,
    rows: usize,
    voxels: usize,
    f: impl Fn(usize, usize) -> f32,
) -> Result<(), crate::hdf5::Hdf5Error> {
    let file = crate::hdf5::File::create(path)?;
    let values: Vec<f32> = (0..rows * voxels).map(|i| f(i / voxels, i % voxels)).collect();
    file.create_dataset(crate::betas::DATASET, &[rows, voxels], &values).map(drop)
}

/// A directory of `image_id.npy`, `clip_tokens.npy` `[N, tokens, dim]` and `lowlevel.npy`
/// `[N, C, H, W]` for `images`, with values g(image, k) (`k` counts from 0 in the CLIP tokens
/// and from 1000 in the latent).
pub fn write_targets_npy(
    dir: &Path,
    images: &[u32],
    [tokens, dim]: [usize; 2],
    lowlevel: [usize; 3],
    g: impl Fn(u32, usize) -> f32,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let n = images.len();
    let ids: Vec<f64> = images.iter().map(|&i| f64::from(i)).collect();
    std::fs::write(dir.join("image_id.npy"), npy::write_f64(&[n], &ids))?;
    let clip: Vec<f32> =
        images.iter().flat_map(|&i| (0..tokens * dim).map(move |k| (i, k))).map(|(i, k)| g(i, k)).collect();
    std::fs::write(dir.join("clip_tokens.npy"), npy::write_f32(&[n, tokens, dim], &clip))?;
    let per_image: usize = lowlevel.iter().product();
    let low: Vec<f32> =
        images.iter().flat_map(|&i| (0..per_image).map(move |k| (i, k))).map(|(i, k)| g(i, 1000 + k)).collect();
    let [c, h, w] = lowlevel;
    std::fs::write(dir.join("lowlevel.npy"), npy::write_f32(&[n, c, h, w], &low))
}

/// Adds the low-level teacher to a targets directory: `convnext.npy` `[N, positions, width]` and
/// `convnext_aug.npy` `[N, augs, positions, width]` for `images` (in the order of
/// [`write_targets_npy`]), with values g(image, k) (`k` counts from 0 in the clean features and
/// from 100 000 in the augmented views).
pub fn write_teacher_npy(
    dir: &Path,
    images: &[u32],
    [positions, width]: [usize; 2],
    augs: usize,
    g: impl Fn(u32, usize) -> f32,
) -> std::io::Result<()> {
    let n = images.len();
    let per_image = positions * width;
    let clean: Vec<f32> =
        images.iter().flat_map(|&i| (0..per_image).map(move |k| (i, k))).map(|(i, k)| g(i, k)).collect();
    std::fs::write(dir.join("convnext.npy"), npy::write_f32(&[n, positions, width], &clean))?;
    let aug: Vec<f32> = images
        .iter()
        .flat_map(|&i| (0..augs * per_image).map(move |k| (i, k)))
        .map(|(i, k)| g(i, 100_000 + k))
        .collect();
    std::fs::write(dir.join("convnext_aug.npy"), npy::write_f32(&[n, augs, positions, width], &aug))
}
