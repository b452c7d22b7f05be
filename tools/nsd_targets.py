#!/usr/bin/env python3
"""Per-image targets for `voxbridge data import-nsd --targets`, computed from NSD's images.

Writes one HDF5 file with the arrays voxbridge's importer reads, keyed by the NSD 73k index:

  image_id     [N]               int64    73k index (0-based, as behaviour column 0)
  clip_tokens  [N, 256, 1664]    float32  OpenCLIP ViT-bigG-14 (laion2b_s39b_b160k) patch tokens
  lowlevel     [N, 4, 28, 28]    float32  SD image-variation VAE latent × 0.18215   (--vae)
  captions     [N, K, 768]       float32  CLIP ViT-L-14 text embeddings of K captions (--captions)
  convnext     [N, 49, 512]      float32  ConvNeXt-XL VICRegL maps-projector features  (--convnext)
  convnext_aug [N, A, 49, 512]   float32  the same of A fixed augmentations of each image

It follows MindEye2's released code (spec §1.5) so the targets match the released checkpoints:
  * CLIP: sgm's FrozenOpenCLIPImageEmbedder(output_tokens=True, only_tokens=True) with
    open_clip_torch==2.24.0: the 256 patch tokens of the visual tower, before the 1664→1280
    projection, CLS dropped. Training fed images in [0, 1] to an embedder that maps [-1, 1] to
    [0, 1], so CLIP saw them squashed into [0.5, 1] before normalisation; that quirk is kept
    (the released models were trained on it). `--no-squash` feeds images as CLIP expects.
  * VAE: diffusers AutoencoderKL (blocks 128/256/512/512, 2 layers per block) loaded from
    `sd_image_var_autoenc.pth`; latent = encode(2·img − 1).latent_dist.mode() × 0.18215.
  * ConvNeXt teacher of the low-level soft contrastive loss (spec §1.5, §2.1): MindEye2's
    `ConvnextXL` (src/autoencoder/convnext.py of the MindEyeV2 repository, passed with
    --convnext-code; not vendored here) loaded from `convnext_xlarge_alpha0.75_fullckpt.pth`;
    features = the second output of cnx((img − mean)/std), mean (0.485, 0.456, 0.406), std
    (0.228, 0.224, 0.225) (0.228 as released), [B, 49, 512], stored raw (training l2-normalises
    each of the 49 rows, as Train.ipynb does).
    DEVIATION: Train.ipynb computes the augmented teacher on a fresh random augmentation of every
    image at every step (kornia: ColorJitter(0.4, 0.4, 0.2, 0.1, p=0.8), RandomGrayscale(p=0.1),
    RandomSolarize(p=0.1), RandomResizedCrop(224, scale=(0.9, 0.9), ratio=(1, 1), p=1)).
    voxbridge cannot run ConvNeXt while training, so this script stores A (--convnext-augs,
    default 2) augmentations per image, each drawn with torch's generator seeded from
    (--convnext-seed, image id, view) — the same views whatever the batch size or a resume —
    and training picks one of them per image and step.

Requirements (not installed by voxbridge; a GPU makes bigG practical — about 1.9 B parameters):
  pip install torch open_clip_torch==2.24.0 diffusers==0.23.0 h5py numpy
  (+ kornia and MindEyeV2's src/ for --convnext)

Usage:
  python tools/nsd_targets.py --images coco_images_224_float16.hdf5 --out nsd_targets.h5 \
      [--vae sd_image_var_autoenc.pth] [--captions captions.json] [--ids ids.npy] \
      [--convnext convnext_xlarge_alpha0.75_fullckpt.pth --convnext-code MindEyeV2/src] \
      [--batch 32] [--device cuda]
  voxbridge data import-nsd --subject 1 ... --targets nsd_targets.h5

`--images` is NSD's `coco_images_224_float16.hdf5` (dataset `images`, [73000, 3, 224, 224],
float16 in [0, 1]). `--ids` (a .npy or a text file of 73k indices) restricts the images; the
default is all 73000 (about 125 GB of float32 tokens; the file is written batch by batch, so
memory stays at one batch). An interrupted run continues where it stopped when started again
with the same arguments (the file records how many rows are complete). The ConvNeXt features
keep their own count, so `--convnext` can also be added to a finished file later (the other
arrays are then not recomputed). `--captions` is a JSON
object {"<73k index>": ["caption", ...]} (e.g. from COCO's annotations through
nsd_stim_info_merged.csv's cocoId); each image's first K (--captions-per-image, default 5)
captions are embedded, repeating the last when an image has fewer.
"""

