use super::*;
use crate::config::NSD_VOXELS;

/// voxels [3, 5], h 4, 1 block, 2 tokens × 4, released backbone, no low-level branch, no prior.
pub(super) fn small() -> MindEye2Config {
    MindEye2Config {
        voxels: vec![3, 5],
        hidden: 4,
        blocks: 1,
        clip_tokens: 2,
        clip_dim: 4,
        dropout: 0.0,
        backbone_mode: BackboneMode::Released,
        low_level: None,
        prior: None,
    }
}

#[test]
fn a_small_config_equals_the_hand_count() {
    let config = small();
    let bf16 = estimate_memory(&config, &MemoryPlan::one_gpu(&config, 2, ComputeDtype::Bf16));
    // Parameters: ridges 3·4+4 + 5·4+4 = 40; mixer_blocks1 2·4 + 2·(16+4) = 48 (never trained in
    // the released backbone); mixer_blocks2 2 + 2·2 = 6; backbone_linear 4·8 + 8 = 40;
    // clip_proj 3·(8 + 16 + 4) = 84. Held 218, trained 170.
    assert_eq!((bf16.params_held, bf16.params_trained), (218, 170));
    assert_eq!((bf16.weights, bf16.moments, bf16.gradients), (872, 1360, 680));
    // Saved, 2 rows (f32 elements | bf16 operands | bf16 copies of shared operands):
    //   backbone per row: voxels (mean 4) copy | mixer block over h = 4: norm 8 + GELU 4 +
    //   dropout 4 f32, 2 Linears 8 | backbone_linear 4 → ×2 rows: 32 | 24 | 8 → 128 + 48 + 16.
    //   clip_proj per row: 3 × (norm 16 + GELU 8 | Linear 8) → ×2: 144 | 48 → 576 + 96.
    //   losses: embedding 2·8 + gathered targets 2·8 + 4·2² = 48 f32 → 192.
    //   inputs: voxels 2·(3 + 5)/2 = 8 + CLIP targets 2·8 = 24 f32 → 96.
    let saved: Vec<u64> = bf16.saved.iter().map(|(_, b)| *b).collect();
    assert_eq!(saved, [192, 672, 192, 96]);
    // bf16 casts of the matmul weights: ridges 12 + 20, mixer_blocks2 2, backbone_linear 32,
    // clip_proj 48 = 114 values.
    assert_eq!(bf16.weight_casts, 228);
    // Largest saved f32 tensor: [2, 2·4] → 3 × 16 × 4 bytes.
    assert_eq!(bf16.backward_temporaries, 192);
    assert_eq!(bf16.early_gradients, 0);
    assert_eq!(bf16.largest_param, ("backbone_linear.weight".to_string(), 32));
    assert_eq!(bf16.optimizer_temporaries, 256);
    assert_eq!(bf16.allreduce_buffer, 0);
    // Phase 1: 1152 + 228 + 192 = 1572; phase 2: 680 + 256 = 936; peak 872 + 1360 + 1572.
    assert_eq!((bf16.activation_phase(), bf16.gradient_phase(), bf16.peak()), (1572, 936, 3804));
    assert_eq!((bf16.margin(), bf16.total()), (380, 4184));

    let fp32 = estimate_memory(&config, &MemoryPlan::one_gpu(&config, 2, ComputeDtype::F32));
    // Operands are 4 bytes and no weight is cast: backbone 128 + 96, clip_proj 576 + 192.
    let saved: Vec<u64> = fp32.saved.iter().map(|(_, b)| *b).collect();
    assert_eq!(saved, [224, 768, 192, 96]);
    assert_eq!(fp32.weight_casts, 0);
    assert_eq!((fp32.peak(), fp32.total()), (872 + 1360 + 1280 + 192, 4074));
}

#[test]
fn more_gpus_add_the_all_reduce_buffer_and_keep_their_own_ridges() {
    let config = small();
    let plan = MemoryPlan {
        subjects_per_gpu: vec![1],
        batch_per_gpu: 1,
        gpus: 2,
        ..MemoryPlan::one_gpu(&config, 2, ComputeDtype::Bf16)
    };
    let e = estimate_memory(&config, &plan);
    // Shared 178 held (130 trained) + subject 1's ridge 24.
    assert_eq!((e.params_held, e.params_trained), (202, 154));
    assert_eq!(e.allreduce_buffer, 4 * 130);
    assert_eq!(e.gradient_phase(), 4 * 154 + 4 * 130);
}

