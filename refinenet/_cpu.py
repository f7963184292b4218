"""CPU defaults that must be in the environment before MindSpore is imported."""
import os

#: oneDNN's AVX-512 kernels make MindSpore's CPU convolutions 30-70x slower on the AVX-512
#: machines measured here (ResNet-101 train step at 513x513: 63.5 s vs 2.1 s). Capping the ISA
#: at AVX2 is the default; set ONEDNN_MAX_CPU_ISA yourself (e.g. to ALL) to override it.
CPU_ENV_DEFAULTS = {"ONEDNN_MAX_CPU_ISA": "AVX2"}


def apply_cpu_defaults(environ=os.environ):
    """Set each CPU default that the user has not set; returns the ones applied."""
    applied = {}
    for key, value in CPU_ENV_DEFAULTS.items():
        if key not in environ:
            environ[key] = value
            applied[key] = value
    return applied
