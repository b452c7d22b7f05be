//! Tests of `precision`: the emulated rounding against `half`'s bf16, the scope guard, and each
//! helper in each mode against plain burn ops (Flex: bf16 is Storage|Arithmetic there).

use burn::backend::{Autodiff, Flex};
use burn::nn::conv::Conv2dConfig;
use burn::nn::{LinearConfig, PaddingConfig2d};
use burn::tensor::{DType, Tensor, TensorData};

use super::*;

type F = Flex;

/// Deterministic N(0, 1)-ish values (sum of uniforms; the distribution does not matter here).
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = voxbridge_seed::SplitMix64::new(seed);
    (0..n).map(|_| ((0..4).map(|_| rng.next_f64()).sum::<f64>() - 2.0) as f32 * 1.7).collect()
}

fn tensor<const D: usize>(seed: u64, shape: [usize; D]) -> Tensor<F, D> {
    let n = shape.iter().product();
    Tensor::from_data(TensorData::new(values(seed, n), shape), &Default::default())
}

fn bits<const D: usize>(t: Tensor<F, D>) -> Vec<u32> {
    t.into_data().to_vec::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
}

fn bf16_bits(x: f32) -> u32 {
    half::bf16::from_f32(x).to_f32().to_bits()
}

/// Every f32 whose top 16 bits are any of the 65,536 patterns and whose low 16 bits are each of
/// `lows`: all exponents and signs, every bf16 significand, ties (0x8000) and their neighbours.
fn probe_bits(lows: &[u32]) -> Vec<u32> {
    (0u32..=0xffff).flat_map(|hi| lows.iter().map(move |lo| (hi << 16) | lo)).collect()
}

#[test]
fn emulated_rounding_is_round_to_nearest_even_bf16_for_every_normal_value() {
    let lows = [0x0000, 0x0001, 0x3fff, 0x7fff, 0x8000, 0x8001, 0xc000, 0xffff, 0x1234, 0xa5a5];
    let input = probe_bits(&lows);
    let x: Vec<f32> = input.iter().map(|&b| f32::from_bits(b)).collect();
    let n = x.len();
    let got = bits(round_to_bf16(Tensor::<F, 1>::from_data(TensorData::new(x.clone(), [n]), &Default::default())));
    // Overflow threshold of c = 65536·x + x: |x| ≥ 2^128 / 65537 (to within an ulp).
    let overflow = (2f64.powi(128) / 65537.0) as f32;
    let (mut normal, mut ties, mut big, mut subnormal_exact, mut subnormal_total) = (0, 0, 0, 0, 0);
    for ((&b, &v), &g) in input.iter().zip(&x).zip(&got) {
        if v.is_nan() {
            assert!(f32::from_bits(g).is_nan(), "NaN stays NaN");
        } else if v.is_infinite() || v.abs() >= overflow {
            // c overflows: inf − inf. bf16 itself would keep these finite up to 3.39e38.
            assert!(f32::from_bits(g).is_nan(), "{v:e} ({b:#010x}) gave {}", f32::from_bits(g));
            big += 1;
        } else if v != 0.0 && !v.is_normal() {
            subnormal_total += 1;
            subnormal_exact += usize::from(g == bf16_bits(v));
        } else {
            assert_eq!(
                g,
                bf16_bits(v),
                "{v:e} ({b:#010x}) rounds to {} not {}",
                f32::from_bits(g),
                f32::from_bits(bf16_bits(v))
            );
            normal += 1;
            ties += usize::from(b & 0xffff == 0x8000);
        }
    }
    assert!(normal > 600_000 && ties > 60_000, "{normal} normal values, {ties} ties");
    assert!(big > 0);
    // Subnormals: Flex computes them exactly (no flush to zero); c = 65537·x is normal for most
    // of them, so the split rounds to 8 significant bits of x's own magnitude, while bf16's
    // subnormals have a fixed quantum 2^-133: the results agree only where the two coincide.
    // GPUs may flush subnormals to zero anyway; activations never live there.
    assert!(subnormal_exact <= subnormal_total);
    println!(
        "round_to_bf16: {normal} normal values equal to half::bf16 (RNE), {ties} of them ties; {big} ≥ {overflow:e} \
         give NaN; subnormals equal in {subnormal_exact} of {subnormal_total}"
    );
}

