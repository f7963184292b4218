"""Data tools and pipelines: synthetic VOC/SBD data, list building, MindRecord, train/eval inputs.

Importing this package does not import MindSpore; `pipeline.build_train_dataset` and the MindRecord
tools load it when called.
"""
