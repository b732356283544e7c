"""Keras functional models: the skip-connection DAE (spec §1) and classifiers.

Also the reconstruction error r(x) of spec §2 (paper eq. 7), since every
consumer of the DAE needs it computed the same way.
"""

from __future__ import annotations

import weakref

import keras
import numpy as np
import tensorflow as tf
from keras import layers

# Paper Table 1: (kernel, stride, channels) per layer; the last decoder layer
# has the image's channel count.
DAE_FILTERS = 64
DAE_KERNEL = 3
DAE_DROPOUT = 0.1  # the paper gives dropout in each layer (eq. 6), not its rate (choice)


def _conv_block(x, conv, dropout, name):
    """Conv -> Dropout -> ReLU -> BatchNorm, the order of eq. 6 and Table 1. Every BatchNorm of the package
    is synchronized: under a multi-device strategy it uses the global batch's statistics, so training on
    several devices computes what one device would."""
    x = conv(x)
    x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    x = layers.ReLU(name=f"{name}_relu")(x)
    return layers.BatchNormalization(synchronized=True, name=f"{name}_bn")(x)


def build_dae(
    image_shape: tuple[int, int, int],
    filters: int = DAE_FILTERS,
    dropout: float = DAE_DROPOUT,
    name: str = "dae",
) -> keras.Model:
    """The Table-1 DAE with additive skips, d_i = g_i(d_{i-1} + e_{L-i}) (spec §1).

    encoder: e1 = conv(3, s2, 64)(x), e2 = conv(3, s1, 64)(e1)
    decoder: d1 = deconv(3, s1, 64)(e2), d2 = deconv(3, s2, C)(d1 + e1), sigmoid
    """
    h, w, c = image_shape
    x = keras.Input(shape=(h, w, c), name="image")
    e1 = _conv_block(x, layers.Conv2D(filters, DAE_KERNEL, 2, "same", name="enc1_conv"), dropout, "enc1")
    e2 = _conv_block(e1, layers.Conv2D(filters, DAE_KERNEL, 1, "same", name="enc2_conv"), dropout, "enc2")
    d1 = _conv_block(e2, layers.Conv2DTranspose(filters, DAE_KERNEL, 1, "same", name="dec1_deconv"), dropout, "dec1")
    skip = layers.Add(name="skip_e1")([d1, e1])
    d2 = layers.Conv2DTranspose(c, DAE_KERNEL, 2, "same", name="dec2_deconv")(skip)
    d2 = layers.Dropout(dropout, name="dec2_dropout")(d2)
    if d2.shape[1] != h or d2.shape[2] != w:
        # odd sizes: the stride-2 deconv overshoots by one pixel
        d2 = layers.Cropping2D(((0, d2.shape[1] - h), (0, d2.shape[2] - w)), name="crop")(d2)
    out = layers.Activation("sigmoid", name="sigmoid", dtype=_output_dtype())(d2)
    return keras.Model(x, out, name=name)


# Laine et al. 2019's U-Net (spec §1, ImageNet): 48 channels, five 2x poolings, LeakyReLU(0.1)
UNET_FILTERS = 48
UNET_STAGES = 5
UNET_SLOPE = 0.1


def _output_dtype():
    """A DAE's last layer: float32 under a mixed-precision policy (the loss and r(x) in full precision),
    else the policy's own (float32, or float64 for the gradient checks)."""
    return "float32" if keras.config.dtype_policy().name.startswith("mixed") else None


