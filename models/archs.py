"""Names of the architectures and training modes, importable without TensorFlow (CLI, API validation)."""

ARCH_NAMES = ("alexnet", "inception_v3", "inception_v4", "inception_resnet_v2")
MODE_NAMES = ("scratch", "feature-extraction", "fine-tuning", "fe+ft")
