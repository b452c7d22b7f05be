//! Which backend a run computes on, chosen once at the top: [`dispatch`] turns a
//! [`DeviceSpec`] into a concrete burn backend and runs a [`BackendTask`] generic over it. Below
//! that point every stage is generic over `B: AutodiffBackend`; nothing else branches on the
//! device.
//!
//! | device    | backend                          | cargo feature | gradients between ranks          |
//! |-----------|----------------------------------|---------------|----------------------------------|
//! | `cpu`     | `Autodiff<Flex>`                 | (always)      | host memory, TCP ring            |
//! | `wgpu`    | `Autodiff<Wgpu>` (fusion on)     | `wgpu`        | one device→host copy per bucket  |
//! | `cuda[:N]`| `Autodiff<Cuda>` (fusion on)     | `cuda`        | NCCL on device memory (`nccl`)   |

use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;
use voxbridge_collective::Collective;
use voxbridge_config::{DeviceSpec, Precision};
use voxbridge_train::device_comm::{DeviceCollective, HostStaged};

/// The CPU training backend (burn's `flex`).
pub type CpuBackend = burn::backend::Flex;
/// [`CpuBackend`] with autodiff.
pub type CpuTrain = burn::backend::Autodiff<CpuBackend>;

/// Builds the collective a data-parallel rank moves tensors with, given the ranks' control
/// collective (every rank calls it at the same point).
type DeviceCommFactory<B> =
    Box<dyn Fn(&mut dyn Collective) -> anyhow::Result<Box<dyn DeviceCollective<<B as AutodiffBackend>::InnerBackend>>>>;

/// Memory a device holds, as its backend reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DeviceMemory {
    /// Bytes in live tensors now (cubecl) or the process's resident set (CPU).
    pub in_use: u64,
    /// The high-water mark: bytes the memory pools hold (cubecl pools rarely shrink, so this
    /// bounds the peak of live tensors) or the process's peak resident set (CPU, `VmHWM`).
    pub peak: u64,
    /// Where the figures come from.
    pub source: &'static str,
}

/// A backend chosen for a run: its device, the precision of its matmuls and how its tensors
/// reach other ranks.
pub struct Engine<B: AutodiffBackend> {
    pub spec: DeviceSpec,
    pub device: B::Device,
    pub precision: Precision,
    device_comm: DeviceCommFactory<B>,
    memory: fn(&B::Device) -> Option<DeviceMemory>,
}

impl<B: AutodiffBackend> std::fmt::Debug for Engine<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("spec", &self.spec)
            .field("backend", &B::name(&self.device))
            .field("precision", &self.precision)
            .finish()
    }
}

impl<B: AutodiffBackend> Engine<B> {
    /// An engine whose ranks exchange tensors through host memory.
    pub fn host_staged(spec: DeviceSpec, device: B::Device, precision: Precision) -> Self {
        Engine {
            spec,
            device,
            precision,
            device_comm: Box::new(|_| Ok(Box::new(HostStaged::default()))),
            memory: |_| process_memory(),
        }
    }

    /// Reads device memory with `probe` (the CPU engine reads the process's).
    pub fn with_memory(mut self, probe: fn(&B::Device) -> Option<DeviceMemory>) -> Self {
        self.memory = probe;
        self
    }

    /// The device's memory now, if the backend reports it.
    pub fn memory(&self) -> Option<DeviceMemory> {
        (self.memory)(&self.device)
    }

    /// The collective this rank moves gradients and embeddings with (see
    /// [`voxbridge_train::device_comm`]).
    pub fn device_comm(
        &self,
        control: &mut dyn Collective,
    ) -> anyhow::Result<Box<dyn DeviceCollective<B::InnerBackend>>> {
        (self.device_comm)(control)
    }

    /// The dtype of matmuls and convolutions for `precision` on this device: bf16 where the
    /// backend has bf16 arithmetic, bf16 rounding in f32 where it has not (wgpu), f32 for fp32.
    pub fn compute_dtype(&self) -> voxbridge_model::precision::ComputeDtype {
        voxbridge_model::precision::resolve::<B>(self.precision == Precision::Bf16, &self.device)
    }

    /// Waits for the device's queued work (timing).
    pub fn sync(&self) {
        if let Err(e) = <B as burn::tensor::backend::Backend>::sync(&self.device) {
            tracing::warn!("device sync failed: {e:?}");
        }
    }
}

/// Work generic over the backend, run by [`dispatch`] on the one the device asks for.
pub trait BackendTask {
    type Output;
    fn run<B: AutodiffBackend>(self, engine: Engine<B>) -> anyhow::Result<Self::Output>;
}

/// Runs `task` on the backend of `spec`. A device this binary was built without is an error
/// naming the cargo feature to build with.
pub fn dispatch<T: BackendTask>(spec: DeviceSpec, precision: Precision, task: T) -> anyhow::Result<T::Output> {
    match spec {
        DeviceSpec::Cpu => {
            install_fused_ops::<CpuBackend>();
            voxbridge_cpu::install();
            task.run(Engine::<CpuTrain>::host_staged(spec, Default::default(), precision))
        }
        #[cfg(feature = "wgpu")]
        DeviceSpec::Wgpu => {
            install_fused_ops::<burn::backend::Wgpu>();
            let device = burn::backend::wgpu::WgpuDevice::DefaultDevice;
            let engine = Engine::<burn::backend::Autodiff<burn::backend::Wgpu>>::host_staged(spec, device, precision)
                .with_memory(cubecl_memory::<burn::backend::wgpu::WgpuRuntime>);
            task.run(engine)
        }
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(index) => {
            prepare_cuda_process().map_err(|e| anyhow::anyhow!("--device {spec}: {e}"))?;
            install_fused_ops::<burn::backend::Cuda>();
            task.run(cuda_engine(index, precision))
        }
        #[allow(unreachable_patterns)] // every device is built in with all features
        other => Err(not_built_in(other)),
    }
}

