"""Dataset profiles: every fact that depends on the dataset, in one registry.

A profile holds a dataset's threat model (norm, ε, the attack preset's steps and step size), σ_max
for the DAE's noise, the validation split's size, the default classifier architecture and epochs,
fallback purification settings, the tuning grid, and (optionally) the paper's tables. ``mnist`` and
``cifar10`` are entries; nothing else in the package keys on a dataset's name: it asks ``get``.

A user's own data (``npz:PATH``) declares its profile when it trains, with ``declare`` (the CLI's
``--eps``, ``--steps``, ``--step``, ``--sigma-max`` or ``--profile FILE``); ``train`` writes it to the
model folder as ``profile.json`` and every later command reads it from there (``from_folder``). An
unknown dataset or a missing field is one clear error, never a silent fallback to another dataset.
Kept free of TensorFlow: the command line reads profiles before it imports it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

from apudae_tf import io, names
from apudae_tf.errors import ApudaeError

PROFILE_FILE = "profile.json"
# noisy copies per forward pass in `certify` and PREDICT, unless a profile says less (its denoiser's activations)
CERTIFY_BATCH = 1000


@dataclasses.dataclass(frozen=True)
class ThreatModel:
    """The attacker's budget (spec §4): the norm and ε, and the preset of the iterative attacks (PGD/BIM):
    ``steps`` (default 40) of ``step`` (default 2.5·ε/steps, Madry et al.'s ratio, at most ε)."""

    eps: float
    steps: int | None = None  # None: DEFAULT_PGD_STEPS (an explicit 0 is an error, ``check``)
    step: float | None = None  # None: min(2.5·ε/steps, ε)
    norm: str = "linf"
    rand_init: bool = True

    def __post_init__(self):
        if self.steps is None:
            object.__setattr__(self, "steps", DEFAULT_PGD_STEPS)
        if self.step is None:  # Madry et al.'s ratio, never a step beyond the ball
            object.__setattr__(self, "step", min(2.5 * self.eps / max(self.steps, 1), self.eps))

    def check(self, where: str) -> ThreatModel:
        if self.norm not in NORMS:
            raise ApudaeError(f"{where}: norm {self.norm!r} is not supported; use {' or '.join(NORMS)}")
        top = 1 if self.norm == "linf" else L2_EPS_MAX  # an L2 ball of radius > 1 still fits inside [0, 1]^d
        if not (0 < self.eps <= top) or self.steps < 1 or not (0 < self.step <= top):
            raise ApudaeError(f"{where}: the {self.norm} threat model needs eps in (0, {top:g}], steps >= 1 and step "
                              f"in (0, {top:g}]; got eps={self.eps:g}, steps={self.steps}, step={self.step:g}")
        return self


NORMS = ("linf", "l2")
DEFAULT_PGD_STEPS = 40  # Madry et al.'s PGD-40
L2_EPS_MAX = 100.0  # an L2 budget beyond this changes every pixel of a 224-px image by ~0.26 on average


@dataclasses.dataclass(frozen=True)
class Profile:
    """One dataset's facts. ``paper``/``paper_adaptive`` hold the paper's numbers by row and column."""

    name: str
    threat: ThreatModel
    sigma_max: float  # the DAE's noise σ ~ U(0, σ_max) (spec §1): large enough to cover ε
    # the L2 threat model of the certified defence (docs/certify.md §5): PGD-L2's preset and the attacks' budget
    l2_threat: ThreatModel | None = None
    val_size: float = 0.1  # validation images held out of train: a count, or a fraction when < 1 (DEFAULT_VAL_SIZE)
    arch: str = "cnn"  # the default classifier architecture (names.CLASSIFIER_ARCHS)
    epochs: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_EPOCHS))
    linf_max: float = 0.0  # the plus recipe's L∞-corner noise (0: the recipe adds none)
    fast_adv_training: bool = False  # N-FGSM (else Madry PGD) for the adversarial-training baseline
    purify_fallback: dict = dataclasses.field(default_factory=dict)  # before `tune`: PurifySettings fields
    tune_grid: dict = dataclasses.field(default_factory=dict)  # {"A": {n, alpha}, "adam": {...}, "noise": {eps_r}}
    columns: tuple = ("clean", "random", "fgsm", "r-fgsm", "pgd", "cw")  # the table's attack columns
    all_variants: tuple = ("direct", "A", "B", "C", "D", "E", "F", "G")  # `evaluate --variants all`
    figure_column: str = "pgd"  # the column whose blind examples the figures show
    dae_arch: str = "table1"  # models.DAE_ARCHS: the Table-1 DAE, or the U-Net for large images (spec §1)
    crop: int = 224  # image folders (imagefolder.py): the central crop's side ...
    resize: int = 256  # ... after resizing the shorter side to this (unless already in [crop, resize])
    train_patch: int = 0  # the DAE trains on random crops of this side (0: whole images)
    correct_only: bool = False  # reports score only the test images the classifier gets right (spec §6, Table 4)
    checkpoint_steps: bool = False  # attacks through the purification recompute its steps (Purifier checkpoint)
    tfds_splits: tuple = ()  # (builder, train split, test split): a prepared tfds dataset read lazily (tfdsimages.py)
    # the adaptive report (table.adaptive_columns): its attacks before the AutoAttack cascade; whether
    # they too run only on the images still standing; and how many images a cell attacks and caches at a time
    adaptive_attacks: tuple = names.ADAPTIVE_COLUMNS
    adaptive_cascade: bool = False
    adaptive_chunk: int = 0  # 0: a cell at once
    # the chunk of the attacks that run the purification at every step (BPDA+EOT, the AutoAttack cascade),
    # where smaller (0: adaptive_chunk's)
    adaptive_purifier_chunk: int = 0
    # randomized smoothing (docs/certify.md): the noise levels σ of the smoothing denoisers and of `certify`,
    # and the denoiser's residual U-Net (models.build_residual_unet: first stage's channels, resolutions)
    smoothing_sigmas: tuple = (0.25, 0.5, 1.0)
    smoothing_denoiser: dict = dataclasses.field(default_factory=lambda: {"filters": 32, "stages": 4})
    # noisy copies per forward pass in `certify`: the denoiser's activations of a batch must fit in memory
    certify_batch: int = CERTIFY_BATCH
    # published certified accuracies drawn beside ours: {name: {radius: accuracy}}
    certify_anchors: dict = dataclasses.field(default_factory=dict)
    paper: dict = dataclasses.field(default_factory=dict)
    paper_adaptive: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        # fields left empty get the ε-scaled defaults, so a profile is complete from its threat model and σ_max
        for key, value in generic_defaults(self.threat).items():
            if not getattr(self, key):
                object.__setattr__(self, key, value)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        for k in TUPLE_FIELDS:
            d[k] = list(getattr(self, k))
        return d


