from setuptools import find_packages, setup

setup(
    name="triplet_keras",
    version="0.1.0",
    description="Fine-tune a pretrained CNN with triplet loss in Keras and classify new data from a few examples.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["triplet_keras", "triplet_keras.*"]),
    py_modules=["fine_tune_model", "triplet_loss_functions"],
    python_requires=">=3.10",
    install_requires=[
        "keras>=3.6,<4",
        "tensorflow-cpu>=2.17,<3; platform_machine == 'x86_64'",
        "tensorflow>=2.17,<3; platform_machine != 'x86_64'",
        "jax[cpu]>=0.4.30",
        "numpy>=1.26,<3",
        "scikit-learn>=1.3,<2",
        "opencv-python-headless>=4.8",
        "tqdm>=4.60",
        "filelock>=3.12",  # bounds JAX's compilation cache on disk (backend_choice.enable_compilation_cache)
        "faiss-cpu>=1.8",
        "tensorboard>=2.15",
        "matplotlib>=3.7",
        "pillow>=9.2",  # glyphs: drawing characters (also a matplotlib dependency)
        "fonttools>=4.22",  # glyphs: reading cmaps (also a matplotlib dependency)
    ],
    # torch: the PyTorch backend (KERAS_BACKEND=torch); 2.13.0 as a CPU wheel, not the multi-GB CUDA build.
    extras_require={"test": ["pytest>=7", "pytest-xdist>=3.5", "hypothesis>=6.80"], "torch": ["torch==2.13.0"]},
    entry_points={"console_scripts": ["triplet-keras=triplet_keras.__main__:cli"]},
)
