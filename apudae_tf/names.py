"""The names users type: attack methods and purification variants.

Kept free of TensorFlow so that ``apudae-tf --help`` and option parsing stay fast;
``attacks``, ``purify`` and ``train`` take their lists from here.
"""

ATTACK_METHODS = ("none", "random", "fgsm", "r-fgsm", "pgd", "cw", "cw-l2")
# attacks that see the purifier (spec §5): counter A, counter B, full adaptive, BPDA + EOT
ADAPTIVE_METHODS = ("bpda", "weighted", "adaptive", "bpda-eot")
# the adaptive report's columns before the AutoAttack cascade, by default and in order: blind PGD, counter A,
# counter B over λ (a dataset profile may reorder them or add "bpda-eot"; table.adaptive_columns)
ADAPTIVE_COLUMNS = ("pgd", "bpda", "weighted")
# AutoAttack-grade attacks (Croce & Hein 2020; Andriushchenko et al. 2020): on the classifier alone,
# or through a purification variant when one is named
ENSEMBLE_METHODS = ("apgd-ce", "apgd-dlr", "apgd-t", "square")
# APGD-T's target classes in AutoAttack's standard evaluation: `attack --method apgd-t`'s default and the
# "autoattack" budget's (the adaptive report's default budget spends fewer: ADAPTIVE_BUDGET)
APGD_TARGETS = 9
# the adaptive report's default budget per image (AutoAttack's standard: 100 iterations, 1 restart,
# 9 targets, 5000 queries; through an iterative purifier each target costs a full APGD run and each
# query a purification); EOT draws per gradient for a random defence
ADAPTIVE_BUDGET = {"apgd_steps": 100, "restarts": 1, "targets": 3, "square_queries": 1000, "eot": 8}
# the adaptive report's default number of test images: the report for MNIST's shipped models finishes
# within ~30 minutes on 2 CPU cores (the committed reports use --n 1000, which takes hours)
ADAPTIVE_N = 100
PURIFY_VARIANTS = ("direct", "A", "B", "C", "D", "E", "F", "G")
TRAIN_RECIPES = ("paper", "plus", "adv-dae", "adv-mix")
# classifier architectures (each dataset profile names its default)
CLASSIFIER_ARCHS = ("cnn", "resnet20", "resnet18")
