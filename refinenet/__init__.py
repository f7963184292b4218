"""RefineNet semantic segmentation on MindSpore: the workload that refinenet-launch runs."""
from refinenet._cpu import apply_cpu_defaults

apply_cpu_defaults()

__version__ = "0.1.0"
