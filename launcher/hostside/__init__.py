"""Programs that run on the hosts: standard library only, sent to them as source."""
