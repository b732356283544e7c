"""White-box attacks on a classifier (spec §4) and on the defence (spec §5), one function each, in L∞ and L2.

Every attack takes ``model_fn(x) -> logits``, images ``x`` in [0, 1] and true labels ``y`` (untargeted), and
``AttackSettings``. Grouped by job:

- ``base``: settings and presets, the steps and projections, the losses, the defended model and EOT gradients;
- ``classic``: FGSM, R-FGSM, PGD (cleverhans'), CW-L∞, CW-L2;
- ``autoattack``: APGD-CE / APGD-DLR / APGD-T and Square (Croce & Hein 2020; Andriushchenko et al. 2020);
- ``adaptive``: counter A and B, the exact-gradient PGD and BPDA + EOT through a purifier;
- ``runner``: the attacks by name and ``run_attack``, batched and resumable.

Everything is re-exported here: ``attacks.run_attack``, ``attacks.apgd_run``, ...
"""

from apudae_tf.attacks.adaptive import bpda_eot, counter_a, counter_b, full_adaptive
from apudae_tf.attacks.autoattack import (
                                          APGD_MOMENTUM,
                                          APGD_RHO,
                                          SQUARE_P_INIT,
                                          apgd_ce,
                                          apgd_checkpoints,
                                          apgd_dlr,
                                          apgd_halve,
                                          apgd_run,
                                          apgd_t,
                                          square,
                                          square_l2,
                                          square_l2_pattern,
                                          square_p,
)
from apudae_tf.attacks.base import (
                                          CW_KAPPA,
                                          CW_L2_SEARCH,
                                          CW_L2_STEPS,
                                          DEFAULT_STEPS,
                                          L2_METHODS,
                                          METHODS,
                                          AttackSettings,
                                          DefendedModel,
                                          ascent_direction,
                                          ce_loss,
                                          cross_entropy,
                                          cw_margin,
                                          dlr_loss,
                                          dlr_targeted_loss,
                                          eot_gradient,
                                          input_gradient,
                                          iterative_attack,
                                          l2_norms,
                                          loss_gradient,
                                          margin,
                                          pgd_on,
                                          preset,
                                          project,
                                          project_np,
                                          random_in_ball,
                                          random_start,
                                          settings_for,
                                          sign_step,
                                          threat_model,
)
from apudae_tf.attacks.classic import cw_l2, cw_linf, fgsm, no_attack, pgd, r_fgsm, random_noise
from apudae_tf.attacks.runner import ATTACKS, DAE_ONLY_ATTACKS, DEFENCE_ATTACKS, ENSEMBLE_ATTACKS, run_attack
from apudae_tf.errors import ApudaeError

__all__ = ["APGD_MOMENTUM", "APGD_RHO", "ATTACKS", "ApudaeError", "AttackSettings", "CW_KAPPA", "CW_L2_SEARCH", "CW_L2_STEPS", "DAE_ONLY_ATTACKS", "DEFAULT_STEPS", "DEFENCE_ATTACKS", "DefendedModel", "ENSEMBLE_ATTACKS", "L2_METHODS", "METHODS", "SQUARE_P_INIT", "apgd_ce", "apgd_checkpoints", "apgd_dlr", "apgd_halve", "apgd_run", "apgd_t", "ascent_direction", "bpda_eot", "ce_loss", "counter_a", "counter_b", "cross_entropy", "cw_l2", "cw_linf", "cw_margin", "dlr_loss", "dlr_targeted_loss", "eot_gradient", "fgsm", "full_adaptive", "input_gradient", "iterative_attack", "l2_norms", "loss_gradient", "margin", "no_attack", "pgd", "pgd_on", "preset", "project", "project_np", "r_fgsm", "random_in_ball", "random_noise", "random_start", "run_attack", "settings_for", "sign_step", "square", "square_l2", "square_l2_pattern", "square_p", "threat_model"]
