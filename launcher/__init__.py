"""refinenet-launch: validate a cluster file, render launch artifacts, run and supervise ranks.

The launcher never imports MindSpore: it runs on head nodes and laptops that may not have it.
"""
__version__ = "0.1.0"