import argparse
import json
import sys

import numpy as np

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VAE_SCALE = 0.18215
# ConvnextXL's input normalisation as MindEye2 released it (0.228, not 0.229).
CNX_MEAN = (0.485, 0.456, 0.406)
CNX_STD = (0.228, 0.224, 0.225)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", required=True, help="coco_images_224_float16.hdf5")
    p.add_argument("--out", required=True, help="output .h5 file")
    p.add_argument("--ids", help=".npy or text file of 73k indices (default: every image)")
    p.add_argument("--vae", help="sd_image_var_autoenc.pth: also write `lowlevel`")
    p.add_argument("--captions", help="JSON {73k index: [captions]}: also write `captions`")
    p.add_argument("--captions-per-image", type=int, default=5)
    p.add_argument("--convnext", help="convnext_xlarge_alpha0.75_fullckpt.pth: also write `convnext`, `convnext_aug`")
    p.add_argument("--convnext-code", help="directory holding autoencoder/convnext.py (MindEyeV2's src/)")
    p.add_argument("--convnext-augs", type=int, default=2, help="augmented views stored per image")
    p.add_argument("--convnext-seed", type=int, default=0, help="seed of the augmentations")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--device", default="cuda")
    p.add_argument("--no-squash", action="store_true",
                   help="feed CLIP images in [0, 1] as it expects (differs from MindEye2's targets)")
    return p.parse_args(argv)


def read_ids(path, total):
    if path is None:
        return np.arange(total, dtype=np.int64)
    ids = np.load(path) if path.endswith(".npy") else np.loadtxt(path, dtype=np.int64, ndmin=1)
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if ids.size == 0 or ids.min() < 0 or ids.max() >= total:
        sys.exit(f"{path}: image ids must lie in 0..{total - 1}")
    if len(np.unique(ids)) != len(ids):
        sys.exit(f"{path}: an image id appears twice")
    return ids


class BigGTokens:
    """sgm's FrozenOpenCLIPImageEmbedder(output_tokens=True, only_tokens=True), open_clip 2.24.0."""

    def __init__(self, device, squash):
        import open_clip
        import torch

        if open_clip.__version__ != "2.24.0":
            print(f"warning: open_clip {open_clip.__version__}; MindEye2's targets come from 2.24.0 "
                  "(whether ln_post is applied to the tokens changed between versions)", file=sys.stderr)
        model, _, _ = open_clip.create_model_and_transforms(
            "ViT-bigG-14", pretrained="laion2b_s39b_b160k", device="cpu")
        self.visual = model.visual.eval().requires_grad_(False).to(device)
        self.visual.output_tokens = True
        self.mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)
        self.squash = squash

    def __call__(self, img):
        # img: [B, 3, 224, 224] in [0, 1]. The embedder maps [-1, 1] → [0, 1]; MindEye2 passed
        # [0, 1], so the images CLIP saw lay in [0.5, 1].
        x = (img + 1.0) / 2.0 if self.squash else img
        x = (x - self.mean) / self.std
        _, tokens = self.visual(x)  # [B, 256, 1664], before the projection, CLS dropped
        return tokens


class VaeLatents:
    def __init__(self, path, device):
        import torch
        from diffusers import AutoencoderKL

        vae = AutoencoderKL(
            down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4,
            block_out_channels=[128, 256, 512, 512],
            layers_per_block=2,
            sample_size=256,
        )
        vae.load_state_dict(torch.load(path, map_location="cpu"))
        self.vae = vae.eval().requires_grad_(False).to(device)

    def __call__(self, img):
        return self.vae.encode(2.0 * img - 1.0).latent_dist.mode() * VAE_SCALE  # [B, 4, 28, 28]


