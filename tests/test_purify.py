"""The purification engine (spec §3): per-image behaviour, seeds, the one-sided rule, tracing."""

import numpy as np
import pytest
import tensorflow as tf

from apudae_tf import models, purify, store

SHAPE = (28, 28, 1)


@pytest.fixture(scope="module")
def dae_and_x():
    tf.keras.utils.set_random_seed(0)
    dae = models.build_dae(SHAPE)
    x = np.random.default_rng(0).random((6, *SHAPE), dtype=np.float32) * 0.5
    x[:3, 10:18, 10:18] = 1.0
    return dae, x


def _stats(mu, sigma=1.0):
    return store.DaeStats(mu, sigma, 0.5, SHAPE, "mnist", {})


def _r(dae, x):
    return models.reconstruction_error(dae, x).numpy()


@pytest.mark.parametrize("variant", ["direct", "A", "B", "C", "D", "E"])
def test_deterministic_variants_treat_each_image_alone(dae_and_x, variant):
    dae, x = dae_and_x
    r = _r(dae, x)
    p = purify.Purifier(dae, _stats(float(np.median(r)), float(r.std())), variant,
                        purify.PurifySettings(n=5, alpha=0.01))
    batch = p.purify(x).numpy()
    alone = np.concatenate([p.purify(x[i : i + 1]).numpy() for i in range(len(x))])
    np.testing.assert_allclose(batch, alone, atol=1e-5)
    assert batch.min() >= 0.0 and batch.max() <= 1.0


def test_iterative_variants_lower_the_reconstruction_error(dae_and_x):
    dae, x = dae_and_x
    r = _r(dae, x)
    for variant in ("A", "B"):
        p = purify.Purifier(dae, _stats(0.0, float(r.std())), variant, purify.PurifySettings(n=10, alpha=0.01))
        assert np.all(_r(dae, p.purify(x).numpy()) < r), variant


def test_e_leaves_images_below_mu_unchanged(dae_and_x):
    dae, x = dae_and_x
    r = _r(dae, x)
    mu = float(np.median(r))
    out = purify.Purifier(dae, _stats(mu, float(r.std())), "E", purify.PurifySettings(n=10, alpha=0.05)).purify(x)
    out = out.numpy()
    below, above = r < mu, r > mu
    assert below.any() and above.any()
    np.testing.assert_array_equal(out[below], x[below])
    assert all(not np.array_equal(out[i], x[i]) for i in np.flatnonzero(above))


def test_c_learning_rate_follows_the_normal_cdf():
    r0 = tf.constant([0.0, 1.0, 2.0])
    np.testing.assert_allclose(purify.lr_from_error(r0, 1.0, 1.0).numpy(), [0.158655, 0.5, 0.841345], atol=1e-5)


def test_f_noise_amplitude_is_clipped():
    eta = purify.noise_amplitude(tf.constant([1.0, 3.0, 100.0]), 1.0, 1.0, 0.1).numpy()
    np.testing.assert_allclose(eta, [0.0, 0.1, 0.4], atol=1e-6)


@pytest.mark.parametrize("variant", ["F", "G"])
def test_random_variants_are_reproducible_by_seed(dae_and_x, variant):
    dae, x = dae_and_x
    r = _r(dae, x)
    stats = _stats(float(r.min()) - 2 * float(r.std()), float(r.std()))  # every image gets noise
    s = purify.PurifySettings(n=4, alpha=0.01, eps_r=0.05, rho=0.2, theta_max=20)
    a = purify.Purifier(dae, stats, variant, s).purify(x, seed=3).numpy()
    b = purify.Purifier(dae, stats, variant, s).purify(x, seed=3).numpy()
    c = purify.Purifier(dae, stats, variant, s).purify(x, seed=4).numpy()
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_g_transform_is_identity_at_zero_range_and_moves_pixels_otherwise(dae_and_x):
    _, x = dae_and_x
    same = purify.random_transform(tf.constant(x), 0.0, 0.0, tf.constant(1, tf.int64)).numpy()
    np.testing.assert_allclose(same, x, atol=1e-5)
    moved = purify.random_transform(tf.constant(x), 0.3, 30.0, tf.constant(1, tf.int64)).numpy()
    assert np.abs(moved - x).mean() > 0.01


