"""`invoke bench`: the measured figures (not installed with nodekiln)."""