#[test]
fn the_released_config_at_batch_24_in_bf16_fits_80_gb_with_all_8_ridges() {
    let config = MindEye2Config::released(NSD_VOXELS.to_vec());
    let e = estimate_memory(&config, &MemoryPlan::one_gpu(&config, 24, ComputeDtype::Bf16));
    assert_eq!(e.params_held, 2_639_671_932);
    // mixer_blocks1 (134,283,264) and the rotary frequencies (16) get no moments.
    assert_eq!(e.params_trained, 2_639_671_932 - 134_283_264 - 16);
    assert!(e.fits(DEFAULT_CAPACITY_BYTES), "{e}");
    let gib = e.total() as f64 / GIB;
    assert!((50.0..74.5).contains(&gib), "{gib} GiB");
    // The prior's saved tensors are most of what is saved; with the fused prior ops, phase 2
    // (gradients and AdamW's temporaries) decides the peak at this batch.
    let prior: u64 = e.saved.iter().filter(|(n, _)| n.starts_with("prior")).map(|(_, b)| b).sum();
    assert!(prior as f64 > 0.7 * e.saved_total() as f64, "{e}");
    assert!(e.activation_phase() < e.gradient_phase(), "{e}");
    let report = e.to_string();
    assert!(report.contains("capacity 80 GB = 74.51 GiB: FITS (headroom"), "{report}");
    assert!(report.contains("bf16 weight casts kept by the matmuls"), "{report}");
}

#[test]
fn bf16_saves_activations_but_its_weight_casts_cost_about_as_much_at_batch_24() {
    // Softmax, norms and activations stay f32, so bf16 only halves matmul operands — and every
    // weight's bf16 cast is kept for backward (2 bytes a parameter).
    let config = MindEye2Config::released(NSD_VOXELS.to_vec());
    let at = |c| estimate_memory(&config, &MemoryPlan::one_gpu(&config, 24, c));
    let (bf16, fp32) = (at(ComputeDtype::Bf16), at(ComputeDtype::F32));
    assert!(bf16.saved_total() < fp32.saved_total());
    let saving = fp32.saved_total() - bf16.saved_total();
    assert!(bf16.weight_casts > saving, "casts {} vs saving {saving}", bf16.weight_casts);
    assert!(fp32.fits(DEFAULT_CAPACITY_BYTES), "{fp32}");
}

/// The plan of the first rank (the one with the most rows) of 7 subjects × 9 rows on `gpus`
/// GPUs with whole subjects per GPU (voxbridge's placement: the first `7 % gpus` get one more).
fn pretraining_rank0(gpus: usize) -> MemoryPlan {
    let subjects = 7usize.div_ceil(gpus);
    MemoryPlan {
        subjects_per_gpu: (0..subjects).collect(),
        batch_per_gpu: 9 * subjects,
        global_batch: 63,
        gpus,
        compute: ComputeDtype::Bf16,
        prior_ops: PriorOps::Fused,
    }
}