class CaptionEmbeddings:
    """CLIP ViT-L-14 (OpenAI) text embeddings, as Mind Reader's caption targets."""

    def __init__(self, path, per_image, device):
        import open_clip

        with open(path) as f:
            self.captions = {int(k): v for k, v in json.load(f).items()}
        model, _, _ = open_clip.create_model_and_transforms("ViT-L-14", pretrained="openai", device="cpu")
        self.model = model.eval().requires_grad_(False).to(device)
        self.tokenizer = open_clip.get_tokenizer("ViT-L-14")
        self.per_image = per_image
        self.device = device

    def __call__(self, ids):
        texts = []
        for i in ids:
            caps = self.captions.get(int(i))
            if not caps:
                sys.exit(f"captions: image {int(i)} has no caption")
            caps = list(caps[: self.per_image])
            texts += caps + [caps[-1]] * (self.per_image - len(caps))
        emb = self.model.encode_text(self.tokenizer(texts).to(self.device))
        return emb.view(len(ids), self.per_image, -1)


class ConvnextTeacher:
    """MindEye2's ConvnextXL (VICRegL, maps projector): clean and augmented [B, 49, 512] features."""

    def __init__(self, ckpt, code, augs, seed, device):
        import torch
        from kornia.augmentation import ColorJitter, RandomGrayscale, RandomResizedCrop, RandomSolarize
        from kornia.augmentation.container import AugmentationSequential

        if code:
            sys.path.insert(0, code)
        try:
            from autoencoder.convnext import ConvnextXL
        except ImportError as e:
            sys.exit(f"--convnext needs MindEyeV2's src/autoencoder/convnext.py (pass --convnext-code): {e}")
        self.model = ConvnextXL(ckpt).eval().requires_grad_(False).to(device)
        # Train.ipynb's blur_augs.
        self.augment = AugmentationSequential(
            ColorJitter(0.4, 0.4, 0.2, 0.1, p=0.8),
            RandomGrayscale(p=0.1),
            RandomSolarize(p=0.1),
            RandomResizedCrop((224, 224), scale=(0.9, 0.9), ratio=(1.0, 1.0), p=1.0),
            data_keys=["input"],
        )
        self.mean = torch.tensor(CNX_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(CNX_STD, device=device).view(1, 3, 1, 1)
        if augs < 1:
            sys.exit("--convnext-augs must be at least 1")
        self.augs, self.seed = augs, seed

    def features(self, img):
        _, maps = self.model((img - self.mean) / self.std)
        return maps.reshape(img.shape[0], 49, 512) if maps.dim() != 3 else maps  # [B, 49, 512]

    def views(self, img, ids):
        """[B, A, 49, 512]: view a of image i is augmented with the generator seeded from
        (seed, image id, a), so it does not depend on the batch or on a resume."""
        import torch

        state = torch.random.get_rng_state()
        cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        out = []
        for a in range(self.augs):
            augmented = []
            for k, i in enumerate(ids):
                torch.manual_seed((self.seed * 1_000_003 + int(i)) * 64 + a)
                augmented.append(self.augment(img[k:k + 1]))
            out.append(self.features(torch.cat(augmented)))
        torch.random.set_rng_state(state)
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)
        return torch.stack(out, dim=1)


