"""APuDAE: adversarial purification with denoising autoencoders, in TensorFlow/Keras.

Modules: ``data`` (datasets), ``models`` (DAE, classifiers, r(x)), ``train``,
``store`` (models on disk), ``evaluate``. The maths follows docs/spec.md.
"""

__version__ = "0.1.0"
