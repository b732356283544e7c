from setuptools import find_packages, setup

setup(
    name="apudae-tf",
    version="0.1.0",
    description="Adversarial purification with denoising autoencoders (APuDAE) in TensorFlow/Keras",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["apudae_tf", "apudae_tf.*"]) + ["apudae_tf.saved_models"],
    # the trained models in saved_models/ install inside the package, so an
    # installed apudae-tf finds its defaults without the repository
    package_dir={"apudae_tf.saved_models": "saved_models"},
    package_data={"apudae_tf.saved_models": ["*/*.keras", "*/*.json", "*/smoothing/*.keras", "*/smoothing/*.json"], "apudae_tf": ["embedded/*.npz", "embedded/*.md"]},
    py_modules=["cli"],
    install_requires=[
        "tensorflow>=2.21",
        "keras>=3",
        "tensorflow-datasets",
        "importlib_resources",  # tfds needs it to download, but does not declare it
        "cleverhans>=4.0.0",
        "numpy",
        "click>=8",
        "matplotlib",
        "scipy",  # randomized smoothing's statistics (Clopper-Pearson bound, binomial test, normal quantile)
    ],
    extras_require={"test": ["pytest", "pytest-xdist"]},
    entry_points={"console_scripts": ["apudae-tf=cli:main"]},
)
