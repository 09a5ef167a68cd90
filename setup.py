from setuptools import find_packages, setup

setup(
    name="lwtgpf",
    version="0.1.0",
    description="LWTGPF: unsupervised person re-identification with a local-enhancing window "
    "transformer and global-part camera-aware proxies, as a fast-reid extension",
    license="MIT",
    python_requires=">=3.10",
    package_dir={"": "projects"},
    packages=find_packages("projects"),
    # fastreid==1.4.0 pins torch 1.13.1; it is installed separately with --no-deps (see Makefile).
    install_requires=[
        "torch>=2.1",
        "torchvision",
        # LewinViT overrides timm's private SwinTransformerBlock._attn and the backbones import the
        # private timm.models._manipulate: only the tested release line (requirements.txt)
        "timm>=1.0.31,<1.1",
        "yacs",
        'faiss-gpu; sys_platform == "linux" and platform_machine == "x86_64"',
        'faiss-cpu; sys_platform != "linux" or platform_machine != "x86_64"',
        "scikit-learn",
        "scipy",
        "tensorboard",
        "opencv-python-headless",
        "tabulate",
        "termcolor",
        "tqdm",
        "safetensors",
        "grad-cam>=1.5.7",
        "matplotlib",
        "onnx",
        "onnxscript",
        "onnxruntime",
    ],
)