TUPLE_FIELDS = ("columns", "all_variants", "tfds_splits", "adaptive_attacks", "smoothing_sigmas")


def generic_defaults(threat: ThreatModel) -> dict:
    """What a declared profile gets for the fields it does not give, scaled by its ε (choice, recorded in
    docs/profiles.md; near what validation chose on MNIST and CIFAR-10, α between ε/6 and ε/3): a
    fallback of 20 steps at α = ε/4, a tune grid of ε/16 to ε/4 for A's sign steps and ε/8 to ε/2 for
    Adam's rate, noise ε_r of ε/32 and ε/8."""
    e = threat.eps
    return {"purify_fallback": {"n": 20, "alpha": e / 4, "eps_r": e / 32},
            "tune_grid": {"A": {"n": [10, 20], "alpha": [e / 16, e / 8, e / 4]},
                          "adam": {"n": [10, 20], "alpha": [e / 8, e / 4, e / 2]},
                          "noise": {"eps_r": [e / 32, e / 8]}}}


# the shipped models' epochs; what ``apudae-tf train`` runs without --epochs
DEFAULT_EPOCHS = {"classifier": 6, "dae": 5, "adv-classifier": 3, "gan": 10, "adapted-classifier": 4,
                  "smoothing-dae": 10, "smoothing-stability": 10}