#[test]
fn pretraining_7_subjects_at_batch_63_in_bf16_fits_one_80_gb_gpu_with_the_fused_prior_ops() {
    // Subjects 2–8 at the paper's batch 63 (9 per subject) on one GPU.
    let config = MindEye2Config::released(NSD_VOXELS[1..].to_vec());
    let fused = estimate_memory(&config, &pretraining_rank0(1));
    assert_eq!(fused.params_held, 2_575_262_332);
    assert!(fused.fits(DEFAULT_CAPACITY_BYTES), "{fused}");
    assert!(fused.total() as f64 / GIB > 60.0, "{fused}");
    // What makes it fit: composed from burn's ops, autodiff keeps three [B, 32, 513, 514]
    // tensors per layer for the softmax, three copies per gain LayerNorm and four [B, 513, 6656]
    // SwiGLU tensors — about 114 GiB in all, activations more than twice the gradient phase.
    let composed = estimate_memory(&config, &MemoryPlan { prior_ops: PriorOps::Composed, ..pretraining_rank0(1) });
    assert!(!composed.fits(DEFAULT_CAPACITY_BYTES), "{composed}");
    assert!(composed.total() as f64 / GIB > 110.0, "{composed}");
    assert!(composed.report(DEFAULT_CAPACITY_BYTES).contains("DOES NOT FIT (short by"));
    assert!(composed.activation_phase() > 2 * composed.gradient_phase());
    // The difference is all in the prior's saved tensors (the fused attention's recompute in
    // backward costs more temporaries than the composed ops' largest tensor, not less).
    let prior =
        |e: &MemoryEstimate| e.saved.iter().filter(|(n, _)| n.starts_with("prior")).map(|(_, b)| b).sum::<u64>();
    assert!(prior(&composed) - prior(&fused) > 40 * (GIB as u64), "{composed}\n{fused}");
    assert!(fused.backward_temporaries >= composed.backward_temporaries);

    // Composed, subjects sharded over GPUs: 2 (4 + 3 subjects, 36 rows on the first) does not
    // fit, 3 (3 + 2 + 2, 27 rows) does.
    let composed_on = |gpus| MemoryPlan { prior_ops: PriorOps::Composed, ..pretraining_rank0(gpus) };
    assert!(!estimate_memory(&config, &composed_on(2)).fits(DEFAULT_CAPACITY_BYTES));
    let three = estimate_memory(&config, &composed_on(3));
    assert!(three.fits(DEFAULT_CAPACITY_BYTES), "{three}");
    assert_eq!(three.allreduce_buffer, 4 * (2_575_262_332 - 412_377_088 - 134_283_264 - 16));

    // Fused on one GPU: a global batch of 63 fits, 77 (11 per subject) does not.
    let batch = |b| estimate_memory(&config, &MemoryPlan::one_gpu(&config, b, ComputeDtype::Bf16));
    assert!(batch(63).fits(DEFAULT_CAPACITY_BYTES), "{}", batch(63));
    assert!(!batch(77).fits(DEFAULT_CAPACITY_BYTES), "{}", batch(77));
}

#[test]
fn the_report_states_units_and_verdict() {
    let config = small();
    let e = estimate_memory(&config, &MemoryPlan::one_gpu(&config, 2, ComputeDtype::Bf16));
    let fits = e.report(10_000);
    assert!(fits.contains("TOTAL per GPU") && fits.contains("GiB = 0.0 GB"), "{fits}");
    assert!(fits.contains("capacity 0 GB = 0.00 GiB: FITS (headroom"), "{fits}");
    assert!(e.fits(4184) && !e.fits(4183));
    assert!(e.report(4000).contains("DOES NOT FIT (short by"));
}

#[test]
fn precision_names_parse_and_print() {
    assert_eq!("bf16".parse::<ComputeDtype>(), Ok(ComputeDtype::Bf16));
    assert_eq!("fp32".parse::<ComputeDtype>(), Ok(ComputeDtype::F32));
    assert_eq!("f32".parse::<ComputeDtype>(), Ok(ComputeDtype::F32));
    assert!("fp16".parse::<ComputeDtype>().unwrap_err().contains("expected `fp32` or `bf16`"));
    assert_eq!((ComputeDtype::Bf16.to_string(), ComputeDtype::F32.bytes()), ("bf16".to_string(), 4));
}

#[test]
fn the_decoder_walk_matches_the_released_decoder() {
    let low = LowLevelConfig::mindeye2(4096);
    let ops = decoder_ops(&low);
    // conv_in, mid (2 ResNets of 2 norms + 2 convs, attention), 3 up blocks of 2 ResNets (two
    // channel changes add shortcuts), 2 upsampler convs, the output norm and conv.
    let convs = ops.iter().filter(|o| matches!(o, DecoderOp::Conv { .. })).count();
    assert_eq!(convs, 1 + 4 + 12 + 2 + 2 + 1);
    assert_eq!(ops.first(), Some(&DecoderOp::Conv { c_in: 64, c_out: 128, k: 3, area: 49 }));
    assert_eq!(ops.last(), Some(&DecoderOp::Conv { c_in: 32, c_out: 4, k: 3, area: 784 }));
    assert!(ops.contains(&DecoderOp::Attention { c: 128, area: 49 }));
}
