"""The training engine: a run is a population of S >= 1 replicas."""