def build_unet(image_shape: tuple[int, int, int], filters: int = UNET_FILTERS, name: str = "dae") -> keras.Model:
    """The ImageNet DAE of spec §1, after Laine et al. 2019 (their Noise2Noise U-Net): five stages of two
    3x3 convs with ``filters`` channels and 2x max-pooling, one 3x3 conv at the bottom, then five mirrored
    stages of nearest 2x up-sampling, concatenation with the input of the matching down stage, and two
    3x3 convs with twice the channels (the last stage 64 and 32, then a 3x3 conv to the image's channels and
    a sigmoid, so that D(x) lies in [0, 1] like the Table-1 DAE's). Every conv but the last has
    LeakyReLU(0.1). Fully convolutional: for sizes that are multiples of 32 the model takes any such size
    (its input is (None, None, C)); other sizes are zero-padded to one and cropped back."""
    h, w, c = image_shape
    m = 2 ** UNET_STAGES
    pad_h, pad_w = -h % m, -w % m
    if not (pad_h or pad_w):  # any multiple of 32 fits: train on small crops, purify whole images
        h = w = None
    act = lambda t, n: layers.LeakyReLU(UNET_SLOPE, name=f"{n}_lrelu")(t)  # noqa: E731
    conv = lambda t, f, n: act(layers.Conv2D(f, 3, padding="same", name=f"{n}_conv")(t), n)  # noqa: E731
    x = keras.Input(shape=(h, w, c), name="image")
    t = layers.ZeroPadding2D(((0, pad_h), (0, pad_w)), name="pad")(x) if pad_h or pad_w else x
    skips = []
    for i in range(1, UNET_STAGES + 1):
        skips.append(t)
        t = conv(conv(t, filters, f"enc{i}a"), filters, f"enc{i}b")
        t = layers.MaxPooling2D(2, name=f"pool{i}")(t)
    t = conv(t, filters, "bottom")
    for i in range(UNET_STAGES, 0, -1):
        t = layers.UpSampling2D(2, name=f"up{i}")(t)
        t = layers.Concatenate(name=f"skip{i}")([t, skips[i - 1]])
        a, b = (64, 32) if i == 1 else (2 * filters, 2 * filters)
        t = conv(conv(t, a, f"dec{i}a"), b, f"dec{i}b")
    t = layers.Conv2D(c, 3, padding="same", name="out_conv")(t)
    if pad_h or pad_w:
        t = layers.Cropping2D(((0, pad_h), (0, pad_w)), name="crop")(t)
    return keras.Model(x, layers.Activation("sigmoid", name="sigmoid", dtype=_output_dtype())(t), name=name)


def build_residual_unet(image_shape: tuple[int, int, int], filters: int = 32, stages: int = 4,
                        name: str = "denoiser") -> keras.Model:
    """The denoiser of randomized smoothing (docs/certify.md §2): a U-Net that predicts the noise, as
    DnCNN does (Zhang et al. 2017; Salman et al. 2020's denoiser), D(x̃) = x̃ + r(x̃). ``stages``
    resolutions, each two 3×3 ReLU convs, the channels doubling from ``filters`` at every 2× average
    pooling; nearest 2× up-sampling, concatenation with the same resolution's features and two convs on
    the way up. A DnCNN (17 convs of 64 channels at full resolution) costs ~3× the FLOPs of this network
    at 32 px for a smaller receptive field: smoothing runs the denoiser on every noise draw.

    No clipping and no sigmoid: the input x̃ = x + δ is not clipped (Gaussian noise in the classifier's
    input space reaches far outside [0, 1] at σ = 1), and ``denoise`` clips the output as for every DAE.
    Sizes that are not multiples of 2^(stages−1) are zero-padded and cropped back."""
    h, w, c = image_shape
    m = 2 ** (stages - 1)
    pad_h, pad_w = -h % m, -w % m
    conv = lambda t, f, n: layers.Conv2D(f, 3, padding="same", activation="relu", name=n)(t)  # noqa: E731
    x = keras.Input(shape=(h, w, c), name="image")
    t = layers.ZeroPadding2D(((0, pad_h), (0, pad_w)), name="pad")(x) if pad_h or pad_w else x
    skips = []
    for i in range(stages):
        f = filters * 2 ** i
        t = conv(conv(t, f, f"enc{i + 1}a"), f, f"enc{i + 1}b")
        if i < stages - 1:
            skips.append(t)
            t = layers.AveragePooling2D(2, name=f"pool{i + 1}")(t)
    for i in range(stages - 1, 0, -1):
        f = filters * 2 ** (i - 1)
        t = layers.UpSampling2D(2, name=f"up{i}")(t)
        t = layers.Concatenate(name=f"skip{i}")([t, skips[i - 1]])
        t = conv(conv(t, f, f"dec{i}a"), f, f"dec{i}b")
    r = layers.Conv2D(c, 3, padding="same", name="noise")(t)
    if pad_h or pad_w:
        r = layers.Cropping2D(((0, pad_h), (0, pad_w)), name="crop")(r)
    return keras.Model(x, layers.Add(name="residual", dtype=_output_dtype())([x, r]), name=name)


DAE_ARCHS = {"table1": build_dae, "unet": build_unet}
DAE_ARCH_FILTERS = {"table1": DAE_FILTERS, "unet": UNET_FILTERS}


def build_denoiser(arch: str, image_shape, filters: int | None = None) -> keras.Model:
    """A DAE by architecture name: ``table1`` (spec §1, Table 1) or ``unet`` (spec §1, ImageNet)."""
    if arch not in DAE_ARCHS:
        raise ValueError(f"unknown DAE architecture {arch!r}; use one of {', '.join(DAE_ARCHS)}")
    return DAE_ARCHS[arch](tuple(image_shape), filters=filters or DAE_ARCH_FILTERS[arch])