def test_one_trace_serves_every_batch_size_seed_and_setting(dae_and_x):
    dae, x = dae_and_x
    p = purify.Purifier(dae, _stats(1.0), "F", purify.PurifySettings(n=2, alpha=0.01, eps_r=0.01))
    big = np.concatenate([x] * 84)[:500]
    for batch, seed in ((x[:1], 0), (x, 1), (np.concatenate([x, x[:1]]), 2), (big, 3)):  # 1, 6, 7, 500 images
        assert p.purify(batch, seed=seed).shape == batch.shape
    p.settings = purify.PurifySettings(n=3, alpha=0.02, eps_r=0.02)  # new settings are tensors: no retrace
    p.purify(x)
    assert p._compiled.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("variant", ["direct", "A", "B", "C", "D", "E", "F", "G"])
def test_the_compiled_purification_is_the_differentiable_function(dae_and_x, variant):
    # purify (what the CLI, the tuner and the export run) and function (what the attacks differentiate)
    # are one piece of code: compiled or not, the same images
    dae, x = dae_and_x
    r = _r(dae, x)
    p = purify.Purifier(dae, _stats(float(np.median(r)), float(r.std())), variant,
                        purify.PurifySettings(n=4, alpha=0.02, eps_r=0.02))
    np.testing.assert_allclose(p.purify(x, seed=5).numpy(), p.function(tf.constant(x), seed=5).numpy(), atol=1e-6)


@pytest.mark.parametrize("variant", ["B", "C", "E"])
def test_xla_compiled_loop_gives_the_same_purification(dae_and_x, variant):
    dae, x = dae_and_x
    settings = purify.PurifySettings(n=4, alpha=0.02)
    plain = purify.Purifier(dae, _stats(0.5), variant, settings).purify(x).numpy()
    xla = purify.Purifier(dae, _stats(0.5), variant, settings, jit_compile=True).purify(x).numpy()
    np.testing.assert_allclose(xla, plain, atol=1e-3)


def test_g_runs_under_xla(dae_and_x):
    # its warp has no XLA kernel, so it must run outside the compiled loop
    dae, x = dae_and_x
    p = purify.Purifier(dae, _stats(0.5), "G", purify.PurifySettings(n=2, eps_r=0.01), jit_compile=True)
    out = p.purify(x, seed=3).numpy()
    np.testing.assert_array_equal(out, p.purify(x, seed=3).numpy())
    assert out.shape == x.shape and 0.0 <= out.min() and out.max() <= 1.0


def test_unknown_variant_and_bad_settings():
    dae = models.build_dae(SHAPE)
    with pytest.raises(purify.ApudaeError, match="unknown purification variant"):
        purify.Purifier(dae, _stats(1.0), "Z")
    with pytest.raises(purify.ApudaeError, match=r"--n -1 is outside >= 0"):
        purify.Purifier(dae, _stats(1.0), "B", purify.PurifySettings(n=-1))


def test_tune_picks_the_best_validation_setting_and_purify_uses_it(tiny_models, tiny_npz):
    import json
    import os

    from apudae_tf import attacks, data, profiles, tuning

    ds = data.load_dataset(f"npz:{tiny_npz}")
    profiles.declare(ds.name, 0.3, 2, 0.1, 0.5)
    m = store.load_models(tiny_models, ds.image_shape)
    report = tuning.tune(m, ds, ["B"], n_val=8, attack_settings=attacks.AttackSettings(0.3, 2, 0.1))
    assert report["split"] == "val" and report["n"] == 8
    sweep = report["variants"]["B"]["sweep"]
    assert len(sweep) == len(tuning.tune_candidates(ds.name, "B")) > 1
    assert report["variants"]["B"]["settings"] == max(sweep, key=lambda r: r["score"])["settings"]
    # a model folder's purify_settings.json becomes purify's default
    chosen = {"B": {"settings": {**report["variants"]["B"]["settings"], "n": 7}}}
    with open(os.path.join(tiny_models, store.PURIFY_SETTINGS), "w") as f:
        json.dump({"variants": chosen}, f)
    assert purify.default_settings("mnist", "B", tiny_models).n == 7
    from apudae_tf import profiles

    assert purify.default_settings("mnist", "C", tiny_models) == purify.PurifySettings(
        **profiles.get("mnist").purify_fallback)


