"""Packaging for the DriveMoE Bench2Drive agent (distribution name `drivemoe`)."""
from setuptools import find_packages, setup

setup(
    name="drivemoe",
    version="0.1.0",
    description="DriveMoE / Drive-pi0 driving VLA: network, CARLA leaderboard agent, Bench2Drive evaluation",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["model", "model.*", "agent", "agent.*", "bench2drive_eval", "bench2drive_eval.*"]),
    include_package_data=True,
    # the authors' validation clip list (a data file read by model/training/split.py)
    package_data={"model.training": ["data/*.txt"]},
    install_requires=[
        # the network, inference and training
        "torch>=2.3",
        # SigLIP/Gemma reference forward in the parity tests, the PaliGemma tokenizer and HF weight folders
        "transformers>=4.45",
        # `drivemoe download`: released checkpoints and the PaliGemma tokenizer from the Hugging Face Hub
        "huggingface_hub>=0.24",  # (huggingface_hub.errors; tested with 2.4)
        # checkpoints without pickle
        "safetensors>=0.4",
        "numpy>=1.24",
        # JPEG round trip and resizing of camera frames, video writing (headless build: no GUI libraries needed on servers)
        "opencv-python-headless>=4.8",
        # agent and training configs: YAML parsing, strict validation of the parsed values
        "pyyaml>=6.0",
        "pydantic>=2.6",
        # progress bars for long work
        "tqdm>=4.60",
        # the exact resize of the authors' pipeline (torchvision Resize on a PIL image)
        "pillow>=9.0",
        # plots in reports
        "matplotlib>=3.7",
        # Savitzky-Golay filter of the Bench2Drive comfort metric (same filter as upstream)
        "scipy>=1.10",
    ],
    extras_require={
        # the CARLA 0.9.15 Python client for Python 3.10-3.12 (import name `carla`)
        "carla": ["carla-0-9-15"],
        # the upstream Bench2Drive evaluator's own imports (leaderboard/ and scenario_runner/ requirements.txt,
        # unpinned: their pins have no wheels for Python 3.10+)
        "evaluator": ["py-trees==0.8.3", "dictor", "tabulate", "transforms3d", "shapely", "networkx", "psutil", "xmlschema",
                      "ephem", "six", "simple-watchdog-timer", "requests", "pexpect"],
        # optional TensorBoard logs of `drivemoe train`
        "tensorboard": ["tensorboard>=2.14"],
        "test": ["pytest>=7", "pytest-timeout>=2.1", "sentencepiece>=0.1.99", "tokenizers>=0.15", "tensorboard>=2.14"],
    },
    entry_points={
        "console_scripts": [
            "drivemoe=model.cli:main",
            "bench2drive-eval=bench2drive_eval.cli:main",
        ]
    },
)
