"""Where a model's inaudible prior samples come from: the audible share of prior samples and of
reconstructed validation voices, and the mean latent of the quiet samples beside the training
voices' (features.json). Needs the `audio` extra.

    python tools/quiet_samples.py --data dx7.npz [--checkpoint DIR] [--samples 2048]
"""
import argparse

import numpy as np

from neuraldx7_jax import audio, checkpoint, data, sample


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="dataset .npz (its validation split is reconstructed)")
    ap.add_argument("--checkpoint", help="model work directory (default: the bundled model)")
    ap.add_argument("--samples", type=int, default=2048, help="prior samples to render")
    a = ap.parse_args()
    model = checkpoint.load(a.checkpoint)
    z, voices = map(np.concatenate, zip(*sample.sample_prior_chunks(model, a.samples, latents=True)))
    loud = audio.audible(voices)
    val = data.load_dataset(a.data)["validation"][:a.samples]
    print(f"audible: prior samples {loud.mean():.3f}, validation voices {audio.audible(val).mean():.3f}, "
          f"their reconstructions {audio.audible(sample.reconstruct(model, val)).mean():.3f}")
    summary = checkpoint.latent_summary(model)
    if summary is not None:
        print("latent mean of training voices:", np.round(summary[0], 2))
    print("latent mean of quiet samples:   ", np.round(z[~loud].mean(0), 2))


if __name__ == "__main__":
    main()