@pytest.mark.parametrize("variant,traced", [("A", False), ("C", True), ("D", True), ("F", True)])
def test_checkpointed_steps_give_the_same_purification_and_gradient(dae_and_x, variant, traced):
    # the step-wise gradient changes what is kept in memory, never the values or the exact attack's gradient
    dae, x = dae_and_x
    r = _r(dae, x)
    settings = purify.PurifySettings(n=3, alpha=0.02, eps_r=0.02)
    stats = _stats(float(np.median(r)), float(r.std()))

    def value_and_grad(p):
        def run(xt):
            with tf.GradientTape() as tape:
                tape.watch(xt)
                out = p.function(xt, seed=3)
                loss = tf.reduce_sum(out * tf.sin(7.0 * out))  # a loss whose gradient varies over the image
            return out, tape.gradient(loss, xt)

        out, grad = (tf.function(run) if traced else run)(tf.constant(x))  # traced: as the attacks run it
        return out.numpy(), grad.numpy()

    out, grad = value_and_grad(purify.Purifier(dae, stats, variant, settings))
    out_c, grad_c = value_and_grad(purify.Purifier(dae, stats, variant, settings, checkpoint=True))
    np.testing.assert_allclose(out_c, out, atol=1e-6)
    assert np.abs(grad).max() > 0
    np.testing.assert_allclose(grad_c, grad, atol=1e-5 * np.abs(grad).max())


_PEAK_MEMORY = """
import resource, sys
import numpy as np, tensorflow as tf
from apudae_tf import attacks, models, purify, store
n = int(sys.argv[1])
dae = models.build_denoiser("unet", (64, 64, 3))
x = np.random.default_rng(0).random((8, 64, 64, 3)).astype(np.float32)
p = purify.Purifier(dae, store.DaeStats(1.0, 1.0, 0.0, (64, 64, 3), "x", {}), "C",
                    purify.PurifySettings(n=n, alpha=2 / 255, eps_r=1 / 255), checkpoint=True)
model = attacks.DefendedModel(p, lambda z: tf.reduce_mean(z, axis=[1, 2]) @ tf.ones((3, 10)), "exact")
y = np.zeros(8, np.int64)
assert np.abs(attacks.eot_gradient(model, attacks.ce_loss, x, y, y)[2]).max() > 0
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
def test_the_step_wise_gradient_s_memory_does_not_grow_with_the_steps():
    # Each step's activations at 64 px, batch 8, are ~70 MB: a backward loop that recomputed steps ahead of
    # the chained products (while_loop's default parallel_iterations) held ~0.9 GB more at n = 12 than at 2.
    import subprocess
    import sys

    def peak_mib(n):
        done = subprocess.run([sys.executable, "-c", _PEAK_MEMORY, str(n)], capture_output=True, text=True,
                              check=True)
        return int(done.stdout.split()[-1]) / 1024

    assert peak_mib(12) - peak_mib(2) < 250


def test_default_batches_keep_large_images_within_memory_and_small_ones_at_500(dae_and_x):
    assert models.batch_for((28, 28, 1)) == models.batch_for((32, 32, 3), models.GRADIENT_PIXELS) == 500
    assert models.batch_for((224, 224, 3)) == 10 and models.batch_for((224, 224, 3), models.GRADIENT_PIXELS) == 10
    seen = []
    out = models.predict_in_batches(lambda b: (seen.append(len(b)), tf.reduce_mean(b, [1, 2]))[1],
                                    np.zeros((90, 224, 224, 1), np.float32))
    assert seen == [10] * 9 and out.shape == (90, 1)
    dae, x = dae_and_x  # a purifier's batches follow the gradient budget: 2 ** 19 pixels
    p = purify.Purifier(dae, store.DaeStats(1.0, 1.0, 0.0, x.shape[1:], "t", {}), "A", purify.PurifySettings(n=1))
    calls = []
    p.purify = lambda b, seed: (calls.append(int(b.shape[0])), b)[1]
    big = np.zeros((600, 32, 32) + x.shape[3:], np.float32)
    p.purify_array(big)
    p.purify_array(np.zeros((3, 512, 512) + x.shape[3:], np.float32))
    assert calls == [500, 100, 2, 1]