#[test]
fn emulated_rounding_passes_the_gradient_straight_through() {
    type A = Autodiff<F>;
    let device = Default::default();
    let x = Tensor::<A, 1>::from_data(TensorData::new(values(1, 257), [257]), &device).require_grad();
    let weights = Tensor::<A, 1>::from_data(TensorData::new(values(2, 257), [257]), &device);
    let grads = (round_to_bf16(x.clone()) * weights.clone()).sum().backward();
    let grad = x.grad(&grads).unwrap();
    assert_eq!(grad.dtype(), DType::F32);
    assert_eq!(bits(grad), bits(weights.inner()), "d round(x) / dx = 1 exactly");
}

#[test]
fn the_guard_restores_the_previous_state_when_nested() {
    assert_eq!(current(), ComputeDtype::F32, "nothing entered: f32");
    {
        let _outer = Autocast::enter(ComputeDtype::Bf16);
        assert_eq!(current(), ComputeDtype::Bf16);
        {
            let _inner = Autocast::enter(ComputeDtype::F32);
            assert_eq!(current(), ComputeDtype::F32);
            let _innermost = Autocast::enter(ComputeDtype::Bf16Emulated);
            assert_eq!(current(), ComputeDtype::Bf16Emulated);
        }
        assert_eq!(current(), ComputeDtype::Bf16);
        assert_eq!(autocast(ComputeDtype::Bf16Emulated, current), ComputeDtype::Bf16Emulated);
        assert_eq!(current(), ComputeDtype::Bf16);
        // Per thread: another thread starts at f32.
        assert_eq!(std::thread::spawn(current).join().unwrap(), ComputeDtype::F32);
    }
    assert_eq!(current(), ComputeDtype::F32);

    // Dropping the outer guard first ends the inner scope too; the inner drop is then a no-op.
    let outer = Autocast::enter(ComputeDtype::Bf16);
    let inner = Autocast::enter(ComputeDtype::Bf16Emulated);
    drop(outer);
    assert_eq!(current(), ComputeDtype::F32);
    drop(inner);
    assert_eq!(current(), ComputeDtype::F32);

    // A panic inside the scope unwinds through the guard.
    let caught = std::panic::catch_unwind(|| {
        let _guard = Autocast::enter(ComputeDtype::Bf16);
        std::panic::resume_unwind(Box::new("inside")); // unwinds without the panic hook's message
    });
    assert!(caught.is_err());
    assert_eq!(current(), ComputeDtype::F32);
}

#[test]
fn resolve_picks_native_bf16_where_the_backend_has_it() {
    let device = Default::default();
    assert_eq!(resolve::<F>(false, &device), ComputeDtype::F32);
    assert!(F::supports_dtype(&device, DType::BF16));
    assert_eq!(resolve::<F>(true, &device), ComputeDtype::Bf16);
    assert_eq!(resolve::<Autodiff<F>>(true, &device), ComputeDtype::Bf16);
    assert_eq!(ComputeDtype::Bf16Emulated.to_string(), "bf16-emulated");
}

fn convs() -> Vec<Conv2d<F>> {
    let device = Default::default();
    let conv = |k: usize, padding: PaddingConfig2d, bias: bool, stride: usize| {
        Conv2dConfig::new([6, 5], [k, k])
            .with_padding(padding)
            .with_bias(bias)
            .with_stride([stride, stride])
            .init::<F>(&device)
    };
    vec![
        conv(3, PaddingConfig2d::Explicit(1, 1, 1, 1), true, 1),
        conv(1, PaddingConfig2d::Explicit(0, 0, 0, 0), false, 1),
        conv(3, PaddingConfig2d::Same, true, 2),
        conv(2, PaddingConfig2d::Same, true, 1),
        conv(3, PaddingConfig2d::Valid, true, 1),
        conv(3, PaddingConfig2d::Explicit(2, 0, 1, 1), true, 1),
    ]
}

