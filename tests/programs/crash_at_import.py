"""Fails before any training: a missing config key."""
config = {"lr": 0.1}
batch_size = config["batch_size"]