def main(argv=None):
    args = parse_args(argv)
    import h5py
    import torch

    source = h5py.File(args.images, "r")["images"]
    ids = read_ids(args.ids, source.shape[0])
    n = len(ids)
    clip = BigGTokens(args.device, squash=not args.no_squash)
    vae = VaeLatents(args.vae, args.device) if args.vae else None
    captions = CaptionEmbeddings(args.captions, args.captions_per_image, args.device) if args.captions else None
    cnx = (ConvnextTeacher(args.convnext, args.convnext_code, args.convnext_augs, args.convnext_seed, args.device)
           if args.convnext else None)

    out = h5py.File(args.out, "a")
    fresh = "image_id" not in out
    if not fresh:
        if not np.array_equal(out["image_id"][:], ids):
            sys.exit(f"{args.out} holds other images; remove it or choose another --out")
    else:
        out.create_dataset("image_id", data=ids)
        out.create_dataset("clip_tokens", (n, 256, 1664), dtype="f4", chunks=(1, 256, 1664))
        if vae:
            out.create_dataset("lowlevel", (n, 4, 28, 28), dtype="f4", chunks=(1, 4, 28, 28))
        if captions:
            out.create_dataset("captions", (n, args.captions_per_image, 768), dtype="f4")
        out.attrs["rows_done"] = 0
        out.attrs["clip"] = "ViT-bigG-14 laion2b_s39b_b160k tokens" + ("" if args.no_squash else " (MindEye2 [0.5,1] input)")
    if cnx:
        if "convnext" in out:
            held = (int(out.attrs.get("convnext_augs", -1)), int(out.attrs.get("convnext_seed", -1)))
            if held != (args.convnext_augs, args.convnext_seed) or out["convnext_aug"].shape[1] != args.convnext_augs:
                sys.exit(f"{args.out} holds ConvNeXt features of other augmentations (augs, seed) = {held}; "
                         "pass the same --convnext-augs/--convnext-seed or choose another --out")
        else:
            out.create_dataset("convnext", (n, 49, 512), dtype="f4", chunks=(1, 49, 512))
            out.create_dataset("convnext_aug", (n, args.convnext_augs, 49, 512), dtype="f4",
                               chunks=(1, args.convnext_augs, 49, 512))
            out.attrs["convnext_rows_done"] = 0
            out.attrs["convnext_augs"] = args.convnext_augs
            out.attrs["convnext_seed"] = args.convnext_seed
            out.attrs["convnext"] = "ConvnextXL VICRegL alpha0.75 maps projector; aug views = blur_augs, seeded per image"
    start = int(out.attrs["rows_done"])
    cnx_start = int(out.attrs["convnext_rows_done"]) if cnx else n
    if not fresh and start < n and (vae is None) != ("lowlevel" not in out):
        sys.exit(f"{args.out} was started {'with' if 'lowlevel' in out else 'without'} --vae; resume it the same way")
    print(f"{n} images, {start} already done" + (f", ConvNeXt {cnx_start}" if cnx else ""), file=sys.stderr)

    # h5py reads fancy indices in increasing order: sort each batch, then restore the order.
    with torch.no_grad():
        # Batches start at multiples of --batch from the earliest unfinished row; each array is
        # written only past its own count (a resume never recomputes a finished row).
        first = min(start, cnx_start)
        for begin in range(first, n, args.batch):
            end = min(begin + args.batch, n)
            main_rows = slice(max(begin, start) - begin, end - begin)
            cnx_rows = slice(max(begin, cnx_start) - begin, end - begin)
            batch_ids = ids[begin:end]
            order = np.argsort(batch_ids)
            sorted_imgs = source[np.sort(batch_ids)]
            imgs = np.empty_like(sorted_imgs)
            imgs[order] = sorted_imgs
            img = torch.from_numpy(imgs.astype(np.float32)).to(args.device)
            if main_rows.start < main_rows.stop:
                part, rows = img[main_rows], slice(begin + main_rows.start, end)
                out["clip_tokens"][rows] = clip(part).float().cpu().numpy()
                if vae:
                    out["lowlevel"][rows] = vae(part).float().cpu().numpy()
                if captions:
                    out["captions"][rows] = captions(batch_ids[main_rows]).float().cpu().numpy()
                out.attrs["rows_done"] = end
            if cnx and cnx_rows.start < cnx_rows.stop:
                part, rows = img[cnx_rows], slice(begin + cnx_rows.start, end)
                out["convnext"][rows] = cnx.features(part).float().cpu().numpy()
                out["convnext_aug"][rows] = cnx.views(part, batch_ids[cnx_rows]).float().cpu().numpy()
                out.attrs["convnext_rows_done"] = end
            out.flush()
            print(f"{end}/{n}", file=sys.stderr)
    out.close()


if __name__ == "__main__":
    main()