#[test]
fn f32_mode_is_exactly_the_plain_computation() {
    let device = Default::default();
    let layer = LinearConfig::new(24, 7).init::<F>(&device);
    let no_bias = LinearConfig::new(24, 7).with_bias(false).init::<F>(&device);
    for mode in [None, Some(ComputeDtype::F32)] {
        let _guard = mode.map(Autocast::enter);
        assert_eq!(bits(linear(&layer, tensor(3, [24]))), bits(layer.forward(tensor(3, [24]))));
        assert_eq!(bits(linear(&layer, tensor(4, [5, 24]))), bits(layer.forward(tensor(4, [5, 24]))));
        let x = tensor(5, [2, 24, 3]).swap_dims(1, 2); // strided input
        assert_eq!(bits(linear(&no_bias, x.clone())), bits(no_bias.forward(x)));
        let (a, b) = (tensor(6, [2, 3, 9, 8]), tensor(7, [2, 3, 8, 4]));
        assert_eq!(bits(matmul(a.clone(), b.clone())), bits(a.matmul(b)));
        for conv in convs() {
            let x = tensor(8, [2, 6, 9, 9]);
            assert_eq!(bits(conv2d(&conv, x.clone())), bits(conv.forward(x)));
        }
    }
}

/// `max |got − want| / max |want|`.
fn rel_dev<const D: usize>(got: Tensor<F, D>, want: Tensor<F, D>) -> f32 {
    let scale = want.clone().abs().max().into_scalar();
    (got - want).abs().max().into_scalar() / scale
}

#[test]
fn bf16_modes_return_f32_within_bf16_rounding_of_the_f32_result() {
    let device = Default::default();
    let layer = LinearConfig::new(24, 7).init::<F>(&device);
    let x3 = tensor(5, [2, 24, 3]).swap_dims(1, 2);
    let (a, b) = (tensor(6, [2, 3, 9, 8]), tensor(7, [2, 3, 8, 4]));
    let want_linear = layer.forward(x3.clone());
    let want_matmul = a.clone().matmul(b.clone());
    let convs = convs();
    let want_conv: Vec<_> = convs.iter().map(|c| c.forward(tensor(8, [2, 6, 9, 9]))).collect();
    let mut per_mode = Vec::new();
    for mode in [ComputeDtype::Bf16, ComputeDtype::Bf16Emulated] {
        let _guard = Autocast::enter(mode);
        let got_linear = linear(&layer, x3.clone());
        let got_matmul = matmul(a.clone(), b.clone());
        let got_conv: Vec<_> = convs.iter().map(|c| conv2d(c, tensor(8, [2, 6, 9, 9]))).collect();
        assert_eq!(got_linear.dtype(), DType::F32);
        assert_eq!(got_matmul.dtype(), DType::F32);
        assert!(got_conv.iter().all(|t| t.dtype() == DType::F32));
        for (got, want) in got_conv.iter().zip(&want_conv) {
            assert_eq!(got.dims(), want.dims(), "{mode}: conv padding as Conv2d::forward");
        }
        // Each operand rounds by ≤ 2^-8 relative, the result by ≤ 2^-8 again: an entry of a
        // product of K terms moves by ≤ (2·2^-8 + 2^-8)·Σ|a||b| — a few 2^-8 of the output's
        // scale for these random operands (measured 2.5e-3..4.2e-3).
        let mut devs = vec![rel_dev(got_linear.clone(), want_linear.clone())];
        devs.push(rel_dev(got_matmul.clone(), want_matmul.clone()));
        devs.extend(got_conv.iter().zip(&want_conv).map(|(g, w)| rel_dev(g.clone(), w.clone())));
        println!("{mode}: relative deviations from f32 (linear, matmul, convs): {devs:?}");
        for (i, dev) in devs.iter().enumerate() {
            assert!(*dev > 0.0 && *dev < 3.0 * 2f32.powi(-8), "{mode} op {i}: relative deviation {dev:e}");
        }
        per_mode.push((bits(got_linear), bits(got_matmul), got_conv.into_iter().map(bits).collect::<Vec<_>>()));
    }
    // Flex's bf16 matmul and convolution convert to f32, run the f32 kernel and round the result:
    // the emulation is then the same arithmetic, bit for bit.
    assert_eq!(per_mode[0], per_mode[1], "Bf16 and Bf16Emulated agree exactly on Flex");
}