def build_mnist_classifier(image_shape=(28, 28, 1), num_classes: int = 10, name="classifier") -> keras.Model:
    """A small CNN that reaches >= 0.99 MNIST test accuracy in a few epochs; outputs logits."""
    x = keras.Input(shape=image_shape, name="image")
    h = x
    for i, f in enumerate((32, 64)):
        h = layers.Conv2D(f, 3, padding="same", activation="relu", name=f"conv{i}a")(h)
        h = layers.Conv2D(f, 3, padding="same", activation="relu", name=f"conv{i}b")(h)
        h = layers.MaxPooling2D(name=f"pool{i}")(h)
    h = layers.Flatten(name="flatten")(h)
    h = layers.Dense(128, activation="relu", name="fc")(h)
    h = layers.Dropout(0.3, name="fc_dropout")(h)
    logits = layers.Dense(num_classes, name="logits")(h)
    return keras.Model(x, logits, name=name)


# CIFAR-10's per-channel train mean and std: the ResNets standardise inside the model, so every
# model of this package takes images in [0, 1], the purifier's output range.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def _residual_block(x, filters, stride, name):
    """He et al.'s basic block: two 3×3 conv-BN, a 1×1 projection when the shape changes."""
    h = layers.Conv2D(filters, 3, stride, "same", use_bias=False, name=f"{name}_conv1")(x)
    h = layers.ReLU(name=f"{name}_relu1")(layers.BatchNormalization(synchronized=True, name=f"{name}_bn1")(h))
    h = layers.Conv2D(filters, 3, 1, "same", use_bias=False, name=f"{name}_conv2")(h)
    h = layers.BatchNormalization(synchronized=True, name=f"{name}_bn2")(h)
    if stride != 1 or x.shape[-1] != filters:
        x = layers.Conv2D(filters, 1, stride, use_bias=False, name=f"{name}_proj")(x)
        x = layers.BatchNormalization(synchronized=True, name=f"{name}_proj_bn")(x)
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([x, h]))


def build_resnet(image_shape=(32, 32, 3), num_classes: int = 10, widths=(16, 32, 64), blocks: int = 3,
                 mean=CIFAR10_MEAN, std=CIFAR10_STD, name="classifier") -> keras.Model:
    """A ResNet for 32×32 images with a 3×3 stem; logits out. The defaults are ResNet-20 (He et al.
    2016 §4.2: three stages of 16/32/64 filters, 3 blocks each, 0.27M weights); widths
    (64, 128, 256, 512) with 2 blocks is ResNet-18 (the paper's CIFAR-10 model)."""
    x = keras.Input(shape=image_shape, name="image")
    h = layers.Normalization(mean=list(mean), variance=[v * v for v in std], name="standardise")(x)
    h = layers.Conv2D(widths[0], 3, 1, "same", use_bias=False, name="stem_conv")(h)
    h = layers.ReLU(name="stem_relu")(layers.BatchNormalization(synchronized=True, name="stem_bn")(h))
    for i, f in enumerate(widths):
        for j in range(blocks):
            h = _residual_block(h, f, 2 if (j == 0 and i > 0) else 1, f"stage{i + 1}_block{j + 1}")
    h = layers.GlobalAveragePooling2D(name="pool")(h)
    return keras.Model(x, layers.Dense(num_classes, name="logits")(h), name=name)


def build_classifier(arch: str, image_shape, num_classes: int) -> keras.Model:
    """A classifier by architecture name (``names.CLASSIFIER_ARCHS``)."""
    if arch == "cnn":
        return build_mnist_classifier(image_shape, num_classes)
    # CIFAR-10's statistics for colour images; otherwise [0, 1] -> [-1, 1]
    c = image_shape[-1]
    stats = {} if c == 3 else {"mean": (0.5,) * c, "std": (0.5,) * c}
    if arch == "resnet20":
        return build_resnet(image_shape, num_classes, **stats)
    if arch == "resnet18":
        return build_resnet(image_shape, num_classes, widths=(64, 128, 256, 512), blocks=2, **stats)
    raise ValueError(f"unknown architecture {arch!r}")


def with_policy(model: keras.Model, policy: str) -> keras.Model:
    """A copy of a functional model whose layers compute under the dtype ``policy`` (e.g. mixed_bfloat16),
    with the same (float32) weights: how a saved float32 denoiser runs in mixed precision."""
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] != "InputLayer":
            layer["config"]["dtype"] = policy
    copy = model.__class__.from_config(config)
    copy.set_weights(model.get_weights())
    return copy


