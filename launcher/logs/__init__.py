"""Logs of a job: the line format (`format`), the aggregator (`aggregator`), progress records (`progress`)."""
