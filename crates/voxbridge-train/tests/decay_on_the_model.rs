//! The weight-decay rule on voxbridge's module paths exempts exactly the parameters that
//! MindEye2's rule exempts by their PyTorch names: checked element by element on the
//! `mindeye2-tiny-blurry` reference checkpoint (ridge, backbone, low-level branch and prior).

use burn::backend::Flex;
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use voxbridge_e2e::reference_dir as reference;
use voxbridge_model::{MindEye2, MindEye2Config, TensorMap};
use voxbridge_train::{DecayGroup, decay_group, mindeye2_weight_decay};

/// Elements per weight decay, by module path.
#[derive(Default)]
struct Tally {
    path: Vec<String>,
    decayed: usize,
    exempt: usize,
}

impl ModuleVisitor<Flex> for Tally {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Flex, D>>) {
        let n = param.val().shape().num_elements();
        if mindeye2_weight_decay(&self.path.join(".")) > 0.0 { self.decayed += n } else { self.exempt += n }
    }
}

#[test]
fn burn_paths_and_pytorch_names_give_the_same_groups() {
    let path = reference("mindeye2-tiny-blurry").join("model.safetensors");
    let weights = TensorMap::from_safetensors(&std::fs::read(&path).unwrap(), "model.safetensors").unwrap();
    let config = MindEye2Config::infer(&weights).unwrap();
    let model = MindEye2::<Flex>::from_tensors(&weights, &config, &Default::default()).unwrap();
    let mut tally = Tally::default();
    model.visit(&mut tally);

    let (mut decayed, mut exempt) = (0, 0);
    for (name, t) in weights.iter() {
        // Buffers are not parameters: the noise schedule and the (regenerated) rotary freqs.
        if name.contains("noise_scheduler") || name.ends_with("rotary_emb.freqs") {
            continue;
        }
        let n = t.data.len();
        match decay_group(name).expect("a model key") {
            DecayGroup::BackboneNoDecay | DecayGroup::PriorNoDecay => exempt += n,
            _ => decayed += n,
        }
    }
    assert!(exempt > 0 && decayed > 0);
    assert_eq!((tally.decayed, tally.exempt), (decayed, exempt));
}