def layer_flops(layer) -> int:
    """2 × multiply-adds of one Conv2D, Conv2DTranspose, DepthwiseConv2D or Dense layer for one image (0 for others,
    whose elementwise work is small beside them)."""
    kind = type(layer).__name__
    if kind == "Conv2D":  # each output pixel: kh·kw·cin MACs per output channel
        kh, kw, cin, cout = (int(d) for d in layer.kernel.shape)
        _, oh, ow, _ = layer.output.shape
        return 2 * oh * ow * cout * kh * kw * cin
    if kind == "Conv2DTranspose":  # each input pixel scatters kh·kw·cout MACs per input channel
        kh, kw, cout, cin = (int(d) for d in layer.kernel.shape)
        _, ih, iw, _ = layer.input.shape
        return 2 * ih * iw * cin * kh * kw * cout
    if kind == "DepthwiseConv2D":  # each output pixel and channel: kh·kw MACs
        kh, kw, c, mult = (int(d) for d in layer.kernel.shape)
        _, oh, ow, _ = layer.output.shape
        return 2 * oh * ow * c * mult * kh * kw
    if kind == "Dense":
        return 2 * int(np.prod(layer.kernel.shape))
    return 0


def forward_flops(model, image_shape=None) -> int:
    """The FLOPs of one image's forward pass through a model's convolutions and dense layers (nested models
    included): the cost figures' reference work. A model that takes any image size (None in its input shape) is
    counted at ``image_shape``."""
    if image_shape is not None and any(d is None for d in model.input_shape[1:3]):
        model = keras.models.clone_model(model, input_tensors=keras.Input(shape=tuple(image_shape)))
    return int(sum(forward_flops(layer) if isinstance(layer, keras.Model) else layer_flops(layer)
                   for layer in model.layers))


def denoise(dae, x: tf.Tensor) -> tf.Tensor:
    """clip(D(x), 0, 1) with the DAE in inference mode: the reconstruction of eq. 7 and the direct purifier."""
    return tf.clip_by_value(dae(x, training=False), 0.0, 1.0)


def reconstruction_error(dae, x: tf.Tensor) -> tf.Tensor:
    """r(x) = sum over pixels of (clip(D(x), 0, 1) - x)^2, one value per image (eq. 7)."""
    x = tf.cast(x, dae.compute_dtype)  # float32 for every shipped model; float64 in a gradient check
    return tf.reduce_sum(tf.square(denoise(dae, x) - x), axis=[1, 2, 3])


_COMPILED_R = weakref.WeakKeyDictionary()  # dae -> its compiled r(x)


def reconstruction_errors(dae, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """r(x) of every image of a numpy array (or an image folder), in batches (numpy out). Compiled once per
    DAE: eagerly, a 224-px U-Net forward pass takes several times longer and holds every activation."""
    if dae not in _COMPILED_R:
        _COMPILED_R[dae] = tf.function(lambda b: reconstruction_error(dae, b), reduce_retracing=True)
    return predict_in_batches(_COMPILED_R[dae], x, batch_size or batch_for(x.shape[1:]))


# pixels per batch, for forward passes (logits, r(x)) and for work that also holds a gradient's activations
# (purification steps, attacks): MNIST and CIFAR-10 take 500 images either way, a 224-px image 10. The
# U-Net's forward pass alone holds ~175 MB per 224-px image (eager r(x): 2.4 GiB peak at 10 images, 4.2 at
# 20): a forward budget 8x larger (83 images, ~15 GB) got Table 4's run killed for memory beside another
# job. One image through a 15-step purification and its gradient holds ~1.2 GB (attack_cost.json).
FORWARD_PIXELS, GRADIENT_PIXELS = 2 ** 19, 2 ** 19


def batch_for(image_shape, pixels: int = FORWARD_PIXELS) -> int:
    """A batch of at most ``pixels`` pixels, at most 500 images."""
    return int(max(1, min(500, pixels // int(np.prod(image_shape[:2])))))


def inference_fn(model):
    """A Keras model as a compiled ``x -> output`` callable in inference mode (dropout off)."""
    return tf.function(lambda x: model(x, training=False), reduce_retracing=True)


def predict_in_batches(fn, x, batch_size: int | None = None):
    """Apply ``fn`` to ``x`` in chunks (default: ``batch_for`` its image size) and concatenate (numpy in,
    numpy out)."""
    batch_size = batch_size or batch_for(x.shape[1:])
    outs = [np.asarray(fn(tf.constant(x[i : i + batch_size]))) for i in range(0, len(x), batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)