# paper Table 2 (spec §6)
_MNIST_PAPER = {
    "no defence": {"clean": 0.974, "fgsm": 0.269, "r-fgsm": 0.269, "pgd": 0.129, "cw": 0.000},
    "adversarial training": {"clean": 0.822, "fgsm": 0.651, "r-fgsm": 0.651, "pgd": 0.354, "cw": 0.28},
    "defense-gan": {"clean": 0.969, "fgsm": 0.949, "r-fgsm": 0.945, "pgd": 0.939, "cw": 0.936},
    "magnet": {"clean": 0.95, "fgsm": 0.69, "r-fgsm": 0.65, "pgd": 0.49, "cw": 0.45},
    "apudae direct": {"clean": 0.973, "fgsm": 0.934, "r-fgsm": 0.921, "pgd": 0.912, "cw": 0.907},
    "apudae": {"clean": 0.973, "fgsm": 0.964, "r-fgsm": 0.962, "pgd": 0.951, "cw": 0.953},
}
# paper Table 3, ResNet-18; rows "apudae V" are the variants, A at three n
_CIFAR10_PAPER = {
    "no defence": {"clean": 0.954, "random": 0.940, "fgsm": 0.533, "r-fgsm": 0.528, "bim": 0.002, "cw": 0.0},
    "adversarial training": {"clean": 0.871, "random": 0.865, "fgsm": 0.650, "r-fgsm": 0.640, "bim": 0.483,
                             "cw": 0.412},
    "apudae direct": {"clean": 0.790, "random": 0.793, "fgsm": 0.661, "r-fgsm": 0.655, "bim": 0.367, "cw": 0.351},
    "apudae A n=12": {"clean": 0.879, "random": 0.889, "fgsm": 0.73, "r-fgsm": 0.73, "bim": 0.632, "cw": 0.621},
    "apudae A n=15": {"clean": 0.853, "random": 0.875, "fgsm": 0.76, "r-fgsm": 0.747, "bim": 0.694, "cw": 0.683},
    "apudae A n=18": {"clean": 0.843, "random": 0.867, "fgsm": 0.774, "r-fgsm": 0.764, "bim": 0.702, "cw": 0.695},
    "apudae B": {"clean": 0.872, "random": 0.883, "fgsm": 0.778, "r-fgsm": 0.772, "bim": 0.706, "cw": 0.698},
    "apudae C": {"clean": 0.892, "random": 0.874, "fgsm": 0.769, "r-fgsm": 0.762, "bim": 0.692, "cw": 0.689},
    "apudae D": {"clean": 0.904, "random": 0.889, "fgsm": 0.783, "r-fgsm": 0.767, "bim": 0.684, "cw": 0.679},
    "apudae E": {"clean": 0.907, "random": 0.893, "fgsm": 0.834, "r-fgsm": 0.817, "bim": 0.702, "cw": 0.689},
    "apudae F": {"clean": 0.908, "random": 0.893, "fgsm": 0.818, "r-fgsm": 0.811, "bim": 0.729, "cw": 0.708},
    "apudae G": {"clean": 0.858, "random": 0.846, "fgsm": 0.828, "r-fgsm": 0.814, "bim": 0.711, "cw": 0.700},
}

