"""How real do mutants look? Mutates N voices of a dataset split once each (`sample.mutate`) and
reports the share of values changed and the C2ST of the mutants against N other voices of the
same split, beside a baseline that redraws as many values per voice from the training split's
per-parameter histograms (issue 32's bar: mutants at least 0.10 below it).

    python tools/mutation_study.py --data dx7.npz --split validation --voices 512 --amount 0.3
"""
import argparse
import json

import numpy as np

from neuraldx7_jax import checkpoint, data, dx7, sample, studies


def histogram_redraw(voices, changed, training, seed=0):
    """`voices` with round(changed[i] * 145) non-name values of voice i changed, each drawn from
    the training voices' other values of its parameter (the same share changed as the mutants)."""
    rng, out = np.random.default_rng(seed), np.array(voices)
    for i, share in enumerate(changed):
        for p in rng.choice(dx7.NON_NAME.stop, int(round(share * dx7.NON_NAME.stop)), replace=False):
            others = training[training[:, p] != out[i, p], p]
            if len(others):
                out[i, p] = others[rng.integers(len(others))]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a dataset .npz (neuraldx7 dataset build)")
    parser.add_argument("--split", default="validation", help="the voices to mutate and compare with")
    parser.add_argument("--voices", type=int, default=512, help="voices mutated, and as many compared with")
    parser.add_argument("--amount", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", default=None, help="default: the bundled model")
    a = parser.parse_args()
    model, dataset = checkpoint.load(a.checkpoint), data.load_dataset(a.data)
    real = dataset[a.split]
    if len(real) < 2 * a.voices:
        parser.error(f"{a.data}:{a.split} holds {len(real)} voices, fewer than 2 x --voices {a.voices}")
    source, other = real[:a.voices], real[a.voices:2 * a.voices]
    mutants, changed = sample.mutate(model, source, amount=a.amount, count=1, seed=a.seed)
    baseline = histogram_redraw(source, changed[:, 0], dataset["train"], seed=a.seed)
    print(json.dumps(dict(
        decoder=model.config.model.decoder, amount=a.amount, voices=a.voices,
        mutants_changed=dict(mean=float(changed.mean()), min=float(changed.min()), max=float(changed.max())),
        mutants_c2st=studies.c2st(mutants[:, 0], other, seed=a.seed)["accuracy"],
        baseline_changed=float((baseline[:, dx7.NON_NAME] != source[:, dx7.NON_NAME]).mean()),
        baseline_c2st=studies.c2st(baseline, other, seed=a.seed)["accuracy"],
        real_c2st=studies.c2st(source, other, seed=a.seed)["accuracy"]), indent=1))


if __name__ == "__main__":
    main()
