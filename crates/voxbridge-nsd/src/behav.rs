//! MindEye2's behaviour rows (`behav.npy`, 1×17; spec §3) and the webdataset tars that carry
//! them (`wds/subj0X/train/{session}.tar`, `wds/subj0X/new_test/0.tar`).

use std::io::Read;
use std::path::Path;

use crate::{ImportError, npy};

/// Columns of a behaviour row this import uses.
pub mod col {
    pub const IMAGE: usize = 0;
    pub const SUBJECT: usize = 1;
    pub const SESSION: usize = 2;
    pub const RUN: usize = 3;
    pub const TRIAL: usize = 4;
    pub const GLOBAL_TRIAL: usize = 5;
    pub const IS_SHARED1000: usize = 16;
    pub const COUNT: usize = 17;
    /// Names, for errors.
    pub const NAMES: [&str; COUNT] = [
        "COCO/NSD-73k idx",
        "subject",
        "session",
        "run",
        "trial",
        "global trial",
        "time",
        "ISOLD",
        "ISCORRECT",
        "RT",
        "CHANGEMIND",
        "ISOLDCURRENT",
        "ISCORRECTCURRENT",
        "TOTAL1",
        "TOTAL2",
        "BUTTON",
        "IS_SHARED1000",
    ];
}

/// One trial as the behaviour table describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BehavRow {
    /// NSD 73k image index (0-based).
    pub image: u32,
    pub subject: u8,
    pub session: u16,
    pub run: u16,
    pub trial: u16,
    /// Row of the trial in the betas file.
    pub global_trial: u32,
    pub shared1000: bool,
}

/// Parses one `behav.npy` (1×17, −1 = missing); `what` names the file and member in errors.
pub fn parse_behav(bytes: &[u8], what: &str) -> Result<BehavRow, ImportError> {
    let err = |message: String| ImportError::new(what, message);
    let array = npy::parse(bytes).map_err(err)?;
    if array.values.len() != col::COUNT || array.shape.iter().product::<usize>() != col::COUNT {
        return Err(err(format!("shape {:?}; a behaviour row is 1×{}", array.shape, col::COUNT)));
    }
    let v = &array.values;
    let field = |c: usize, max: f64| -> Result<f64, ImportError> {
        let x = v[c];
        if x < 0.0 || x.fract() != 0.0 || x > max {
            let why = if x == -1.0 { "missing (−1)".to_string() } else { format!("{x} is not a valid value") };
            return Err(err(format!("column {c} ({}): {why}", col::NAMES[c])));
        }
        Ok(x)
    };
    Ok(BehavRow {
        image: field(col::IMAGE, f64::from(u32::MAX))? as u32,
        subject: field(col::SUBJECT, 255.0)? as u8,
        session: field(col::SESSION, f64::from(u16::MAX))? as u16,
        run: field(col::RUN, f64::from(u16::MAX))? as u16,
        trial: field(col::TRIAL, f64::from(u16::MAX))? as u16,
        global_trial: field(col::GLOBAL_TRIAL, f64::from(u32::MAX))? as u32,
        shared1000: v[col::IS_SHARED1000] == 1.0,
    })
}

/// The behaviour rows of a webdataset tar, by sample key, in archive order. Members other than
/// `<key>.behav.npy` are skipped. A tar cut short (mid-member, or without its end-of-archive
/// blocks) is an error naming the file.
pub fn read_tar(path: &Path) -> Result<Vec<(String, BehavRow)>, ImportError> {
    let file = path.display().to_string();
    let err = |message: String| ImportError::new(&file, message);
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
    // Every tar writer ends the archive with two zero blocks (then pads to its record size).
    if bytes.len() < 1024 || bytes.len() % 512 != 0 || bytes[bytes.len() - 1024..].iter().any(|&b| b != 0) {
        return Err(err(format!(
            "truncated tar: {} bytes without the end-of-archive blocks (re-download or re-create it)",
            bytes.len()
        )));
    }
    let mut archive = tar::Archive::new(bytes.as_slice());
    let mut rows = Vec::new();
    let entries = archive.entries().map_err(|e| err(format!("not a tar: {e}")))?;
    for (index, entry) in entries.enumerate() {
        let mut entry = entry.map_err(|e| err(format!("member {index}: {e} (truncated or corrupt tar)")))?;
        let name = entry.path().map_err(|e| err(format!("member {index}: bad name: {e}")))?.display().to_string();
        let Some(key) = name.strip_suffix(".behav.npy") else { continue };
        if key.ends_with("_behav") || key.contains('.') {
            continue; // past_behav / future_behav / olds_behav are `<key>.past_behav.npy`, …
        }
        let mut member = Vec::new();
        entry.read_to_end(&mut member).map_err(|e| err(format!("member {name}: {e} (truncated tar)")))?;
        rows.push((key.to_string(), parse_behav(&member, &format!("{file}: member {name}"))?));
    }
    Ok(rows)
}
