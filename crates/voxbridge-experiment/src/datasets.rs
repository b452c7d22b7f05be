//! Datasets as `voxbridge data` makes and checks them: a simulated NSD from a preset (with its
//! overrides and an optional copy of the manifest registered elsewhere), and the verification of
//! every file of a dataset against its manifest. Progress goes to a callback; nothing is printed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use voxbridge_data::{MANIFEST_FILE, Manifest, OpenedManifest, Storage, VerifyReport, open_manifest};
use voxbridge_sim::{SimOptions, SimSpec, Simulated};

pub use voxbridge_sim::{OracleReport, Progress};

/// A simulated dataset to write.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulateRequest {
    /// Output directory or object-store URL.
    pub out: String,
    /// `tiny`, `small` or `nsd-scale` ([`SimSpec::PRESETS`]).
    pub preset: String,
    pub seed: u64,
    /// Dataset name (default `sim-<preset>-seed<seed>`).
    pub name: Option<String>,
    /// Also write the manifest here, with `root` pointing at `out`.
    pub manifest: Option<PathBuf>,
    /// Score the ideal decoder.
    pub oracle: bool,
    /// Only these subjects.
    pub subjects: Option<Vec<u8>>,
    /// At most this many sessions per subject.
    pub max_sessions: Option<u16>,
    /// The noise-ceiling SNR range as `LO,HI`, overriding the preset's.
    pub ncsnr: Option<String>,
    /// Representational noise κ, overriding the preset's.
    pub representational_noise: Option<f64>,
}

impl SimulateRequest {
    /// `preset` with `seed` into `out`, everything else the preset's, with the oracle.
    pub fn preset(out: String, preset: &str, seed: u64) -> Self {
        SimulateRequest {
            out,
            preset: preset.to_string(),
            seed,
            name: None,
            manifest: None,
            oracle: true,
            subjects: None,
            max_sessions: None,
            ncsnr: None,
            representational_noise: None,
        }
    }

    /// The preset with the request's subjects, sessions and noise applied.
    pub fn spec(&self) -> anyhow::Result<SimSpec> {
        let mut spec = SimSpec::preset(&self.preset)
            .with_context(|| format!("unknown preset `{}` (choose one of {:?})", self.preset, SimSpec::PRESETS))?
            .restrict(self.subjects.as_deref(), self.max_sessions);
        if let Some(range) = &self.ncsnr {
            spec.ncsnr_range =
                parse_range(range).with_context(|| format!("--ncsnr takes two numbers LO,HI, got `{range}`"))?;
        }
        if let Some(kappa) = self.representational_noise {
            spec.representational_noise = kappa;
        }
        if spec.subjects.is_empty() {
            bail!("--subjects {:?} selects none of the subjects 1..=8", self.subjects.as_deref().unwrap_or_default());
        }
        Ok(spec)
    }
}

/// `LO,HI`: exactly two numbers.
fn parse_range(text: &str) -> Option<[f64; 2]> {
    let parsed = text.split(',').map(|x| x.trim().parse::<f64>()).collect::<Result<Vec<_>, _>>().ok()?;
    match parsed.as_slice() {
        &[lo, hi] => Some([lo, hi]),
        _ => None,
    }
}

/// What the simulation reports while it works.
#[derive(Debug, Clone, Copy)]
pub enum SimulateProgress {
    /// About to start: `steps` progress steps follow (one per session, one for the targets).
    Start {
        steps: u64,
    },
    Step(Progress),
}

/// A written dataset.
#[derive(Debug)]
pub struct SimulateOutcome {
    pub simulated: Simulated,
    /// Where it was written.
    pub url: String,
    /// Bytes of all its files.
    pub bytes: u64,
    /// Where the registered copy of the manifest went.
    pub registered: Option<PathBuf>,
}

/// Simulates the dataset `request` asks for (refusing to overwrite one), then writes the
/// registered copy of its manifest if asked.
pub fn simulate(
    request: &SimulateRequest,
    progress: &mut dyn FnMut(SimulateProgress),
) -> anyhow::Result<SimulateOutcome> {
    let spec = request.spec()?;
    let out = Storage::open(&request.out)?;
    if out.exists(MANIFEST_FILE)? {
        bail!("{} already holds a dataset (manifest.toml exists); choose another --out or remove it", out.url());
    }
    let sessions: u64 = spec.subjects.iter().map(|s| s.sessions as u64).sum();
    progress(SimulateProgress::Start { steps: sessions + 1 });
    let started = Instant::now();
    let options = SimOptions { name: request.name.clone(), oracle: request.oracle };
    let simulated = voxbridge_sim::simulate(&spec, request.seed, out.clone(), &options, &mut |p| {
        progress(SimulateProgress::Step(p))
    })?;
    let m = &simulated.manifest;
    let bytes: u64 = m.files.iter().map(|f| f.bytes).sum();
    tracing::info!(
        name = %m.name, files = m.files.len(), mib = bytes as f64 / (1 << 20) as f64,
        seconds = started.elapsed().as_secs_f64(), "wrote {}/{}", out.url(), MANIFEST_FILE
    );
    if let Some(path) = &request.manifest {
        write_registered_manifest(path, m, &out)?;
    }
    Ok(SimulateOutcome { url: out.url(), bytes, registered: request.manifest.clone(), simulated })
}

/// A copy of the manifest kept elsewhere (e.g. `data-manifests/`) points back at the data.
fn write_registered_manifest(path: &Path, manifest: &Manifest, out: &Storage) -> anyhow::Result<()> {
    let mut copy = manifest.clone();
    copy.root = Some(out.url());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, copy.to_toml()).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// A dataset opened for verification.
pub struct DatasetCheck {
    opened: OpenedManifest,
}

impl DatasetCheck {
    /// Reads the manifest at `manifest` (path or URL).
    pub fn open(manifest: &str) -> anyhow::Result<Self> {
        Ok(DatasetCheck { opened: open_manifest(manifest)? })
    }

    /// Files the manifest lists.
    pub fn files(&self) -> usize {
        self.opened.manifest.files.len()
    }

    /// Where the manifest was read from.
    pub fn origin(&self) -> &str {
        &self.opened.origin
    }

    /// Checks every file (size, sha256, Parquet footer, schema, rows); `progress(done, total)`.
    pub fn run(&self, progress: impl FnMut(usize, usize)) -> VerifyReport {
        voxbridge_data::verify(&self.opened, progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_ranges_take_exactly_two_numbers() {
        assert_eq!(parse_range("0.1, 0.2"), Some([0.1, 0.2]));
        for bad in ["0.1,x", "0.1", "0.1,0.2,0.3", "0.1,,0.2"] {
            assert_eq!(parse_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_request_overrides_the_preset() {
        let mut request = SimulateRequest::preset("/tmp/x".into(), "tiny", 0);
        request.ncsnr = Some("0.5,0.7".into());
        request.representational_noise = Some(0.25);
        let spec = request.spec().unwrap();
        assert_eq!((spec.ncsnr_range, spec.representational_noise), ([0.5, 0.7], 0.25));
        request.ncsnr = Some("1".into());
        assert!(format!("{:#}", request.spec().unwrap_err()).contains("--ncsnr takes two numbers LO,HI, got `1`"));
        request.ncsnr = None;
        request.subjects = Some(vec![42]);
        assert!(request.spec().unwrap_err().to_string().contains("selects none"));
    }
}