REGISTRY: dict[str, Profile] = {
    "mnist": Profile(
        name="mnist",
        threat=ThreatModel(eps=0.3, steps=40, step=0.01),  # Madry's PGD-40
        # the L2 budget of the certified-defence literature on MNIST (Salman et al. 2019: r = 2.0); PGD-40 at
        # 2.5·ε/40 a step, Madry's ratio
        l2_threat=ThreatModel(eps=2.0, steps=40, step=0.125, norm="l2"),
        sigma_max=0.5,  # spec §1: covers ε = 0.3
        val_size=5000,
        arch="cnn",
        linf_max=0.4,  # reaches past ε
        purify_fallback={"n": 20, "alpha": 0.02, "eps_r": 0.05},
        # spec §3 leaves MNIST's n and α open. A takes sign steps, so its α is a pixel step
        tune_grid={"A": {"n": [10, 20], "alpha": [0.01, 0.02, 0.04]},
                   "adam": {"n": [10, 20], "alpha": [0.02, 0.05, 0.1]},
                   "noise": {"eps_r": [0.01, 0.03]}},
        columns=("clean", "fgsm", "r-fgsm", "pgd", "cw", "cw-l2"),
        figure_column="pgd",
        smoothing_denoiser={"filters": 32, "stages": 3},  # 28 -> 14 -> 7 px
        certify_anchors={
            "Cohen et al. 2019, LeNet trained on noise, σ=0.5 (N=100,000, 10,000 images)": {0.5: 0.969, 1.0: 0.898},
            "SmoothAdv (Salman et al. 2019), σ=1.0": {2.0: 0.433},
        },
        # the smoothing denoisers: ~1.5 min an MSE epoch and ~2 min a stability epoch in bfloat16 on 2 cores
        epochs={**DEFAULT_EPOCHS, "smoothing-dae": 6, "smoothing-stability": 12},
        paper=_MNIST_PAPER,
        paper_adaptive={"apudae": {"bpda": 0.891, "weighted": 0.857}},  # Table 5, the best variant
    ),
    "cifar10": Profile(
        name="cifar10",
        threat=ThreatModel(eps=8 / 255, steps=7, step=2 / 255),  # the paper's BIM
        l2_threat=ThreatModel(eps=0.5, steps=20, step=0.0625, norm="l2"),  # RobustBench's L2 board; 2.5·ε/20 a step
        sigma_max=0.1,  # spec §1: at σ = 0.1 three pixels in four move by more than ε = 8/255
        val_size=5000,
        arch="resnet20",
        # ResNet-20: 30 one-cycle epochs gave 0.8986 test accuracy, 45 gave 0.9052 (54 min on 2 cores);
        # fast adversarial training runs Wong et al.'s 15 epochs from scratch
        # the smoothing denoisers: ~2 min an MSE epoch, ~3 min a stability epoch in bfloat16 on 2 cores; the
        # shipped σ = 0.25 and 0.5 had 20 stability epochs (σ = 0.25: 0.661 noisy validation accuracy, still
        # rising as the cosine schedule ended); 60 would fit a GPU, not a 2-core session (docs/certify.md §8)
        epochs={**DEFAULT_EPOCHS, "classifier": 45, "adv-classifier": 15, "smoothing-dae": 10,
                "smoothing-stability": 20},
        linf_max=12 / 255,
        fast_adv_training=True,
        certify_anchors={
            "Salman et al. 2020, ResNet-110 + DnCNN stability denoiser (white box)": {
                0.25: 0.56, 0.5: 0.41, 0.75: 0.28, 1.0: 0.19},
            "Salman et al. 2020, ResNet-110 smoothed with no denoiser": {0.25: 0.07, 0.5: 0.03, 0.75: 0.0, 1.0: 0.0},
            "Cohen et al. 2019, ResNet-110 trained on noise (N=100,000)": {0.25: 0.60, 0.5: 0.43, 0.75: 0.32, 1.0: 0.23},
        },
        purify_fallback={"n": 15, "alpha": 2 / 255, "eps_r": 1 / 255},  # the paper's (spec §3)
        # 0.5/255 beside the paper's 2/255: with our DAE, clean validation accuracy fell from 0.85
        # (direct) to 0.69-0.79 at 1/255 and 0.57-0.67 at 2/255 (B, n 10-20)
        tune_grid={"A": {"n": [12, 15, 18], "alpha": [1 / 255, 2 / 255]},
                   "adam": {"n": [10, 15, 20], "alpha": [0.5 / 255, 1 / 255, 2 / 255]},
                   "noise": {"eps_r": [0.7 / 255, 1 / 255, 2 / 255]}},
        # BIM is the paper's protocol (the preset without a random start); pgd50 the stronger check
        columns=("clean", "random", "fgsm", "r-fgsm", "bim", "cw", "pgd50"),
        all_variants=("direct", "A:n=12", "A:n=15", "A:n=18", "B", "C", "D", "E", "F", "G"),
        figure_column="bim",
        paper=_CIFAR10_PAPER,
        paper_adaptive={"apudae": {"bpda": 0.680, "weighted": 0.507}},
    ),
    "imagenet": Profile(
        name="imagenet",
        # spec §4: ε = 4/255 and 16/255; the profile's threat is the larger, BIM-10 at ε/4 a step (choice:
        # Madry's 2.5ε/steps)
        threat=ThreatModel(eps=16 / 255, steps=10, step=4 / 255, rand_init=False),
        # ε = 1.0 (choice: RobustBench's ImageNet board has no L2 entry; 1.0 is the radius up to which Salman et
        # al. 2020 tabulate denoised smoothing), BIM's 10 steps at ε/4
        l2_threat=ThreatModel(eps=1.0, steps=10, step=0.25, norm="l2"),
        sigma_max=0.15,  # covers ε = 16/255 (0.063) as CIFAR-10's 0.1 covers 8/255 (choice)
        val_size=200,  # of the training folder (train-sample: one image a class), never the test folder
        arch="efficientnet-lite0",  # shipped, converted by scripts/convert_efficientnet_lite0.py; not trained here
        # the smoothing denoisers on the 800 training images at 224 px (~1 min an epoch on 2 cores in bfloat16)
        epochs={**DEFAULT_EPOCHS, "smoothing-dae": 20, "smoothing-stability": 20},
        dae_arch="unet",
        train_patch=128,  # the U-Net is fully convolutional: crops train it faster and vary each epoch
        smoothing_sigmas=(0.25, 0.5),
        # 5 resolutions (224 -> 14 px) from 16 channels: 5.4 GFLOP a draw, 7× EfficientNet-Lite0's (choice: what
        # 2 CPU cores can certify on 100 images at N = 1,000)
        smoothing_denoiser={"filters": 16, "stages": 5},
        certify_batch=50,  # 1000 copies at 224 px took 14 GiB in the U-Net (killed for memory on 24 GiB beside 3 jobs)
        certify_anchors={"Salman et al. 2020, ResNet-50 + stability denoiser": {0.25: 0.50, 0.5: 0.33, 0.75: 0.20,
                                                                                 1.0: 0.14}},
        correct_only=True,  # the paper's Table 4 protocol: attacks on the images the classifier gets right
        # the exact gradient through n U-Net steps at 224 px keeps ~0.23 GiB of activations per step and image
        # (results/imagenet/attack_cost.json, n = 2 and 4; ~4.4 GiB at n = 15, batch 1); recomputing keeps ~1.2 GiB
        # for ~1.3× the time
        checkpoint_steps=True,
        tfds_splits=("imagenet2012", "train", "validation"),  # with no imagenet/ folder: tfds' manual download
        # scoring one image through G (n = 15, fixed and fresh draws) costs ~10 s on 2 cores and one exact
        # gradient ~30 s: every attack spends only on the images still standing, BPDA+EOT (a purification
        # forward per gradient) goes before the exact cascade, and cells are cached 10 images at a time
        adaptive_attacks=("bpda", "weighted", "pgd", "bpda-eot"),  # counter A first: its cell is its own
        adaptive_cascade=True,
        adaptive_chunk=10,
        adaptive_purifier_chunk=1,  # through G: BPDA+EOT ~2.5 min an image, APGD-CE 3–10 (10 iterations, 4 draws)
        purify_fallback={"n": 15, "alpha": 2 / 255, "eps_r": 1 / 255},  # CIFAR-10's, the paper's (spec §3)
        # a U-Net step at 224 px costs ~0.35 s per image on 2 CPU cores, so the grid is the paper's
        # setting and one neighbour each way that can still undo ε = 16/255 in 15 steps (choice)
        tune_grid={"A": {"n": [15], "alpha": [1 / 255, 2 / 255]}, "adam": {"n": [15], "alpha": [2 / 255, 4 / 255]},
                   "noise": {"eps_r": [1 / 255]}},
        columns=("clean", "random", "bim4", "bim16"),
        all_variants=("direct", "A:n=12", "A:n=15", "A:n=18", "B", "C", "F", "G"),
        figure_column="bim16",
        paper={"apudae": {"clean": 0.941, "bim4": 0.919, "bim16": 0.911},
               "apudae transform": {"bim4": 0.928, "bim16": 0.929}},
        paper_adaptive={"apudae": {"bpda": 0.536, "weighted": 0.407}},
    ),
}


