"""ernie3-jax: ERNIE 3.0 pre-training, fine-tuning and evaluation in JAX."""

import setuptools

# Versions pinned together: this set was installed and tested as one on Python 3.11.
# TensorFlow, tensorflow-text and seqio must move in lock-step (tensorflow-text is
# built against one TensorFlow minor version).
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "seqio==0.0.20",
    "tensorflow==2.21.0",
    "tensorflow-text==2.21.1",
    "tensorflow-datasets==4.9.10",
    "sentencepiece==0.2.3",
    "absl-py==2.5.1",
    "gin-config==0.5.0",
    "clu==0.0.12",
    "tensorboard==2.21.0",
    "numpy==2.4.6",
    "pyahocorasick==2.3.1",
]

EXTRAS_REQUIRE = {
    "dev": [
        "pytest==9.2.0",
        "pytest-xdist==3.8.0",
        "hypothesis==6.170.15",
    ],
}

setuptools.setup(
    name="ernie3-jax",
    version="0.1.0",
    description="ERNIE 3.0 (knowledge-enhanced pre-training) in JAX/Flax",
    packages=setuptools.find_packages(include=["ernie3_jax", "ernie3_jax.*", "tasks", "tasks.*"]),
    package_data={"ernie3_jax": ["data/embedded/*"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
