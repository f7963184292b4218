"""The cluster file: its data model (`model`), field readers (`fields`) and loader (`load`)."""