# the entries as shipped: registering a user's or a folder's profile replaces REGISTRY's, never these
BUILTIN: dict[str, Profile] = dict(REGISTRY)
DEFAULT_VAL_SIZE = Profile.val_size


def validation_size(name: str, n_train: int) -> int:
    """How many of ``n_train`` training images dataset ``name`` holds out for validation: its profile's
    ``val_size``, or the default share for a user's data that has not declared a profile yet (its split
    does not depend on a threat model)."""
    size = REGISTRY[name].val_size if name in REGISTRY else DEFAULT_VAL_SIZE
    return int(size) if size >= 1 else max(1, int(round(size * n_train)))


def register(profile: Profile) -> Profile:
    """Add (or replace) a dataset's profile for this process: how a user's declared profile joins the
    built-in ones."""
    REGISTRY[profile.name] = profile
    return profile


def get(name: str) -> Profile:
    """The profile of dataset ``name`` (a built-in, or one declared or read from a model folder)."""
    profile = REGISTRY.get(name)
    if profile is None:
        raise ApudaeError(f"no profile for dataset {name!r}: declare its threat model when you train "
                          "(--eps, --steps, --step, --sigma-max, or --profile FILE), then pass that model folder "
                          "with --models")
    return profile


REQUIRED = ("eps", "steps", "step", "sigma_max")


