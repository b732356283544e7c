"""The ``apudae-tf`` command line: parses, loads, calls the library.

Every failure a user can cause (bad data, missing model) is an ApudaeError,
printed as one line on stderr with exit status 2; no traceback.
"""

from __future__ import annotations

import functools
import json
import os
import sys

import click

from apudae_tf.errors import ApudaeError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # keep TF's C++ banner off stderr; Python errors still surface


def friendly_errors(fn):
    """Turn ApudaeError into ``error: ...`` and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ApudaeError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)

    return wrapper


data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder holding <dataset>.npz (Keras layout). Defaults to $APUDAE_DATA_DIR, then tensorflow-datasets.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="apudae-tf")
def main():
    """Adversarial purification with denoising autoencoders (APuDAE).

    Train the classifier and DAE, attack, purify and classify, reproduce the
    paper's tables. Datasets: mnist, cifar10, or npz:PATH (keys x_train,
    y_train, x_test, y_test; uint8). Offline, point --data-dir or
    APUDAE_DATA_DIR at a folder holding mnist.npz / cifar10.npz.
    """


@main.command()
@click.argument("dataset")
@click.option("--what", type=click.Choice(["classifier", "dae", "all"]), default="all", show_default=True,
              help="Which model(s) to train.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Training epochs (default: 5 for the classifier, 10 for the DAE).")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: saved_models/<dataset>).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for weights, shuffling and noise.")
@data_dir_option
@friendly_errors
def train(dataset, what, epochs, batch_size, out_dir, seed, data_dir):
    """Train the classifier and/or the DAE on DATASET.

    Writes OUT/classifier.keras, OUT/dae.keras and OUT/dae_stats.json (the
    mean and std of the DAE's reconstruction error r(x) on the clean
    validation split, spec §2).
    """
    from apudae_tf import data, store
    from apudae_tf import train as training

    ds = data.load_dataset(dataset, data_dir)
    out_dir = out_dir or store.default_model_dir(ds.name)
    todo = ["classifier", "dae"] if what == "all" else [what]
    summary = {}
    for part in todo:
        n_epochs = epochs or {"classifier": 5, "dae": 10}[part]
        settings = training.TrainSettings(epochs=n_epochs, batch_size=batch_size, seed=seed)
        click.echo(f"training the {part} on {ds.name} ({len(ds.x_train)} images, {n_epochs} epochs) -> {out_dir}",
                   err=True)
        summary.update(training.train(ds, part, out_dir, settings, echo=lambda m: click.echo(m, err=True)))
    click.echo(json.dumps(summary, indent=2))


@main.command()
@click.argument("dataset")
@click.option("--models", "model_dir", type=click.Path(file_okay=False), default=None,
              help="Model folder (default: saved_models/<dataset>).")
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON.")
@data_dir_option
@friendly_errors
def info(dataset, model_dir, as_json, data_dir):
    """Measure the models of DATASET: classifier test accuracy and DAE reconstruction error.

    Scores the whole test split; r(x) is reported on clean test and
    validation images beside the stored mu and sigma.
    """
    from apudae_tf import data, evaluate, store

    ds = data.load_dataset(dataset, data_dir)
    m = store.load_models(model_dir or store.default_model_dir(ds.name), ds.image_shape)
    facts = evaluate.model_facts(m, ds)
    if as_json:
        click.echo(json.dumps(facts, indent=2))
    else:
        click.echo(evaluate.format_facts(facts))


if __name__ == "__main__":
    main()