/// Registers the prior's fused attention and SwiGLU ops (`voxbridge_model::fused`) for training
/// on `Autodiff<I>`: only the concrete backend type can select them.
pub fn install_fused_ops<I: burn::tensor::backend::Backend>() {
    voxbridge_model::fused::install_autodiff::<I, burn::backend::autodiff::checkpoint::strategy::NoCheckpointing>();
}

/// The error for a device whose backend this binary lacks.
pub fn not_built_in(spec: DeviceSpec) -> anyhow::Error {
    let feature = spec.feature().unwrap_or("cpu");
    anyhow::anyhow!(
        "--device {spec}: this binary was built without the `{feature}` feature; build it with \
         `cargo build --release -p voxbridge-cli --features {feature}` (and `-p voxbridge-worker --features {feature}` \
         for distributed runs)"
    )
}

/// Whether this binary can run on `spec`.
pub fn is_built_in(spec: DeviceSpec) -> bool {
    match spec {
        DeviceSpec::Cpu => true,
        DeviceSpec::Wgpu => cfg!(feature = "wgpu"),
        DeviceSpec::Cuda(_) => cfg!(feature = "cuda"),
    }
}

/// Finds NVRTC, NCCL and the CUDA headers where the machine keeps them (versioned names,
/// PyTorch's wheels) and, when this process's environment cannot load them, re-executes the
/// binary once with one that can (glibc reads `LD_LIBRARY_PATH` at start-up only). Call it
/// first in `main` (before any file is written or socket opened); `dispatch` calls it again,
/// which is then a no-op. An error names the missing library and every place looked.
#[cfg(feature = "cuda")]
pub fn prepare_cuda_process() -> Result<(), String> {
    let needs = if cfg!(feature = "nccl") { voxbridge_gpu::Needs::CUDA_NCCL } else { voxbridge_gpu::Needs::CUDA };
    voxbridge_gpu::ensure_cuda_environment(needs).map(|_| ()).map_err(|e| e.to_string())
}

#[cfg(feature = "cuda")]
fn cuda_engine(index: usize, precision: Precision) -> Engine<burn::backend::Autodiff<burn::backend::Cuda>> {
    let spec = DeviceSpec::Cuda(index);
    let device = burn::backend::cuda::CudaDevice::new(index);
    #[cfg(feature = "nccl")]
    {
        let device_comm: DeviceCommFactory<burn::backend::Autodiff<burn::backend::Cuda>> =
            Box::new(move |control: &mut dyn Collective| {
                let nccl = voxbridge_train::nccl_device::NcclDevice::new(control, index, NCCL_DEADLINE)?;
                Ok(Box::new(nccl) as Box<dyn DeviceCollective<burn::backend::Cuda>>)
            });
        Engine { spec, device, precision, device_comm, memory: |_| None }.with_memory(cuda_memory)
    }
    #[cfg(not(feature = "nccl"))]
    Engine::host_staged(spec, device, precision).with_memory(cuda_memory)
}

#[cfg(feature = "cuda")]
fn cuda_memory(device: &burn::backend::cuda::CudaDevice) -> Option<DeviceMemory> {
    cubecl_memory::<burn::cubecl::cuda::CudaRuntime>(device)
}

/// A cubecl runtime's memory pools (of the calling thread's stream: call it from the thread
/// that trains).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn cubecl_memory<R: burn::cubecl::Runtime>(device: &R::Device) -> Option<DeviceMemory> {
    let usage = R::client(device).memory_usage().ok()?;
    Some(DeviceMemory { in_use: usage.bytes_in_use, peak: usage.bytes_reserved, source: "cubecl memory pools" })
}

/// This process's resident set now and at its peak (Linux `/proc/self/status`).
pub fn process_memory() -> Option<DeviceMemory> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    };
    Some(DeviceMemory { in_use: field("VmRSS:")?, peak: field("VmHWM:")?, source: "process resident set" })
}

/// Deadline of one NCCL operation before the watchdog aborts the communicator.
#[cfg(all(feature = "cuda", feature = "nccl"))]
const NCCL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

#[cfg(test)]
mod tests {
    use super::*;

    struct Name;
    impl BackendTask for Name {
        type Output = String;
        fn run<B: AutodiffBackend>(self, engine: Engine<B>) -> anyhow::Result<String> {
            Ok(B::name(&engine.device))
        }
    }

    #[test]
    fn the_cpu_is_always_built_in() {
        assert!(is_built_in(DeviceSpec::Cpu));
        let name = dispatch(DeviceSpec::Cpu, Precision::Fp32, Name).unwrap();
        assert!(name.contains("flex"), "{name}");
    }

    #[test]
    fn a_device_built_without_names_the_feature_to_build_with() {
        for spec in [DeviceSpec::Cuda(0), DeviceSpec::Wgpu] {
            if is_built_in(spec) {
                continue;
            }
            let error = dispatch(spec, Precision::Fp32, Name).unwrap_err().to_string();
            let feature = spec.feature().unwrap();
            assert!(error.contains(&format!("--features {feature}")), "{error}");
            assert!(error.contains(&format!("--device {spec}")), "{error}");
        }
    }
}