def from_json(d: dict, where: str) -> Profile:
    """A profile from its JSON form (``Profile.to_json``, or a user's small file: ``name``, ``eps``,
    ``steps``, ``step`` and ``sigma_max`` at least, the threat's fields either flat or under ``threat``)."""
    if not isinstance(d, dict):
        raise ApudaeError(f"{where}: a profile is a JSON object")
    flat = _flat(d)
    missing = [k for k in ("name",) + REQUIRED if flat.get(k) is None]
    if missing:
        raise ApudaeError(f"{where}: the profile lacks {', '.join(missing)} (declare --eps, --steps, --step and "
                          "--sigma-max when you train, or a --profile file with name, eps, steps, step, sigma_max)")
    try:
        threat = ThreatModel(eps=float(flat["eps"]), steps=int(flat["steps"]), step=float(flat["step"]),
                             norm=str(flat.get("norm", "linf")), rand_init=bool(flat.get("rand_init", True)))
        fields = {f.name for f in dataclasses.fields(Profile)} - {"name", "threat"}
        # a field the file lacks (one a later version added) is the built-in entry's, if the name has one:
        # a folder trained before correct_only existed must not turn ImageNet's protocol off
        base = BUILTIN[flat["name"]].to_json() if flat["name"] in BUILTIN else {}
        given = {k: d[k] if k in d else base[k] for k in fields if k in d or k in base}
        if isinstance(given.get("l2_threat"), dict):
            given["l2_threat"] = ThreatModel(**given["l2_threat"]).check(f"{where} (l2_threat)")
        for k in TUPLE_FIELDS:
            if k in given:
                given[k] = tuple(given[k])
        profile = Profile(name=str(flat["name"]), threat=threat.check(where),
                          **{**given, "sigma_max": float(flat["sigma_max"])})
    except (TypeError, ValueError) as e:
        raise ApudaeError(f"{where}: bad profile ({e})") from None
    allowed = ("pgd",) + names.ADAPTIVE_METHODS
    if any(a not in allowed for a in profile.adaptive_attacks):
        raise ApudaeError(f"{where}: adaptive_attacks {list(profile.adaptive_attacks)} may hold only "
                          f"{', '.join(allowed)}")
    for k in ("adaptive_chunk", "adaptive_purifier_chunk"):
        v = getattr(profile, k)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ApudaeError(f"{where}: {k} must be an integer >= 0 (0: a cell at once), got {v!r}")
    if not (0 < profile.sigma_max <= 1) or not math.isfinite(profile.sigma_max):
        raise ApudaeError(f"{where}: sigma_max must be in (0, 1], got {profile.sigma_max:g}")
    return profile


def _flat(d: dict) -> dict:
    return {**{k: v for k, v in d.items() if k != "threat"}, **(d.get("threat") or {})}


def declare(name: str, eps=None, steps=None, step=None, sigma_max=None, path: str | None = None) -> Profile:
    """A dataset's profile from options, or from the JSON file ``path`` with the options on top, and for a
    known dataset its registered fields beneath both; registered for this process."""
    given = {k: v for k, v in (("eps", eps), ("steps", steps), ("step", step), ("sigma_max", sigma_max))
             if v is not None}
    if not path and not given:
        return get(name)
    d = _flat(REGISTRY[name].to_json()) if name in REGISTRY else {}
    if path:
        try:
            with open(path) as f:
                given_file = json.load(f)
        except OSError as e:
            raise ApudaeError(f"--profile {path}: cannot read it ({e.strerror})") from None
        except ValueError as e:
            raise ApudaeError(f"--profile {path}: not JSON ({e})") from None
        if not isinstance(given_file, dict):
            raise ApudaeError(f"--profile {path}: a profile is a JSON object")
        d = {**d, **_flat(given_file)}
    where = f"--profile {path}" if path else f"dataset {name}"
    return register(from_json({**d, **given, "name": name}, where))


def save(profile: Profile, folder: str) -> None:
    io.write_json(os.path.join(folder, PROFILE_FILE), profile.to_json())


def from_folder(folder: str, name: str | None = None) -> Profile | None:
    """The profile a model folder was trained with (registered for this process), or None when it has none.
    ``name``, if given, must be the one it records."""
    path = os.path.join(folder, PROFILE_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        raise ApudaeError(f"{path}: cannot read the profile ({e})") from None
    profile = from_json(d, path)
    if name is not None and profile.name != name:
        raise ApudaeError(f"{path} is the profile of dataset {profile.name!r}, not {name!r}")
    return register(profile)


def dataset_name(dataset: str) -> str:
    """The name a dataset argument stands for: ``npz:PATH`` is named by its file, ``folder:PATH`` by its
    folder."""
    if dataset.startswith("npz:"):
        return os.path.splitext(os.path.basename(dataset[4:]))[0]
    if dataset.startswith("folder:"):
        return os.path.basename(os.path.normpath(dataset[7:]))
    return dataset
